"""The XLA:CPU workaround flags (sagan_jax/xla_flags.py): set once, never over the user's,
and lifted again for float32 programs (the train step, sampling, D's scoring, Inception)."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

from sagan_jax import parallel, train, xla_flags
from sagan_jax import state as state_lib
from tests.conftest import load_config, step_batch


def test_appends_the_workaround_for_jaxlib_known_to_accept_it():
  assert xla_flags.ynn_flags("", "0.12.0.1") == xla_flags.YNN_WORKAROUND
  assert xla_flags.ynn_flags("", "0.11.2") == xla_flags.YNN_WORKAROUND
  assert xla_flags.ynn_flags("--xla_force_host_platform_device_count=4", "0.12.0") == (
      "--xla_force_host_platform_device_count=4 " + xla_flags.YNN_WORKAROUND)
  assert xla_flags.ynn_flags("", "1.0.0rc1") == xla_flags.YNN_WORKAROUND


def test_leaves_the_users_choice_and_older_jaxlib_alone():
  mine = "--xla_cpu_experimental_ynn_fusion_type=+reduce"
  assert xla_flags.ynn_flags(mine, "0.12.0") == mine
  # older jaxlib (an unknown XLA flag aborts the process; 0.10 showed no NaNs), or none
  assert xla_flags.ynn_flags("", "0.10.2") == ""
  assert xla_flags.ynn_flags("", "0.6.2") == ""
  assert xla_flags.ynn_flags("--a", None) == "--a"


def test_apply_changes_only_the_given_environment_and_is_idempotent(monkeypatch):
  monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.12.0")
  env = {"XLA_FLAGS": "--x"}
  xla_flags.apply(env)
  xla_flags.apply(env)
  assert env == {"XLA_FLAGS": "--x " + xla_flags.YNN_WORKAROUND}
  empty = {}
  xla_flags.apply(empty)
  assert empty == {"XLA_FLAGS": xla_flags.YNN_WORKAROUND}


def test_this_process_runs_with_the_workaround():
  """The suite imports sagan_jax before JAX's first computation, like every command."""
  version = xla_flags._jaxlib_version()
  if xla_flags._version_tuple(version) >= xla_flags.MIN_JAXLIB:
    assert xla_flags.YNN_FLAG in os.environ["XLA_FLAGS"]


def test_compiler_options_only_for_float32_on_cpu_unless_the_user_set_the_flag():
  ours = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 " + xla_flags.YNN_WORKAROUND}
  older = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # jaxlib 0.10: no workaround
  for env in (ours, older, {}):
    assert xla_flags.compiler_options("float32", "cpu", env) == xla_flags.FLOAT32_OPTIONS
    assert xla_flags.compiler_options("bfloat16", "cpu", env) is None  # NaN on jaxlib >= 0.11
    assert xla_flags.compiler_options("float32", "gpu", env) is None
    assert xla_flags.compiler_options("float32", "tpu", env) is None
  # a YNN flag of the user's own holds for every program
  for users in (xla_flags.YNN_FLAG + "=+reduce", "--x " + xla_flags.YNN_FLAG + "=-reduce,-dot"):
    assert xla_flags.users_own_flag(users)
    assert xla_flags.compiler_options("float32", "cpu", {"XLA_FLAGS": users}) is None
  assert not xla_flags.users_own_flag(ours["XLA_FLAGS"])


def test_compiler_options_fall_back_when_this_jaxlib_refuses_them(monkeypatch):
  monkeypatch.setattr(xla_flags, "FLOAT32_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"})
  xla_flags._options_accepted.cache_clear()
  try:
    ours = {"XLA_FLAGS": xla_flags.YNN_WORKAROUND}
    assert xla_flags.compiler_options("float32", "cpu", ours) is None
  finally:
    xla_flags._options_accepted.cache_clear()


def _compiled_text(fn, *args) -> str:
  return fn.lower(*args).compile().as_text()


def test_float32_train_step_with_the_fusion_equals_the_step_without(monkeypatch):
  """The per-program options change the compiled step (where this process runs the
  workaround) and not its result beyond float32 rounding: losses, and the updates of
  G, D and the EMA with Adam's lr = eps = 1e3 (so that an update is ~ the gradient,
  not ~ lr * sign(gradient), which rounding flips for gradients near 0)."""
  config = load_config("tiny", optim__d_lr=1e3, optim__g_lr=1e3, optim__eps=1e3)
  assert config.model.dtype == "float32"
  mesh = parallel.make_mesh(1)
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, mesh)
  batch = parallel.global_batch(step_batch(config), mesh, 1)
  rng = jax.device_put(np.asarray(jax.random.PRNGKey(5)), parallel.replicated(mesh))
  start = jax.device_get(state)

  active = xla_flags.compiler_options(config.model.dtype, "cpu") is not None
  fast = train.make_train_step(models, config, mesh)
  monkeypatch.setattr(xla_flags, "compiler_options", lambda *a, **k: None)
  plain = train.make_train_step(models, config, mesh)

  if active:
    assert _compiled_text(fast, state, batch, rng) != _compiled_text(plain, state, batch, rng)

  out = {}
  for name, fn in (("fast", fast), ("plain", plain)):
    s = jax.device_put(start, parallel.replicated(mesh))  # the step donates its state
    new, metrics = fn(s, batch, rng)
    out[name] = (jax.device_get(new), jax.device_get(metrics))
  (s_fast, m_fast), (s_plain, m_plain) = out["fast"], out["plain"]
  for k in ("d_loss", "g_loss", "d_real", "d_fake"):
    np.testing.assert_allclose(m_fast[k], m_plain[k], rtol=1e-4, atol=1e-5, err_msg=k)
  for part in ("g", "d", "ema"):  # parameters, SN vectors, BN statistics
    leaves = zip(*(jax.tree.leaves(getattr(t, part)) for t in (s_fast, s_plain, start)))
    updates = [(np.asarray(x, np.float64) - x0, np.asarray(y, np.float64) - x0)
               for x, y, x0 in leaves]
    scale = max(np.abs(dy).max() for _, dy in updates)
    assert scale > 0, part
    for dx, dy in updates:
      # an update that is rounding noise (a conv bias before BN, whose gradient is 0)
      # is held to the part's scale; the others to their own
      own = np.abs(dy).max()
      tol = 1e-4 * own if own > 1e-3 * scale else 1e-5 * scale
      assert np.abs(dx - dy).max() <= tol, (part, dy.shape)


def test_float32_sampling_with_the_fusion_equals_sampling_without(monkeypatch):
  """G in eval mode (`sample`, evaluations, the API), D's scoring and the standing
  statistics: compiled with the options where they apply, the same to rounding."""
  from sagan_jax import api, sampling
  config = load_config("tiny")
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, parallel.make_mesh(1))
  g_var = state_lib.generator_variables(state, True)
  z = jax.random.normal(jax.random.PRNGKey(1), (4, config.model.z_dim))
  y = np.arange(4, dtype=np.int32) % config.model.num_classes
  gen, disc = models.generator, models.discriminator
  active = xla_flags.compiler_options("float32") is not None

  fast = {"generate": sampling.jitted_generate(gen),
          "discriminate": api._jitted_discriminate(disc),
          "standing": api._standing_pass(gen.clone(bn_momentum=0.0))}
  args = {"generate": (g_var, z, y), "standing": (g_var, z, y)}
  args["discriminate"] = (state.d, fast["generate"](*args["generate"]), y)
  monkeypatch.setattr(xla_flags, "compiler_options", lambda *a, **k: None)
  plain = {"generate": jax.jit(functools.partial(sampling.generate, gen)),
           "discriminate": api._jitted_discriminate.__wrapped__(disc),
           "standing": api._standing_pass.__wrapped__(gen.clone(bn_momentum=0.0))}
  for name in fast:
    if active:
      assert _compiled_text(fast[name], *args[name]) != _compiled_text(plain[name], *args[name])
    a, b = (jax.device_get(f(*args[name])) for f in (fast[name], plain[name]))
    for x, y_ in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y_, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(y_).max()),
                                 err_msg=name)


def test_inception_features_with_the_fusion_equal_those_without(monkeypatch):
  from sagan_jax.evaluation import inception
  params = inception.InceptionV3().init(jax.random.PRNGKey(0), np.zeros((1, 75, 75, 3)))
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  active = xla_flags.compiler_options("float32") is not None
  fast = inception.FeatureExtractor(params, False, batch_size=2)
  monkeypatch.setattr(xla_flags, "compiler_options", lambda *a, **k: None)
  plain = inception.FeatureExtractor(params, False, batch_size=2)
  if active:
    texts = [_compiled_text(ex._fn, ex._params, images) for ex in (fast, plain)]
    assert texts[0] != texts[1]
  a, b = fast(images)["pool3"], plain(images)["pool3"]
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


@pytest.mark.slow
def test_eval_speed_script_times_both_programs_of_each_kind():
  """benchmarks/eval_speed.py end to end at the tiny shape: one JSON line (no timing asserted)."""
  import json
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "eval_speed.py"),
                        "--config", "configs/tiny.py", "--set", "--rounds", "1",
                        "--sample_batch", "2", "--inception_batch", "2"],
                       cwd=root, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["dtype"] == "float32" and out["generate"]["batch"] == 2
  assert out["options"] == xla_flags.compiler_options("float32")
  for part in ("generate", "inception"):
    assert out[part]["ours_s"] > 0 and out[part]["plain_s"] > 0, out[part]


def test_train_speed_compare_times_a_step_without_the_options(monkeypatch):
  """`train_speed.py --compare '' 'xla_options=none'`: the second variant's step is built
  while compiler_options gives None, the first with ours; the module is restored after."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  monkeypatch.syspath_prepend(os.path.join(root, "benchmarks"))
  import train_speed
  seen = []
  real_make = train.make_train_step

  def recording_make(models, config, mesh):
    seen.append(xla_flags.compiler_options(config.model.dtype, "cpu"))
    return real_make(models, config, mesh)

  monkeypatch.setattr(train, "make_train_step", recording_make)
  ours = xla_flags.compiler_options
  out = train_speed.compare(os.path.join(root, "configs", "tiny.py"), [],
                            ["", train_speed.NO_XLA_OPTIONS], [0], rounds=1, warmup=0)
  assert xla_flags.compiler_options is ours
  assert seen == [ours("float32", "cpu"), None]
  assert [r["xla_options"] for r in out] == [ours("float32"), None]
  assert [r["variant"] for r in out] == ["", train_speed.NO_XLA_OPTIONS]
