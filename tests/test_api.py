"""sagan_jax.load(...) and its Run: generate, discriminate, sample, standing statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sagan_jax import api, config_base, images
from sagan_jax.convert import build
from sagan_jax.models import layers
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(workdir, config, models, state): a small 32x32 run whose EMA differs from G, at step 2.

  The BigGAN-PyTorch fixture, converted: building it costs no compilation.
  """
  folder = os.path.join(ROOT, "tests", "fixtures", "convert", "biggan")
  with open(os.path.join(folder, "meta.json")) as f:
    meta = json.load(f)
  result = build.convert(meta["from"], folder, config_base.load(meta["config"], meta["overrides"]))
  workdir = str(tmp_path_factory.mktemp("run"))
  build.write_run(workdir, result)
  return workdir, result.config, result.models, result.state


@pytest.fixture(scope="module")
def run(saved):
  return api.load(saved[0])


def _inputs(config, n=7):
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (n, config.model.z_dim)))
  return z, np.arange(n, dtype=np.int32) % config.model.num_classes


def test_load_gives_the_saved_run(saved, run):
  _, config, _, state = saved
  assert run.step == 2 and run.config.model.ch == config.model.ch
  for a, b in zip(jax.tree.leaves(run.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_generate_is_g_in_eval_mode_in_any_batching(saved, run):
  _, config, models, state = saved
  z, y = _inputs(config)
  for ema, variables in ((True, state.ema), (False, state.g)):
    want = models.generator.apply(variables, z, y, train=False)
    got = run.generate(z, y, ema=ema, batch_size=3)            # 3 + 3 + 1 padded
    assert got.dtype == np.float32 and got.shape == (7, 32, 32, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(run.generate(z, y, batch_size=3)
                - run.generate(z, y, ema=False, batch_size=3)).max() > 1e-3


def test_discriminate_is_d_without_sn_update_and_takes_uint8(saved, run):
  _, config, models, state = saved
  z, y = _inputs(config)
  x = run.generate(z, y, batch_size=3)
  want = models.discriminator.apply(state.d, x, y, update_sn=False)
  np.testing.assert_allclose(run.discriminate(x, y, batch_size=4), want, rtol=1e-4, atol=1e-4)
  u8 = images.to_uint8(x)
  np.testing.assert_allclose(run.discriminate(u8, y, batch_size=4),
                             run.discriminate(images.normalize(u8), y, batch_size=4))
  with pytest.raises(ValueError, match="labels"):
    run.discriminate(x)


def test_sample_is_uint8_balanced_and_seeded(run):
  a = run.sample(12, seed=4, batch_size=3)
  assert a.dtype == np.uint8 and a.shape == (12, 32, 32, 3)
  np.testing.assert_array_equal(a, run.sample(12, seed=4, batch_size=3))
  assert not np.array_equal(a, run.sample(12, seed=5, batch_size=3))
  same_class = run.sample(12, seed=4, labels=np.full(12, 2), batch_size=3)
  assert not np.array_equal(a, same_class)


def test_standing_statistics_are_the_passes_batch_statistics(saved):
  _, config, models, state = saved
  gen = models.generator
  z1, y1 = _inputs(config, 8)
  z2 = np.asarray(jax.random.normal(jax.random.PRNGKey(9), z1.shape))
  # SN vectors converged, so that a train-mode pass divides by the sigmas evaluation uses.
  refresh = jax.jit(lambda p, s: layers.refresh_spectral(p, s, 500, config.model.sn_eps))
  g = {**state.g, "spectral": refresh(state.g["params"], state.g["spectral"])}
  one = api.standing_batch_stats(gen, g, [(z1, y1)])
  # With the statistics of one batch, eval mode on that batch is train mode on it.
  train_out, _ = gen.apply(g, z1, y1, train=True, mutable=["batch_stats", "spectral"])
  eval_out = gen.apply({**g, "batch_stats": one}, z1, y1, train=False)
  np.testing.assert_allclose(eval_out, train_out, atol=1e-4)
  two = api.standing_batch_stats(gen, g, [(z1, y1), (z2, y1)])
  other = api.standing_batch_stats(gen, g, [(z2, y1)])
  for a, b, c in zip(jax.tree.leaves(two), jax.tree.leaves(one), jax.tree.leaves(other)):
    np.testing.assert_allclose(a, (b + c) / 2, rtol=1e-5, atol=1e-6)


def test_with_standing_stats_changes_only_that_generators_statistics(run):
  new = run.with_standing_stats(2, batch_size=8, seed=1)      # the batch size of the test above
  for name in ("params", "spectral"):
    for a, b in zip(jax.tree.leaves(new.state.ema[name]), jax.tree.leaves(run.state.ema[name])):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(new.state.g), jax.tree.leaves(run.state.g)):
    np.testing.assert_array_equal(a, b)
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.state.ema["batch_stats"]),
                                                   jax.tree.leaves(run.state.ema["batch_stats"]))]
  assert all(changed)
  with pytest.raises(ValueError, match="at least 1 pass"):
    run.with_standing_stats(0)


def test_import_is_light_and_load_is_there():
  code = ("import sys, sagan_jax; assert 'jax' not in sys.modules, 'jax imported'; "
          "print(sagan_jax.load.__module__)")
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip() == "sagan_jax.api"
