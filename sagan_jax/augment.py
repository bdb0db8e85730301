"""Differentiable augmentation of what D sees (DiffAugment) and ADA's controller of its strength.

`config.augment.policy` is a comma list of DiffAugment's three ops (Zhao et
al. 2020), applied in this order to images in [-1, 1], [N, H, W, C]:

  color        brightness: x + U(-0.5, 0.5); saturation: the per-pixel channel
               mean + (x - that mean) * U(0, 2); contrast: the image's mean +
               (x - that mean) * U(0.5, 1.5) (one draw of each per image)
  translation  a shift of up to 1/8 of the size along each axis (an integer
               in [-s, s], s = round(size / 8)), the uncovered border zero
  cutout       a zeroed square of half the size (rounded) whose centre is
               anywhere in the image (the square may be clipped by the border)

Each op applies to each image with probability `p` (`config.augment.p`, or,
with ADA on, the train state's `extra['ada']['p']`), drawn independently per
op and image. Every draw comes from the key handed in (the train step's
key), so a resumed run augments exactly as an uninterrupted one, and the
result does not depend on how the batch is sharded. Gradients flow through
every op to the images (G learns through the augmented D).

ADA (Karras et al. 2020): every `ada_interval` steps
r_t = mean over those steps of E[sign(D(x_real))], and
p += sign(r_t - ada_target) * batch_size * ada_interval / (ada_kimg * 1000),
clipped to [0, 1]: p rises while D is sure of the reals (overfitting) and
falls when it is not.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sagan_jax.errors import ConfigError, check_field


def adjust_color(x: jax.Array, brightness, saturation, contrast) -> jax.Array:
  """x + brightness, then saturation and contrast factors (per image: [N] or scalars)."""
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  per_image = lambda v: jnp.reshape(jnp.broadcast_to(v, x.shape[:1]), shape)  # noqa: E731
  x = x + per_image(brightness)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - mean) * per_image(saturation) + mean
  mean = jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)
  return (x - mean) * per_image(contrast) + mean


def color(x: jax.Array, key: jax.Array) -> jax.Array:
  """DiffAugment's `color`: brightness U(-0.5, 0.5), saturation U(0, 2), contrast U(0.5, 1.5)."""
  kb, ks, kc = jax.random.split(key, 3)
  n = (x.shape[0],)
  return adjust_color(x, jax.random.uniform(kb, n, x.dtype) - 0.5,
                      jax.random.uniform(ks, n, x.dtype) * 2.0,
                      jax.random.uniform(kc, n, x.dtype) + 0.5)


def shift(x: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
  """Image i moved down by dy[i] and right by dx[i] pixels (int), zeros shifted in."""
  _, h, w, _ = x.shape
  rows = jnp.arange(h)[None, :] - dy[:, None]          # source row of each output row
  cols = jnp.arange(w)[None, :] - dx[:, None]
  ok_r = ((rows >= 0) & (rows < h)).astype(x.dtype)
  ok_c = ((cols >= 0) & (cols < w)).astype(x.dtype)
  x = jnp.take_along_axis(x, jnp.clip(rows, 0, h - 1)[:, :, None, None], axis=1)
  x = jnp.take_along_axis(x, jnp.clip(cols, 0, w - 1)[:, None, :, None], axis=2)
  return x * ok_r[:, :, None, None] * ok_c[:, None, :, None]


def translation(x: jax.Array, key: jax.Array, ratio: float = 0.125) -> jax.Array:
  """A random shift by up to round(size * ratio) pixels along each axis (DiffAugment)."""
  n, h, w, _ = x.shape
  sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
  ky, kx = jax.random.split(key)
  dy = jax.random.randint(ky, (n,), -sy, sy + 1)
  dx = jax.random.randint(kx, (n,), -sx, sx + 1)
  return shift(x, dy, dx)


def erase(x: jax.Array, top: jax.Array, left: jax.Array, size_h: int, size_w: int) -> jax.Array:
  """Image i with rows [top, top+size_h) x cols [left, left+size_w) set to 0 (clipped)."""
  _, h, w, _ = x.shape
  r = jnp.arange(h)[None, :]
  c = jnp.arange(w)[None, :]
  in_r = (r >= top[:, None]) & (r < top[:, None] + size_h)
  in_c = (c >= left[:, None]) & (c < left[:, None] + size_w)
  box = in_r[:, :, None] & in_c[:, None, :]
  return x * (1.0 - box.astype(x.dtype))[..., None]


def cutout(x: jax.Array, key: jax.Array, ratio: float = 0.5) -> jax.Array:
  """A zeroed square of round(size * ratio) centred anywhere in the image (DiffAugment)."""
  n, h, w, _ = x.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (n,), 0, h + (1 - ch % 2))
  cx = jax.random.randint(kx, (n,), 0, w + (1 - cw % 2))
  return erase(x, cy - ch // 2, cx - cw // 2, ch, cw)


OPS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
  """'color,translation' -> ('color', 'translation'); ConfigError naming an unknown op."""
  names = tuple(s.strip() for s in policy.split(",") if s.strip())
  bad = [s for s in names if s not in OPS]
  if bad or len(set(names)) != len(names):
    what = f"unknown op {bad[0]!r}" if bad else "an op listed twice"
    raise ConfigError(f"config.augment.policy={policy!r} is invalid: {what}; use a comma "
                      f"list of {', '.join(OPS)} ('' = off).")
  return names


def augment(x: jax.Array, key: jax.Array, policy: tuple[str, ...], p) -> jax.Array:
  """x with each op of `policy` applied to each image with probability p (see module doc)."""
  for k, name in enumerate(policy):
    k_op, k_use = jax.random.split(jax.random.fold_in(key, k))
    use = jax.random.uniform(k_use, (x.shape[0],)) < p
    x = jnp.where(use[:, None, None, None], OPS[name](x, k_op), x)
  return x


def check_config(c) -> None:
  """ConfigError naming the first config.augment field that cannot work (preflight.check_config)."""
  a = c.augment
  parse_policy(a.policy)
  check_field(0 <= a.p <= 1, "augment.p", a.p, "must be in [0, 1]")
  check_field(0 <= a.ada_target < 1, "augment.ada_target", a.ada_target,
              "must be in [0, 1) (0 = off; ADA's paper uses 0.6)")
  check_field(a.ada_target == 0 or bool(a.policy), "augment.ada_target", a.ada_target,
              "needs an augmentation policy (set --config.augment.policy, e.g. "
              "'color,translation')")
  check_field(isinstance(a.ada_interval, int) and a.ada_interval > 0, "augment.ada_interval",
              a.ada_interval, "must be a positive integer")
  check_field(a.ada_kimg > 0, "augment.ada_kimg", a.ada_kimg, "must be > 0")




# ----------------------------------------------------------------------------
# ADA's controller


def ada_enabled(config) -> bool:
  return bool(config.augment.policy) and config.augment.ada_target > 0


def ada_init(config) -> dict[str, jax.Array]:
  """ADA's state: the probability (starts at config.augment.p) and the sign accumulator."""
  return {"p": jnp.asarray(config.augment.p, jnp.float32), "acc": jnp.zeros((), jnp.float32)}


def ada_update(config, ada: dict[str, jax.Array], step: jax.Array,
               sign_real: jax.Array) -> dict[str, jax.Array]:
  """ADA's state after a step (`step` = steps done before it) whose E[sign(D(x))] was `sign_real`.

  Every `ada_interval` steps p moves by sign(r_t - ada_target) times the
  adjustment speed, and the accumulator restarts.
  """
  a = config.augment
  acc = ada["acc"] + sign_real
  due = (step + 1) % a.ada_interval == 0
  r_t = acc / a.ada_interval
  speed = config.batch_size * a.ada_interval / (a.ada_kimg * 1000.0)
  moved = jnp.clip(ada["p"] + jnp.sign(r_t - a.ada_target) * speed, 0.0, 1.0)
  return {"p": jnp.where(due, moved, ada["p"]).astype(jnp.float32),
          "acc": jnp.where(due, 0.0, acc).astype(jnp.float32)}
