"""summaries: TensorBoard event files without TensorFlow, read back record by record."""

import io
import os
import struct
import subprocess
import sys
import types

import numpy as np
from PIL import Image

from sagan_jax import summaries
from tests.conftest import ROOT


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit: the test's own reference."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path):
  """The events of a TFRecord file, every length and data CRC checked."""
  from tensorboard.compat.proto import event_pb2
  out = []
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    head = data[i:i + 8]
    (n,), (head_crc,) = struct.unpack("<Q", head), struct.unpack("<I", data[i + 8:i + 12])
    assert head_crc == _masked(_crc32c(head))
    body = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == _masked(_crc32c(body))
    out.append(event_pb2.Event.FromString(body))
    i += 16 + n
  return out


def test_known_crc32c_value():
  assert _crc32c(b"123456789") == 0xE3069283   # the CRC-32C check value


def test_scalars_images_and_hparams_read_back(tmp_path):
  w = summaries.writer_factory(str(tmp_path))(True)
  w.write_hparams({"optim.d_lr": 4e-4, "data.source": "digits"})
  w.write_scalars(5, {"d_loss": 1.5, "g_loss": -0.25})
  grid = np.random.default_rng(0).integers(0, 256, (1, 12, 20, 3)).astype(np.uint8)
  w.write_images(10, {"samples_ema": grid})
  w.close()
  (name,) = os.listdir(tmp_path)
  assert name.startswith("events.out.tfevents.")
  events = _records(tmp_path / name)
  assert events[0].file_version == "brain.Event:2"
  assert events[1].summary.value[0].metadata.plugin_data.plugin_name == "hparams"
  assert events[2].step == 5
  assert {v.tag: v.simple_value for v in events[2].summary.value} == {"d_loss": 1.5,
                                                                     "g_loss": -0.25}
  img = events[3].summary.value[0]
  assert events[3].step == 10 and img.tag == "samples_ema"
  assert (img.image.height, img.image.width, img.image.colorspace) == (12, 20, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.image.encoded_image_string))),
                                grid[0])


def test_non_chief_writes_no_file(tmp_path):
  w = summaries.writer_factory(str(tmp_path))(False)
  w.write_scalars(1, {"a": 1.0})
  w.write_images(1, {"s": np.zeros((1, 2, 2, 3), np.uint8)})
  w.close()
  assert os.listdir(tmp_path) == []


def test_remote_workdir_uses_clus_writer(monkeypatch):
  calls = []
  fake = types.ModuleType("clu")
  fake.metric_writers = types.SimpleNamespace(
      create_default_writer=lambda *a, **k: calls.append((a, k)) or "clu-writer")
  monkeypatch.setitem(sys.modules, "clu", fake)
  assert summaries.writer_factory("gs://bucket/run")(False) == "clu-writer"
  assert calls == [(("gs://bucket/run",), {"just_logging": True, "asynchronous": False})]


def test_writing_imports_no_tensorflow(tmp_path):
  code = ("import sys, numpy as np; from sagan_jax import summaries; "
          f"w = summaries.writer_factory({str(tmp_path)!r})(True); "
          "w.write_hparams({'a': 1}); w.write_scalars(1, {'x': 2.0}); "
          "w.write_images(1, {'s': np.zeros((1, 4, 4, 3), np.uint8)}); w.close(); "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "False"
