"""sagan_jax.load(...) and its Run: generate, discriminate, sample, standing statistics."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import api, checkpointing, config_base, images, parallel
from sagan_jax.models import layers
from sagan_jax.state import create_state, make_models
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(workdir, config, models, state): a tiny run whose EMA differs from G, saved at step 3."""
  config = config_base.load("configs/tiny.py")
  models = make_models(config)
  state = create_state(models, config, parallel.make_mesh(1))
  noise = lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape)  # noqa: E731
  ema = {**state.ema, "params": jax.tree.map(noise, state.ema["params"])}
  state = state.replace(step=jnp.asarray(3, jnp.int32), ema=ema)
  workdir = str(tmp_path_factory.mktemp("run"))
  ckpt = checkpointing.Checkpointer(workdir, config)
  ckpt.save(3, state)
  ckpt.wait()
  return workdir, config, models, state


@pytest.fixture(scope="module")
def run(saved):
  return api.load(saved[0])


def _inputs(config, n=7):
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (n, config.model.z_dim)))
  return z, np.arange(n, dtype=np.int32) % config.model.num_classes


def test_load_gives_the_saved_run(saved, run):
  _, config, _, state = saved
  assert run.step == 3 and run.config.model.ch == config.model.ch
  for a, b in zip(jax.tree.leaves(run.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_generate_is_g_in_eval_mode_in_any_batching(saved, run):
  _, config, models, state = saved
  z, y = _inputs(config)
  for ema, variables in ((True, state.ema), (False, state.g)):
    want = models.generator.apply(variables, z, y, train=False)
    got = run.generate(z, y, ema=ema, batch_size=3)            # 3 + 3 + 1 padded
    assert got.dtype == np.float32 and got.shape == (7, 16, 16, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(run.generate(z, y, ema=ema), want, atol=1e-5)
  assert np.abs(run.generate(z, y) - run.generate(z, y, ema=False)).max() > 1e-3


def test_discriminate_is_d_without_sn_update_and_takes_uint8(saved, run):
  _, config, models, state = saved
  z, y = _inputs(config)
  x = run.generate(z, y)
  want = models.discriminator.apply(state.d, x, y, update_sn=False)
  np.testing.assert_allclose(run.discriminate(x, y, batch_size=4), want, rtol=1e-4, atol=1e-4)
  u8 = images.to_uint8(x)
  np.testing.assert_allclose(run.discriminate(u8, y), run.discriminate(images.normalize(u8), y))
  with pytest.raises(ValueError, match="labels"):
    run.discriminate(x)


def test_sample_is_uint8_balanced_and_seeded(run):
  a = run.sample(12, seed=4)
  assert a.dtype == np.uint8 and a.shape == (12, 16, 16, 3)
  np.testing.assert_array_equal(a, run.sample(12, seed=4))
  assert not np.array_equal(a, run.sample(12, seed=5))
  same_class = run.sample(12, seed=4, labels=np.full(12, 3))
  assert not np.array_equal(a, same_class)


def test_standing_statistics_are_the_passes_batch_statistics(saved):
  _, config, models, state = saved
  gen = models.generator
  z1, y1 = _inputs(config, 8)
  z2 = np.asarray(jax.random.normal(jax.random.PRNGKey(9), z1.shape))
  # SN vectors converged, so that a train-mode pass divides by the sigmas evaluation uses.
  g = {**state.g, "spectral": layers.refresh_spectral(state.g["params"], state.g["spectral"],
                                                       500, config.model.sn_eps)}
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
  new = run.with_standing_stats(2, batch_size=8, seed=1)
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


def test_sample_command_with_standing_stats(saved, tmp_path):
  npz = str(tmp_path / "s.npz")
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  p = subprocess.run([sys.executable, "-m", "sagan_jax.sample", "--workdir", saved[0], "--npz",
                      npz, "--num", "6", "--batch_size", "6", "--standing_stats", "2"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "standing statistics: G's BN statistics from 2 passes of 6" in p.stdout
  with np.load(npz) as f:
    assert f["images"].shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(f["labels"], np.arange(6))
