"""The numpy-only reader of torch.save / torch.jit.save files (sagan_jax.torch_pickle).

The .pt fixtures were written by torch itself (tests/fixtures/make_torch_pickle_fixture.py)
in both of torch.save's formats; other archives are built here byte by byte.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from sagan_jax import torch_pickle

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
FORMATS = ("zip", "legacy")


def flat_arrays(obj, prefix: str = "") -> dict:
  """Every ndarray / numpy scalar of a nested dict/list/tuple, keyed by its '/'-joined path."""
  out = {}
  if isinstance(obj, dict):
    items = obj.items()
  elif isinstance(obj, (list, tuple)):
    items = enumerate(obj)
  else:
    if isinstance(obj, (np.ndarray, np.generic)):
      out[prefix[:-1]] = obj
    return out
  for k, v in items:
    out.update(flat_arrays(v, f"{prefix}{k}/"))
  return out


# ----------------------------------------------------------------------------
# Files torch wrote.

def test_reader_on_torch_saved_fixtures():
  """Files torch.save wrote (zip and legacy formats) read back exactly without torch."""
  want = np.load(os.path.join(FIXTURES, "tiny_state_dict.npz"))
  for name in ("tiny_state_dict_zip.pt", "tiny_state_dict_legacy.pt"):
    got = torch_pickle.load(os.path.join(FIXTURES, name))
    assert list(got) == list(want.files), name
    for k in want.files:
      assert got[k].dtype == want[k].dtype, (name, k)
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}:{k}")


@pytest.fixture(scope="module", params=FORMATS)
def checkpoint(request):
  return torch_pickle.load(os.path.join(FIXTURES, f"tiny_checkpoint_{request.param}.pt"))


def test_checkpoint_tensors_equal_what_torch_saved(checkpoint):
  """Every tensor and numpy value of a training checkpoint, by path, dtype and value."""
  want = np.load(os.path.join(FIXTURES, "tiny_checkpoint.npz"))
  got = flat_arrays(checkpoint)
  assert sorted(got) == sorted(want.files)
  for k in want.files:
    assert np.asarray(got[k]).dtype == want[k].dtype, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_checkpoint_structure_and_plain_values(checkpoint):
  ck = checkpoint
  sd = ck["state_dict"]
  assert type(sd) is collections.OrderedDict
  assert list(sd) == ["0.weight", "0.bias", "1.running_mean", "1.running_var",
                      "1.num_batches_tracked"]
  counter = sd["1.num_batches_tracked"]
  assert counter.shape == () and counter.dtype == np.int64 and counter == 1
  assert sd["0.weight"].shape == (2, 3) and sd["0.weight"].dtype == np.float32
  # The optimizer: int-keyed per-parameter state, 0-d float32 steps, plain param_groups.
  opt = ck["optimizer"]
  assert set(opt) == {"state", "param_groups"} and set(opt["state"]) == {0, 1}
  for st in opt["state"].values():
    assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
    assert st["step"].shape == () and st["step"].dtype == np.float32 and st["step"] == 1.0
  assert opt["state"][0]["exp_avg"].shape == (2, 3) and opt["state"][1]["exp_avg"].shape == (2,)
  (group,) = opt["param_groups"]
  assert group["params"] == [0, 1] and group["betas"] == (0.0, 0.999)
  assert type(group["betas"]) is tuple and group["lr"] == 2e-4 and group["eps"] == 1e-6
  assert group["amsgrad"] is False and group["foreach"] is None
  # torch.Size -> tuple; nn.Parameter -> its tensor; numpy scalars keep their type.
  assert type(ck["shape"]) is tuple and ck["shape"] == (2, 3, 4)
  np.testing.assert_array_equal(ck["param"], np.linspace(-1, 1, 5, dtype=np.float32))
  assert type(ck["best_FID"]) is np.float64 and ck["best_FID"] == 12.625
  assert type(ck["best_IS"]) is np.float32 and ck["best_IS"] == 3.5
  assert ck["itr"] == 1234 and type(ck["itr"]) is int
  # The config: a torch.nn module as an inert attribute bag, and plain values.
  cfg = ck["config"]
  act = cfg["G_activation"]
  assert isinstance(act, torch_pickle.ModuleObject)
  assert type(act)._qualname == "torch.nn.modules.activation.ReLU"
  assert vars(act)["inplace"] is False and vars(act)["training"] is True
  assert not hasattr(act, "forward")                 # nothing of the real class
  assert cfg["names"] == ["G", "D"] and cfg["hier"] is True and cfg["resume_from"] is None
  assert cfg["G_lr"] == 1e-4 and cfg["G_ch"] == 64


def test_checkpoint_dtypes_and_views_against_numpy(checkpoint):
  """Values the generator chose exactly, rebuilt here with numpy alone."""
  ck = checkpoint
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  for key, want in (("transposed", base.T), ("columns", base[1:, 1::2]),
                    ("expanded", np.broadcast_to(np.arange(3, dtype=np.float32), (2, 3)))):
    assert ck[key].dtype == np.float32 and ck[key].flags.c_contiguous, key
    np.testing.assert_array_equal(ck[key], want, err_msg=key)
  np.testing.assert_array_equal(ck["int64"], np.array([-(2 ** 40), 0, 7, 2 ** 62], np.int64))
  assert ck["int64"].dtype == np.int64
  assert ck["bf16"].dtype == np.float32          # bfloat16 widened exactly
  np.testing.assert_array_equal(ck["bf16"], [1.0, -2.5, 3.140625, 0.0])
  assert ck["half"].dtype == np.float16
  np.testing.assert_array_equal(ck["half"], np.linspace(-2, 2, 6).astype(np.float16))
  assert ck["scalar"].shape == () and ck["scalar"] == -0.75
  # numpy arrays: Fortran order and a big-endian dtype come back as values, native order.
  np.testing.assert_array_equal(ck["grid"], np.arange(6.0).reshape(2, 3))
  assert ck["big_endian"].dtype == np.dtype("=i4")
  np.testing.assert_array_equal(ck["big_endian"], [0, 1, 2])


def test_both_formats_and_file_objects_agree():
  zip_path = os.path.join(FIXTURES, "tiny_checkpoint_zip.pt")
  a = flat_arrays(torch_pickle.load(zip_path))
  b = flat_arrays(torch_pickle.load(os.path.join(FIXTURES, "tiny_checkpoint_legacy.pt")))
  with open(zip_path, "rb") as f:
    c = flat_arrays(torch_pickle.load(io.BytesIO(f.read()), "mine.pt"))
  assert sorted(a) == sorted(b) == sorted(c)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a[k], c[k])


# ----------------------------------------------------------------------------
# Archives built byte by byte.

class _Op:
  """A tiny pickle (protocol 2) writer for hand-built torch-style archives."""

  @staticmethod
  def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

  @staticmethod
  def s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b

  @staticmethod
  def i(v):
    return b"J" + struct.pack("<i", v)

  @classmethod
  def ints(cls, vals):
    return b"(" + b"".join(cls.i(v) for v in vals) + b"t"

  @classmethod
  def tensor(cls, key, numel, offset, size, stride, storage="FloatStorage"):
    return (cls.glob("torch._utils", "_rebuild_tensor_v2") + b"(" +
            b"(" + cls.s("storage") + cls.glob("torch", storage) + cls.s(key) + cls.s("cpu") +
            cls.i(numel) + b"t" + b"Q" + cls.i(offset) + cls.ints(size) + cls.ints(stride) +
            b"\x89" + cls.glob("collections", "OrderedDict") + b")R" + b"t" + b"R")


def _build_archive(path, pkl: bytes, storages: dict):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", b"little")
    zf.writestr("archive/version", b"3\n")
    for key, arr in storages.items():
      zf.writestr(f"archive/data/{key}", np.ascontiguousarray(arr).astype("<f4").tobytes())


def test_reader_on_hand_built_torchscript_archive(tmp_path):
  """A zip we write ourselves: a TorchScript-like object tree with strided tensor views."""
  o = _Op
  data = np.arange(24, dtype=np.float32)
  layer = (o.glob("__torch__.m", "Layer") + b")\x81" + b"}" + b"(" +
           o.s("weight") + o.tensor("0", 24, 0, (2, 3, 4), (12, 4, 1)) +
           o.s("transposed") + o.tensor("0", 24, 0, (4, 3), (1, 4)) +
           o.s("row") + o.tensor("0", 24, 16, (4,), (1,)) +
           o.s("stride") + o.i(2) +
           o.s("padding") + o.glob("torch.jit._pickle", "build_intlist") + b"(" +
           o.ints((0, 3)) + b"tR" + b"ub")
  root = (b"\x80\x02" + o.glob("__torch__.m", "Root") + b")\x81" + b"}" + b"(" +
          o.s("net") + layer + o.s("training") + b"\x89" + b"ub.")
  path = str(tmp_path / "script.pt")
  _build_archive(path, root, {"0": data})
  obj = torch_pickle.load(path)
  assert isinstance(obj, torch_pickle.ScriptObject)
  net = obj.net
  np.testing.assert_array_equal(net.weight, data.reshape(2, 3, 4))
  np.testing.assert_array_equal(net.transposed, data[:12].reshape(3, 4).T)
  np.testing.assert_array_equal(net.row, data[16:20])
  assert net.stride == 2 and net.padding == [0, 3] and obj.training is False
  # Dotted access through the module tree, with the missing part named.
  assert torch_pickle.get_attr(obj, "net.stride") == 2
  with pytest.raises(ValueError, match="'net.conv'.*'conv'"):
    torch_pickle.get_attr(obj, "net.conv")


def test_reader_refuses_foreign_globals_and_bad_views(tmp_path):
  o = _Op
  evil = b"\x80\x02" + o.glob("os", "system") + b"(" + o.s("echo hi") + b"tR."
  path = str(tmp_path / "evil.pt")
  _build_archive(path, evil, {})
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    torch_pickle.load(path)
  # A view running past the end of its storage.
  bad = b"\x80\x02" + o.tensor("0", 4, 2, (4,), (1,)) + b"."
  path = str(tmp_path / "bad.pt")
  _build_archive(path, bad, {"0": np.zeros(4)})
  with pytest.raises(pickle.UnpicklingError, match="past"):
    torch_pickle.load(path)


def _gather(data, offset, size, stride):
  """Element [i, j, ...] = data[offset + i*stride[0] + j*stride[1] + ...], by index arithmetic."""
  idx = np.full(size, offset)
  for axis, st in enumerate(stride):
    idx = idx + st * np.indices(size)[axis]
  return data[idx]


def test_strided_views_and_0d_tensors(tmp_path):
  o = _Op
  data = np.arange(30, dtype=np.float32) * 1.5
  views = [(7, (), ()),               # 0-d: one element
           (1, (3, 4), (1, 5)),       # column-major, offset 1
           (2, (2, 3), (12, 3)),      # gaps in both dimensions
           (4, (3, 2), (0, 1)),       # stride 0 (an expand)
           (29, (1, 1, 1), (9, 9, 9)),  # the last element
           (0, (0, 5), (5, 1))]       # empty
  pkl = b"\x80\x02(" + b"".join(o.tensor("0", 30, *v) for v in views) + b"t."
  path = str(tmp_path / "views.pt")
  _build_archive(path, pkl, {"0": data})
  got = torch_pickle.load(path)
  assert len(got) == len(views)
  for a, (offset, size, stride) in zip(got, views):
    assert a.shape == size and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, _gather(data, offset, size, stride))
  assert got[0] == data[7]


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "getattr"),
    ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_refused_globals_are_named_and_never_called(tmp_path, module, name):
  marker = tmp_path / "ran"
  o = _Op
  pkl = (b"\x80\x02" + o.glob(module, name) + b"(" + o.s(f"touch {marker}") + b"tR.")
  path = str(tmp_path / "evil.pt")
  _build_archive(path, pkl, {})
  with pytest.raises(torch_pickle.TorchFileError) as e:
    torch_pickle.load(path)
  msg = str(e.value)
  assert path in msg and "refusing" in msg
  alias = {"__builtin__": "builtins"}.get(module, module)
  assert f"{alias}.{name}" in msg
  assert not marker.exists()


@pytest.mark.parametrize("what, pkl, match", [
    ("object dtype", _Op.glob("numpy", "dtype") + b"(" + _Op.s("O") + b"\x89\x88tR",
     "not a plain numeric"),
    ("non-latin1 bytes", _Op.glob("_codecs", "encode") + b"(" + _Op.s("x") + _Op.s("rot13")
     + b"tR", "only latin1"),
    ("unknown storage", _Op.tensor("0", 1, 0, (1,), (1,), storage="QInt8Storage"),
     "unsupported tensor storage"),
    ("attributes set on a tensor", _Op.tensor("0", 1, 0, (1,), (1,)) + b"}b",
     "may not set the state"),
    ("persistent id of another kind", b"(" + _Op.s("module") + _Op.glob("collections",
     "OrderedDict") + b"tQ", "unsupported persistent id"),
])
def test_malformed_values_are_refused(tmp_path, what, pkl, match):
  path = str(tmp_path / "odd.pt")
  _build_archive(path, b"\x80\x02" + pkl + b".", {"0": np.zeros(1)})
  with pytest.raises(torch_pickle.TorchFileError, match=match):
    torch_pickle.load(path)


# ----------------------------------------------------------------------------
# Files that are not (whole) torch files.

def test_not_torch_files(tmp_path):
  cases = {
      "empty.pt": (b"", "empty file"),
      "garbage.pt": (np.random.default_rng(0).bytes(300), "not a torch file"),
      "text.pt": (b"hello, world\n" * 20, "not a torch file"),
      "plain.pkl": (pickle.dumps({"a": [1, 2]}, protocol=2), "not a torch file"),
  }
  for name, (data, match) in cases.items():
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(torch_pickle.TorchFileError, match=match) as e:
      torch_pickle.load(str(path))
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)
  zip_path = str(tmp_path / "other.zip")
  with zipfile.ZipFile(zip_path, "w") as zf:
    zf.writestr("readme.txt", "not a checkpoint")
  with pytest.raises(torch_pickle.TorchFileError, match="without data.pkl"):
    torch_pickle.load(zip_path)
  with pytest.raises(FileNotFoundError):
    torch_pickle.load(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_raise_torch_file_error(tmp_path, fmt):
  """Every cut of a real file fails with TorchFileError naming the file, nothing else."""
  data = open(os.path.join(FIXTURES, f"tiny_checkpoint_{fmt}.pt"), "rb").read()
  path = tmp_path / "cut.pt"
  for n in list(range(1, len(data), 61)) + [len(data) - 1]:
    path.write_bytes(data[:n])
    with pytest.raises(torch_pickle.TorchFileError) as e:
      torch_pickle.load(str(path))
    assert str(path) in str(e.value), n
  path.write_bytes(data[:len(data) // 2])
  want = "truncated or damaged" if fmt == "zip" else "truncated"
  with pytest.raises(torch_pickle.TorchFileError, match=want):
    torch_pickle.load(str(path))


def _rewrite_zip(src: str, dst: str, drop: str | None = None) -> dict:
  with zipfile.ZipFile(src) as zf:
    entries = {i.filename: zf.read(i) for i in zf.infolist()}
  with zipfile.ZipFile(dst, "w") as zf:         # stored, not compressed
    for n, b in entries.items():
      if n != drop:
        zf.writestr(n, b)
  return entries


def test_damaged_zip_member_and_missing_storage(tmp_path):
  src = os.path.join(FIXTURES, "tiny_checkpoint_zip.pt")
  with zipfile.ZipFile(src) as zf:
    storages = [n for n in zf.namelist() if "/data/" in n]
    storage = max(storages, key=lambda n: zf.getinfo(n).file_size)
  missing = str(tmp_path / "missing.pt")
  _rewrite_zip(src, missing, drop=storage)
  with pytest.raises(torch_pickle.TorchFileError, match="missing tensor storage") as e:
    torch_pickle.load(missing)
  assert missing in str(e.value)
  flipped = str(tmp_path / "flipped.pt")
  entries = _rewrite_zip(src, flipped)
  raw = bytearray(open(flipped, "rb").read())
  raw[raw.index(entries[storage]) + 3] ^= 0xFF  # one byte of tensor data: a CRC mismatch
  open(flipped, "wb").write(bytes(raw))
  with pytest.raises(torch_pickle.TorchFileError, match="damaged") as e:
    torch_pickle.load(flipped)
  assert flipped in str(e.value)
