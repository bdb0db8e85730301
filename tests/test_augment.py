"""Differentiable augmentation (DiffAugment's ops), ADA's controller, the LeCam term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sagan_jax import augment, errors, parallel, preflight, regularizers
from tests.conftest import load_config

KEY = jax.random.PRNGKey(3)


def _images(n=4, size=16, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _np_shift(img, dy, dx):
  """Reference: img moved down dy, right dx, zeros shifted in."""
  out = np.zeros_like(img)
  h, w = img.shape[:2]
  for y in range(h):
    for x in range(w):
      if 0 <= y - dy < h and 0 <= x - dx < w:
        out[y, x] = img[y - dy, x - dx]
  return out


def test_shift_by_a_known_offset():
  x = _images()
  dy, dx = np.array([0, 2, -1, -2]), np.array([1, -2, 0, 2])
  out = np.asarray(augment.shift(jnp.asarray(x), jnp.asarray(dy), jnp.asarray(dx)))
  for i in range(4):
    np.testing.assert_array_equal(out[i], _np_shift(x[i], dy[i], dx[i]))


def test_translation_is_a_shift_within_an_eighth():
  x = _images(8)
  out = np.asarray(augment.translation(jnp.asarray(x), KEY))
  seen = set()
  for i in range(8):   # each image equals exactly one shift in [-2, 2]^2 (16 px / 8)
    hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if np.array_equal(out[i], _np_shift(x[i], dy, dx))]
    assert len(hits) == 1, i
    seen.add(hits[0])
  assert len(seen) > 1   # not the same shift for every image


def test_erase_a_known_box_and_cutout_is_half_the_size():
  x = _images(2)
  out = np.asarray(augment.erase(jnp.asarray(x), jnp.array([3, -2]), jnp.array([5, 12]), 8, 8))
  want = x.copy()
  want[0, 3:11, 5:13] = 0
  want[1, 0:6, 12:16] = 0   # clipped by the border
  np.testing.assert_array_equal(out, want)
  out = np.asarray(augment.cutout(jnp.asarray(_images(16, seed=1) + 2.0), KEY))  # no zeros
  for img in out:
    rows, cols = np.nonzero((img == 0).all(-1))
    assert rows.size and (img[img != 0] != 0).all()
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert h <= 8 and w <= 8 and rows.size == h * w   # one box, 8x8 unless clipped
    assert (h == 8 or rows.min() == 0 or rows.max() == 15)
    assert (w == 8 or cols.min() == 0 or cols.max() == 15)


def test_color_ops_on_constant_images():
  gray = np.full((3, 4, 4, 3), 0.2, np.float32)
  out = np.asarray(augment.adjust_color(jnp.asarray(gray), jnp.array([0.5, -0.25, 0.0]),
                                        jnp.array([0.0, 1.7, 2.0]), jnp.array([1.5, 0.5, 1.0])))
  # a gray constant image: saturation and contrast leave it; brightness adds
  np.testing.assert_allclose(out, gray + np.array([0.5, -0.25, 0.0])[:, None, None, None],
                             atol=1e-6)
  rgb = np.broadcast_to(np.array([0.6, 0.0, -0.3], np.float32), (1, 4, 4, 3))
  out = np.asarray(augment.adjust_color(jnp.asarray(rgb), 0.1, 0.5, 3.0))
  m = rgb[0, 0, 0].mean() + 0.1
  # saturation scales the colour around its grey, contrast around the image's mean (the
  # same grey here): both scale the distance from it
  np.testing.assert_allclose(out[0, 0, 0], m + (rgb[0, 0, 0] + 0.1 - m) * 0.5 * 3.0, atol=1e-6)
  assert (out == out[:, :1, :1]).all()
  drawn = np.asarray(augment.color(jnp.asarray(gray), KEY))
  shift = drawn - gray
  assert np.allclose(shift, shift[:, :1, :1, :1], atol=1e-6)   # constant per image
  assert (np.abs(shift[:, 0, 0, 0]) <= 0.5).all() and len(set(shift[:, 0, 0, 0])) == 3


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_each_op_is_differentiable(policy):
  x = jnp.asarray(_images())
  w = jnp.asarray(_images(seed=2))
  ops = augment.parse_policy(policy)
  f = lambda v: jnp.sum(augment.augment(v, KEY, ops, 1.0) * w)  # noqa: E731
  g = np.asarray(jax.grad(f)(x))
  assert np.isfinite(g).all() and np.abs(g).sum() > 0
  # against central differences along a random direction
  d = jnp.asarray(_images(seed=3))
  eps = 1e-2
  fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=2e-3, atol=2e-3)


def test_deterministic_from_the_key_and_p():
  x = jnp.asarray(_images(8))
  ops = augment.parse_policy("color,translation,cutout")
  a = augment.augment(x, KEY, ops, 1.0)
  np.testing.assert_array_equal(a, augment.augment(x, KEY, ops, 1.0))
  assert not np.array_equal(a, augment.augment(x, jax.random.PRNGKey(4), ops, 1.0))
  np.testing.assert_array_equal(augment.augment(x, KEY, ops, 0.0), x)   # p = 0: identity
  changed = (np.asarray(a) != np.asarray(x)).any(axis=(1, 2, 3))
  assert changed.all()


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (virtual) devices")
@pytest.mark.parametrize("policy", ["translation,cutout", "color,translation,cutout"])
def test_identical_on_every_shard(policy):
  """A batch sharded over 4 devices is augmented as on one: the same draws for each image."""
  x = _images(8)
  ops = augment.parse_policy(policy)
  fn = lambda v, k: augment.augment(v, k, ops, 0.7)  # noqa: E731
  one = np.asarray(jax.jit(fn)(jnp.asarray(x), KEY))
  mesh = parallel.make_mesh(4)
  sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
  four = np.asarray(jax.jit(fn, out_shardings=NamedSharding(mesh, P("data")))(sharded, KEY))
  if "color" in ops:   # means over an image may round differently in the other program
    np.testing.assert_allclose(one, four, rtol=0, atol=1e-6)
  else:   # pure data movement: bit-equal
    np.testing.assert_array_equal(one, four)


def test_unknown_or_repeated_op_is_one_error():
  with pytest.raises(errors.ConfigError, match="unknown op 'rotate'"):
    augment.parse_policy("color,rotate")
  with pytest.raises(errors.ConfigError, match="listed twice"):
    augment.parse_policy("cutout,cutout")
  config = load_config("tiny", augment__policy="colour")
  with pytest.raises(errors.ConfigError, match=r"config\.augment\.policy='colour'"):
    preflight.check_config(config)
  assert augment.parse_policy("") == ()


def _ada_config(target=0.6):
  return load_config("tiny", augment__policy="translation", augment__ada_target=target,
                     augment__p=0.5, augment__ada_interval=2, augment__ada_kimg=1)


@pytest.mark.parametrize("d_out,direction", [(3.0, 1), (-3.0, -1)])
def test_ada_p_moves_the_right_way(d_out, direction):
  """A D always right on reals (overfitting) raises p; one always wrong lowers it."""
  config = _ada_config()
  ada = augment.ada_init(config)
  speed = config.batch_size * 2 / 1000.0
  ps = []
  for step in range(6):
    d_real = jnp.full((8,), d_out)
    ada = augment.ada_update(config, ada, jnp.asarray(step), jnp.mean(jnp.sign(d_real)))
    ps.append(float(ada["p"]))
  want = [0.5 + direction * speed * (k // 2) for k in range(1, 7)]
  np.testing.assert_allclose(ps, want, rtol=1e-6)


def test_ada_p_is_clipped_to_0_1():
  config = _ada_config()
  ada = {"p": jnp.float32(0.005), "acc": jnp.float32(-1.0)}
  assert float(augment.ada_update(config, ada, jnp.asarray(1), -1.0)["p"]) == 0.0


def test_lecam_matches_numpy():
  config = load_config("tiny", optim__lecam_weight=0.3, optim__lecam_decay=0.9)
  rng = np.random.default_rng(0)
  d_real, d_fake = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
  state = {"real": np.float32(0.4), "fake": np.float32(-0.2)}
  inputs = regularizers.DInputs(jnp.asarray(d_real), jnp.asarray(d_fake), None, None,
                                apply_d=None, params=None)
  term, new = regularizers.lecam(config, inputs, {k: jnp.asarray(v) for k, v in state.items()})
  a_r = 0.9 * 0.4 + 0.1 * d_real.mean()
  a_f = 0.9 * -0.2 + 0.1 * d_fake.mean()
  want = 0.3 * (np.mean((d_real - a_f) ** 2) + np.mean((d_fake - a_r) ** 2))
  np.testing.assert_allclose(float(term), want, rtol=1e-6)
  np.testing.assert_allclose([float(new["real"]), float(new["fake"])], [a_r, a_f], rtol=1e-6)
  assert regularizers.active(config) == ("lecam",)
  assert regularizers.active(load_config("tiny")) == ()
