"""Speed paths that must not change results: conv implementations in a train step, the
CPU device split, and the profiler hook."""

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import config_base, cpu_devices, errors, parallel, preflight, profiling
from sagan_jax.models import sagan
from tests.conftest import ROOT, load_config
from tests.test_train import _leaves_close, _run_steps


def test_discriminator_gradients_with_matmul_convs_equal_xla_convs():
  # 'matmul' replaces every conv, forward and both gradients, by matmuls.
  config = load_config("tiny")
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16, 3))
  y = jnp.arange(8) % 10
  outs = []
  for impl in ("xla", "matmul"):
    config.model.conv_impl = impl
    disc = sagan.discriminator_from_config(config.model)
    v = disc.init(jax.random.PRNGKey(1), x[:2], y[:2], update_sn=False)

    def loss(params, x):
      out, new = disc.apply({**v, "params": params}, x, y, update_sn=True, mutable=["spectral"])
      return jnp.mean(jnp.tanh(out)), new["spectral"]

    outs.append(jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(v["params"], x))
  (ref, got) = outs
  np.testing.assert_allclose(float(got[0][0]), float(ref[0][0]), rtol=1e-5)
  _leaves_close(got[0][1], ref[0][1], 1e-5, 1e-6)   # SN state
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(ref[1])):  # d params, d input
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.slow
def test_train_step_with_matmul_convs_equals_xla_convs():
  # 'matmul' replaces every conv, forward and both gradients, by matmuls.
  mesh = parallel.make_mesh(1)
  s_ref, h_ref, _ = _run_steps(load_config("tiny", model__conv_impl="xla"), mesh, 2)
  s_mm, h_mm, _ = _run_steps(load_config("tiny", model__conv_impl="matmul"), mesh, 2)
  for k in ("d_loss", "g_loss", "d_real", "d_fake", "g_sigma_mean", "d_sigma_max"):
    np.testing.assert_allclose(h_mm[0][k], h_ref[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(h_mm[1][k], h_ref[1][k], rtol=1e-3, atol=1e-4, err_msg=k)
  # Adam moves a weight by ~lr whatever its gradient's size: near-zero gradients
  # whose sign flips with rounding differ by up to that much (as across devices).
  atol = 3 * 4e-4
  for part in ("g", "d"):
    _leaves_close(jax.device_get(getattr(s_mm, part)["params"]),
                  jax.device_get(getattr(s_ref, part)["params"]), 1e-3, atol)


@pytest.mark.parametrize("batch,cores,want", [
    (64, 2, 2), (64, 1, 1), (16, 2, 1), (32, 2, 2), (48, 4, 3), (100, 8, 5), (8, 2, 1),
    (256, 64, 8)])
def test_cpu_device_plan(batch, cores, want):
  assert cpu_devices.plan(batch, cores) == want


def test_configure_leaves_a_started_backend_alone():
  jax.devices()  # the test process's backend is up (4 virtual devices, conftest)
  before = jax.config.jax_num_cpu_devices
  assert cpu_devices.configure(64) == 0
  assert jax.config.jax_num_cpu_devices == before


def _devices_in_fresh_process(env_extra: dict, batch: int = 64) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_devices.ENV)}
  env.update(env_extra, JAX_PLATFORMS="cpu")
  code = ("import jax; from sagan_jax import cpu_devices; "
          f"n = cpu_devices.configure({batch}); print(n, jax.local_device_count())")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return out.stdout.split()


def test_configure_splits_a_fresh_cpu_backend():
  # $SAGAN_JAX_CPU_DEVICES fixes the count whatever the cores (the automatic plan is tested above).
  assert _devices_in_fresh_process({cpu_devices.ENV: "3"}) == ["3", "3"]
  # A user's XLA_FLAGS device count wins: nothing is changed.
  flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}
  assert _devices_in_fresh_process(flags) == ["0", "5"]


def test_profile_steps_validation():
  for bad in ((5,), (3, 3), (4, 2), (-1, 2)):
    c = config_base.base_config()
    c.profile_steps = bad
    with pytest.raises(errors.ConfigError, match="profile_steps"):
      preflight.check_config(c)


def test_profiler_traces_exactly_the_asked_steps(tmp_path):
  prof = profiling.StepProfiler((1, 3), str(tmp_path))
  f = jax.jit(lambda x: jnp.sin(x) @ x)
  x = jnp.ones((64, 64))
  for step in range(5):
    x = prof.call(step, f, x)
    assert prof.active == (step in (1,))  # started before step 1, stopped after step 2
  prof.close()
  files = glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)
  assert len(files) == 1
  data = jax.profiler.ProfileData.from_file(files[0])
  steps = sorted(dict(ev.stats).get("step_num") for plane in data.planes
                 for line in plane.lines for ev in line.events if ev.name == "train")
  assert steps == [1, 2]


def test_release_freed_memory_trims_glibc_and_is_a_no_op_without_malloc_trim(monkeypatch):
  import ctypes
  from sagan_jax import utils
  has_trim = hasattr(ctypes.CDLL(None), "malloc_trim")
  assert utils.release_freed_memory() == has_trim   # glibc (Linux): trimmed

  class NoTrim:   # a C library without malloc_trim (macOS, musl)
    pass
  monkeypatch.setattr(utils.ctypes, "CDLL", lambda name: NoTrim())
  assert utils.release_freed_memory() is False


def test_g_update_ordering_leaves_its_input_unchanged():
  from sagan_jax import step
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
  arrays = [jnp.full((3, 3), 1e30), -jnp.ones(5, jnp.bfloat16)]
  np.testing.assert_array_equal(np.asarray(jax.jit(step._after)(z, arrays)), np.asarray(z))
