"""Which convolution implementation a layer uses: `model.conv_impl` 'auto' and 'tune'.

    resolve(conv_impl, x_shape, w_shape, dtype) -> one of conv.IMPLS

On GPU and TPU both mean 'xla' (cuDNN and the TPU compiler need no help).
On CPU:

  auto  a fixed rule per shape (`rule`), measured on the 2-core CPUs this
        project runs on: deterministic and free.
  tune  timed per shape on this machine, as cuDNN's autotuner does: the
        first time a 3x3 shape is traced, the candidates (`CANDIDATES`,
        which differ only in the weight gradient) are compiled and run a
        few times, alternating, and the best minimum wins (XLA must be beaten
        by `_MARGIN`, so that timing noise does not flip a tie). The choice
        is kept in memory and in `~/.cache/sagan_jax/conv_impl.json`
        (`$SAGAN_JAX_CACHE_DIR`, or `$XDG_CACHE_HOME`, moves it; '' turns the
        file off), keyed by CPU model, core count, jax version, device count,
        shapes and dtype, so later runs pay nothing and choose the same.
        Shapes too small to time reliably or too large to time cheaply, and
        runs of several processes (all must compile one program), use the
        rule.

Every implementation computes the same function within float32 rounding,
so the choice changes speed, not results.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import logging

from sagan_jax import cpu_devices
from sagan_jax.models import conv

_MIN_FLOPS = 5e6    # forward FLOPs below which timing is noise: use the rule
_MAX_FLOPS = 4e9    # above this, timing 4 candidates would cost seconds: use the rule
_ROUNDS = 5         # alternating timed rounds per candidate
_MARGIN = 0.9       # a candidate must take < 90% of XLA's time to replace it
_DOWN_MIN_PIXELS = 1024  # 'auto'/'tune': a downsampling conv on fewer input pixels stays literal
_DIVIDE_OUTPUT = 2  # kernel / output-map elements from which SN divides the conv's output
_CACHE_FILE = "conv_impl.json"
# model.conv_impl: a rule per shape ('auto'), timed per shape ('tune'), or one implementation.
CHOICES = ("auto", "tune") + conv.IMPLS
# Timed for 'tune': they differ only in the weight gradient ('matmul' is there to be asked for;
# 'xla' differs from 'xla_dw' only in the input gradient, where conv.input_grad is not slower).
CANDIDATES = ("xla_dw", "im2col", "shift", "blocked")

_choices: dict[str, str] = {}
_disk_loaded = False


def rule(x_shape, w_shape) -> str:
  """'auto' on CPU: XLA where its weight gradient is fine, matmuls where they win.

  Measured on a 2-core AMD EPYC (jax 0.10, weight gradient alone): a 1x1
  conv is 4-7x faster as a matmul; a narrow input (the RGB input) is
  2.5-5x faster as one im2col matmul; a few thousand pixels
  (N*H*W) or fewer are a tie or XLA's; above that the shifted-slice weight
  gradient is 1.2x (64 channels, 16x16, batch 64) to 3-10x (128 channels,
  32x32 or more) faster than XLA's. Where XLA's weight gradient stays, the
  input gradient is `conv.input_grad`'s ('xla_dw'), not autodiff's: the same
  program where the kernel is small, 1.1-2.5x faster where it is the larger
  (2-core Intel Xeon, jaxlib 0.12.1, 512-1024 channels at 4x4 and 8x8).
  Where the shifted-slice form's per-tap matmuls are skinny ([rows, C]^T [rows, O] with
  64-256 inputs and 64 or fewer outputs, 16,384 pixels or more) it is 'blocked' (im2col
  in cache-sized blocks): G's 128x128, 64-channel conv 264 -> 175 ms, D's fused 2x2 down
  conv (256 -> 64 channels at 65x65, batch 16) 147-162 -> 117-153 ms (2-core Intel Xeon,
  jaxlib 0.10.2, weight gradient alone); at 32 channels, or 128 and more outputs, the
  shifted slices were as fast or faster. Tried without gain: 'matmul' for the deep
  low-resolution layers (fewer than 4,096 pixels, kh*kw*C >= 4096): forward and both
  gradients alone took 1052 ms against 'xla_dw's 2138 over ten 128px shapes, yet the 128px
  step took 6.91 s against 6.44 (compiled both ways, alternated in one process).
  A narrow output (the RGB layer) is 'taps' (a matmul with 3 columns, tried
  first on AMD, was 4x slower than XLA; one with 27, then shifted sums, is
  2x faster: forward 34 -> 16 ms and both gradients 92 -> 44 ms at 32x32,
  128 channels, batch 64, 2-core Intel Xeon, jaxlib 0.10.2).
  """
  n, h, w, _ = x_shape
  kh, kw, c, o = w_shape
  if (kh, kw) == (1, 1):
    return "matmul"
  if o < conv.NARROW:
    return "taps"
  if c < conv.NARROW:
    return "im2col"
  if n * h * w < 4096:
    return "xla_dw"
  return "blocked" if 64 <= c <= 256 and o <= 64 and n * h * w >= 16384 else "shift"


def cache_path() -> str | None:
  """The choices file, or None when `$SAGAN_JAX_CACHE_DIR` is set to ''."""
  root = os.environ.get("SAGAN_JAX_CACHE_DIR")
  if root is None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "sagan_jax")
  return os.path.join(root, _CACHE_FILE) if root else None


def _machine() -> str:
  return (f"{cpu_devices.cpu_model()}|{os.cpu_count()} cpus|jax {jax.__version__}|"
          f"{jax.local_device_count()} devices")


def _key(x_shape, w_shape, dtype) -> str:
  shape = lambda s: "x".join(str(int(d)) for d in s)  # noqa: E731
  return f"{_machine()}|x {shape(x_shape)}|w {shape(w_shape)}|{np.dtype(dtype).name}"


def _read_disk() -> dict[str, str]:
  path = cache_path()
  if not path or not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      saved = json.load(f)
    return {k: v for k, v in saved.items() if v in conv.IMPLS}
  except (OSError, ValueError, AttributeError) as e:
    logging.warning("ignoring unreadable conv choices file %s: %s", path, e)
    return {}


def _load_disk() -> None:
  global _disk_loaded
  if not _disk_loaded:
    _disk_loaded = True
    for k, v in _read_disk().items():
      _choices.setdefault(k, v)


def _save_disk() -> None:
  """Adds this process's choices to the file (keeping what others wrote meanwhile)."""
  path = cache_path()
  if not path:
    return
  merged = {**_read_disk(), **_choices}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      json.dump(merged, f, indent=0, sort_keys=True)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
  except OSError as e:
    logging.warning("could not write conv choices file %s: %s", path, e)


def time_candidates(x_shape, w_shape, dtype, impls=CANDIDATES,
                    rounds: int = _ROUNDS) -> dict[str, float]:
  """Best seconds of the weight gradient per implementation.

  The candidates share XLA's forward pass and input gradient, so only the
  weight gradient is timed: small programs, quick to compile.
  """
  kh, kw = w_shape[:2]
  # SAME for odd kernels, VALID for even ones (the fused resampling convs; close enough).
  pad = conv.same_padding(w_shape) if kh % 2 else ((0, 0), (0, 0))
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(dtype)
  out = (x_shape[0], x_shape[1] + sum(pad[0]) - kh + 1, x_shape[2] + sum(pad[1]) - kw + 1)
  dy = rng.standard_normal(out + (w_shape[-1],)).astype(dtype)
  fns = {}
  for impl in impls:
    fns[impl] = jax.jit(functools.partial(conv.weight_grad, w_shape=tuple(w_shape), impl=impl,
                                          padding=pad))
    jax.block_until_ready(fns[impl](x, dy))  # compile and warm up
  best = dict.fromkeys(impls, float("inf"))
  for _ in range(rounds):
    for impl, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(x, dy))
      best[impl] = min(best[impl], time.perf_counter() - t)
  return best


def _pick(times: dict[str, float]) -> str:
  fastest = min(times, key=times.get)
  if "xla_dw" in times and times[fastest] > _MARGIN * times["xla_dw"]:
    return "xla_dw"
  return fastest


def _rewrites_on(impl: str) -> bool:
  """Whether the CPU path's exact rewrites around convs apply: for every implementation but
  the 'xla' reference, and for 'auto'/'tune' only on CPU (accelerators run plain XLA)."""
  return impl != "xla" and (impl not in ("auto", "tune") or jax.default_backend() == "cpu")


def fuses_resampling(impl: str, resample: str | None = None, x_shape=None) -> bool:
  """Whether convs next to up/downsampling use `resampling.resampled_conv`'s exact rewrites: on
  CPU for every implementation but the 'xla' reference (accelerators run the literal form).

  'auto' and 'tune' keep a downsampling conv literal below `_DOWN_MIN_PIXELS` input pixels
  (N*H*W): there its kernel rewrite (a 4x4 kernel transposed into a [2, 2, 4C, O] one)
  costs more than the multiplies it saves. Measured (2-core AMD EPYC Zen 4, jax 0.10.2,
  forward and both gradients, the 128px D at batch 8): 8x8 input, 1024 channels, 249 ms
  literal against 477 ms fused; 16x16, 512 channels, 155 against 160 (kept fused); 32x32
  and up, the rewrite wins by 10-30%. Upsampling's rewrite was faster at every 128px G
  shape (4x4 to 64x64 inputs, 1.2-2.3x)."""
  if not _rewrites_on(impl):
    return False
  if impl not in ("auto", "tune"):
    return True
  return not (resample == "down" and x_shape is not None
              and x_shape[0] * x_shape[1] * x_shape[2] < _DOWN_MIN_PIXELS)


def divides_output(impl: str, x_shape, w_shape, resample: str | None = None) -> bool:
  """Whether an SN conv divides its output by sigma instead of its kernel (the same
  function): where the kernel has `_DIVIDE_OUTPUT` times the elements of one output channel
  map or more (the 4x4 to 16x16 layers at 128x128: a 3x3x1024x1024 kernel is 36 MB, their
  outputs 0.5-2 MB; none in the digits or 32x32 models), on CPU with 'auto'/'tune' or any
  rewrite implementation; the 'xla' reference keeps W / sigma. XLA:CPU wrote each W / sigma
  out as its own pass over the kernel (15 ms for 3x3x1024x1024, 2-core Intel Xeon), where
  the division of the output joins the bias add's pass. The 128px step (jax 0.10.2, old and
  new alternated in one process): 4.68 -> 4.46 s from 8x, 4.64 -> 4.56 s more from 2x."""
  if not _rewrites_on(impl):
    return False
  n, h, w = x_shape[:3]
  if resample == "up":
    h, w = 2 * h, 2 * w
  elif resample == "down":
    h, w = h // 2, w // 2
  kh, kw, c, _ = w_shape
  return kh * kw * c >= _DIVIDE_OUTPUT * n * h * w


def resolve(impl: str, x_shape, w_shape, dtype) -> str:
  """The implementation for this convolution: 'auto' and 'tune' resolved, others as given."""
  if impl not in ("auto", "tune"):
    return impl
  if jax.default_backend() != "cpu":
    return "xla"
  if impl == "auto" or tuple(w_shape[:2]) == (1, 1) or w_shape[-1] < conv.NARROW:
    return rule(x_shape, w_shape)   # (the candidates differ in dW only; 'taps' in all three)
  _load_disk()
  key = _key(x_shape, w_shape, dtype)
  if key in _choices:
    return _choices[key]
  flops = 2.0 * np.prod(x_shape[:3]) * np.prod(w_shape)
  if jax.process_count() > 1 or not _MIN_FLOPS <= flops <= _MAX_FLOPS:
    return rule(x_shape, w_shape)
  # Called while a step is being traced: run the timing eagerly, outside that trace.
  with jax.ensure_compile_time_eval():
    times = time_candidates(tuple(x_shape), tuple(w_shape), np.dtype(dtype))
  _choices[key] = _pick(times)
  logging.info("conv x%s w%s %s: %s (%s)", tuple(x_shape), tuple(w_shape), np.dtype(dtype).name,
               _choices[key], ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items()))
  _save_disk()
  return _choices[key]
