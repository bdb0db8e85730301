"""Reads torch.save / torch.jit.save files without torch: tensors come back as numpy arrays.

`load(file)` is `torch.load(file, map_location="cpu")` for data: state_dicts,
optimizer state_dicts, checkpoint dicts, TorchScript archives; in the zip
format (torch >= 1.6, every torch.jit.save) or the legacy stream format. The
result holds plain Python values, numpy arrays for tensors (bfloat16 widened
to float32, views copied out contiguous), `torch.Size` as a tuple, numpy
scalars and arrays, and inert `TorchObject`s for TorchScript modules
(`ScriptObject`) and torch.nn modules (`ModuleObject`: BigGAN-PyTorch keeps
its activation in the config it saves).

Loading runs no code from the file: the unpickler resolves only the globals in
`_ALLOWED`, torch storage types, and those stand-ins (classes made here, with
no method of the real class). Any other global raises `TorchFileError` naming
it, as does a file that is not a torch file, or is truncated or damaged.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np


class TorchFileError(pickle.UnpicklingError, ValueError):
  """A file that cannot be loaded: not a torch file, damaged, or needing a refused global."""


# ----------------------------------------------------------------------------
# Tensors: typed storages, views of them, and the functions torch pickles call.

_STORAGE_DTYPES = {  # the bytes as stored: little-endian; bfloat16 widened on load
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}


class _Sealed:
  """Made by this reader from checked values: a pickle may not BUILD (reset) its attributes."""

  def __setstate__(self, state):
    raise TorchFileError(f"a pickle may not set the state of a {type(self).__name__}")


class _StorageType(_Sealed):
  """`torch.FloatStorage` and friends as a pickle names them; only the dtype matters."""

  def __init__(self, name: str):
    if name not in _STORAGE_DTYPES:
      raise TorchFileError(f"unsupported tensor storage type torch.{name}")
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])

  def __repr__(self):
    return f"torch.{self.name}"


class _Storage(_Sealed):
  """A storage named by key; its bytes arrive when first seen (zip) or after the pickle (legacy)."""

  def __init__(self, key: str, stype: _StorageType, numel: int):
    self.key, self.stype, self.numel = key, stype, int(numel)
    self.array: np.ndarray | None = None

  def set_bytes(self, raw: bytes) -> None:
    dt = self.stype.dtype
    if self.numel < 0 or len(raw) < self.numel * dt.itemsize:
      raise TorchFileError(f"storage {self.key}: {len(raw)} bytes for {self.numel} x "
                           f"{self.stype}; the file is truncated")
    array = np.frombuffer(raw, dt, count=self.numel).astype(dt.newbyteorder("="))
    if self.stype.name == "BFloat16Storage":  # the high half of a float32
      array = (array.astype(np.uint32) << 16).view(np.float32)
    self.array = array


class _TensorRef(_Sealed):
  """A view (offset, size, stride) of a storage; an ndarray once the storage is read."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(map(int, size)), tuple(map(int, stride))

  def resolve(self) -> np.ndarray:
    data = self.storage.array
    if data is None:
      raise TorchFileError(f"storage {self.storage.key} was never read")
    if len(self.size) != len(self.stride) or any(n < 0 for n in self.size):
      raise TorchFileError(f"bad tensor size {self.size} / stride {self.stride}")
    if 0 in self.size:
      return np.zeros(self.size, data.dtype)
    last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
    if self.offset < 0 or any(st < 0 for st in self.stride) or last >= data.shape[0]:
      raise TorchFileError(
          f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride})"
          f" runs past its storage of {data.shape[0]} elements")
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size,
        strides=tuple(st * data.itemsize for st in self.stride), writeable=False)
    return np.array(view, order="C")  # its own contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  if not isinstance(storage, _Storage):
    raise TorchFileError("_rebuild_tensor_v2 called without a tensor storage")
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  """nn.Parameter (also `_rebuild_parameter_with_state`): just its tensor."""
  return data


# ----------------------------------------------------------------------------
# numpy values (checkpoints keep metrics such as a best FID as numpy scalars).

class _NumpyDtype:
  """`numpy.dtype(name, align, copy)`; BUILD then sets the byte order. Numeric kinds only."""

  def __init__(self, name, align=False, copy=True):
    if not isinstance(name, str) or np.dtype(name).kind not in "biufc":
      raise TorchFileError(f"numpy dtype {name!r} is not a plain numeric type")
    self.dtype = np.dtype(name)

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
  if (not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes)
      or len(data) != dtype.dtype.itemsize):
    raise TorchFileError("malformed numpy scalar")
  return np.frombuffer(data, dtype.dtype)[0]


class _NumpyArray:
  """`numpy.ndarray` as `_reconstruct` makes it; BUILD gives shape, dtype and raw bytes."""
  array: np.ndarray | None = None

  def __setstate__(self, state):
    shape, dtype, fortran, raw = state[-4:]        # (version,) shape, dtype, fortran, data
    if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, bytes):
      raise TorchFileError("malformed numpy array (only numeric arrays are read)")
    array = np.frombuffer(raw, dtype.dtype).reshape(  # numpy checks the sizes agree
        tuple(int(n) for n in shape), order="F" if fortran else "C")
    self.array = array.astype(dtype.dtype.newbyteorder("="))


def _numpy_reconstruct(subtype, shape=(0,), code=b"b"):
  if subtype is not _NumpyArray:
    raise TorchFileError("numpy _reconstruct of something other than an ndarray")
  return _NumpyArray()


def _codecs_encode(text, encoding="utf-8"):
  """How protocol-2 pickles write bytes: `_codecs.encode(str, 'latin1')`."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TorchFileError(f"_codecs.encode with {encoding!r}: only latin1 is allowed")
  return text.encode("latin1")


# ----------------------------------------------------------------------------
# Inert stand-ins for torch-side class instances.

class TorchObject:
  """A torch-side class instance as a bag (`vars(obj)`) of the attributes its pickle holds."""
  _qualname = "?"

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.__dict__["_state"] = state

  def __repr__(self):
    return f"<{self._qualname} {sorted(self.__dict__)}>"


class ScriptObject(TorchObject):
  """A TorchScript module or class instance (`__torch__.*`)."""


class ModuleObject(TorchObject):
  """A pickled torch.nn module instance (`torch.nn.modules.*`)."""


@functools.lru_cache(maxsize=None)
def _stub_class(base: type, module: str, name: str) -> type:
  return type(name, (base,), {"_qualname": f"{module}.{name}"})


def get_attr(obj: Any, dotted: str) -> Any:
  """`obj.a.b` through `TorchObject` attributes; ValueError naming the path if one is missing."""
  for part in dotted.split("."):
    if not isinstance(obj, TorchObject) or part not in obj.__dict__:
      raise ValueError(f"no attribute {dotted!r} (missing at {part!r})")
    obj = obj.__dict__[part]
  return obj


# ----------------------------------------------------------------------------
# The restricted unpickler.

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Size"): lambda dims=(): tuple(int(d) for d in dims),
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,   # its first 4 arguments
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _tag: value,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy", "ndarray"): _NumpyArray,
    **{(m, "scalar"): _numpy_scalar for m in _NUMPY_CORE},
    **{(m, "_reconstruct"): _numpy_reconstruct for m in _NUMPY_CORE},
}
_MODULE_ALIASES = {"__builtin__": "builtins", "torch.storage": "torch"}  # protocol 2 / old torch


class _Unpickler(pickle.Unpickler):
  """Resolves only allowed globals; storages come from `read_storage` (None: read later)."""

  def __init__(self, file, read_storage: Callable[[_Storage], None] | None):
    super().__init__(file)
    self.storages: dict[str, _Storage] = {}
    self._read_storage = read_storage

  def find_class(self, module, name):
    module = _MODULE_ALIASES.get(module, module)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name)
    if module == "__torch__" or module.startswith("__torch__."):
      return _stub_class(ScriptObject, module, name)
    if module.startswith("torch.nn.modules."):
      return _stub_class(ModuleObject, module, name)
    raise TorchFileError(f"refusing to load global {module}.{name}: only tensors, containers "
                         "and plain values are read (no code from the file is run)")

  def persistent_load(self, pid):
    kind = pid[0] if isinstance(pid, tuple) and pid else None
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "module" and isinstance(pid[1], type) and issubclass(pid[1], TorchObject):
      return pid[1]                    # legacy format: a pickled nn.Module's class
    if kind != "storage" or len(pid) < 5:
      raise TorchFileError(f"unsupported persistent id {str(pid)[:80]}")
    stype, key, _location, numel = pid[1:5]
    if not isinstance(stype, _StorageType):
      raise TorchFileError(f"storage of unknown type {stype!r}")
    if len(pid) > 5 and pid[5] is not None:
      raise TorchFileError("storage views (legacy format) are not supported")
    key = str(key)
    if key not in self.storages:
      storage = _Storage(key, stype, numel)
      self.storages[key] = storage
      if self._read_storage is not None:
        self._read_storage(storage)
    return self.storages[key]


def _resolve(obj, memo: dict | None = None):
  """Replaces every tensor / numpy stand-in inside containers and TorchObjects by its array."""
  memo = {} if memo is None else memo
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, TorchObject):
    memo[id(obj)] = obj                # set first: object graphs may be cyclic
    for k, v in list(obj.__dict__.items()):
      obj.__dict__[k] = _resolve(v, memo)
    return obj
  if isinstance(obj, _TensorRef):
    out = obj.resolve()
  elif isinstance(obj, _NumpyArray):
    if obj.array is None:
      raise TorchFileError("a numpy array without its data")
    out = obj.array
  elif isinstance(obj, dict):          # dict or OrderedDict: the same type back
    out = type(obj)((k, _resolve(v, memo)) for k, v in obj.items())
  elif isinstance(obj, (list, tuple)):
    out = type(obj)(_resolve(v, memo) for v in obj)
  else:
    out = obj
  memo[id(obj)] = out
  return out


# ----------------------------------------------------------------------------
# The two file formats.

def _load_zip(f: BinaryIO) -> Any:
  with zipfile.ZipFile(f) as zf:
    names = set(zf.namelist())
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise TorchFileError("a zip archive without data.pkl: not a torch file")
    pkl_name = min(pkl, key=len)
    prefix = pkl_name[: -len("data.pkl")]
    if (prefix + "byteorder" in names
        and zf.read(prefix + "byteorder").strip() not in (b"little", b"")):
      raise TorchFileError("big-endian tensor data is not supported")

    def read_storage(storage: _Storage) -> None:
      entry = f"{prefix}data/{storage.key}"
      if entry not in names:
        raise TorchFileError(f"missing tensor storage {entry}")
      storage.set_bytes(zf.read(entry))

    return _resolve(_Unpickler(io.BytesIO(zf.read(pkl_name)), read_storage).load())


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_legacy(f: BinaryIO) -> Any:
  try:
    magic = _Unpickler(f, None).load()
  except Exception:
    magic = None
  if magic != _LEGACY_MAGIC:
    raise TorchFileError("not a torch file: neither a zip archive nor a legacy torch.save stream")
  _Unpickler(f, None).load()                      # protocol version
  sys_info = _Unpickler(f, None).load()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise TorchFileError("big-endian tensor data is not supported")
  unpickler = _Unpickler(f, None)
  result = unpickler.load()
  for key in _Unpickler(f, None).load():            # storage keys, then each one's bytes
    if str(key) not in unpickler.storages:
      raise TorchFileError(f"storage {key} is not referenced by the pickle")
    _read_legacy_storage(f, unpickler.storages[str(key)])
  return _resolve(result)


def _read_legacy_storage(f: BinaryIO, storage: _Storage) -> None:
  """One storage of the legacy stream: its int64 element count, then its bytes."""
  header = f.read(8)
  if len(header) != 8:
    raise TorchFileError(f"storage {storage.key}: the file is truncated")
  (numel,) = struct.unpack("<q", header)
  here = f.tell()
  left = f.seek(0, os.SEEK_END) - here
  f.seek(here)
  if numel < 0 or numel * storage.stype.dtype.itemsize > left:
    raise TorchFileError(f"storage {storage.key}: {numel} x {storage.stype} but {left} bytes"
                         " left; the file is truncated")
  storage.numel = numel
  storage.set_bytes(f.read(numel * storage.stype.dtype.itemsize))


def _load_stream(f: BinaryIO) -> Any:
  head, is_zip = f.read(4), zipfile.is_zipfile(f)
  f.seek(0)
  if is_zip:
    return _load_zip(f)
  if head == b"PK\x03\x04":
    raise TorchFileError("a zip archive that is truncated or damaged (no central directory)")
  if not head:
    raise TorchFileError("empty file")
  return _load_legacy(f)


def load(file: str | os.PathLike | BinaryIO, name: str | None = None) -> Any:
  """`torch.load(file, map_location='cpu')` for data, without torch (see the module docstring).

  `file`: a path or a seekable binary file object; `name` labels it in errors
  (default: the path, or the object's `.name`). Raises TorchFileError, with
  that label and what is wrong, for a file that is not a loadable torch file;
  an unopenable path raises the OSError of `open`.
  """
  if isinstance(file, (str, os.PathLike)):
    with open(file, "rb") as f:
      return load(f, name or os.fspath(file))
  label = name or str(getattr(file, "name", "<stream>"))
  try:
    return _load_stream(file)
  except TorchFileError as e:
    raise TorchFileError(f"{label}: {e}") from None
  except Exception as e:  # a damaged pickle or zip fails in many ways
    raise TorchFileError(
        f"{label}: damaged or not a torch file ({type(e).__name__}: {e})") from e
