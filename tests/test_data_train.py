"""Short training runs (configs/tiny.py) fed by each tf.data source.

A run is mostly compilation of the tiny model (about a minute on a 2-core
CPU, ~10 s once conftest's compilation cache holds it). The folder and
CIFAR-10 runs use tiny's 10 classes, so they share one compiled program with
the other tiny runs of the session; ImageNet's 1,000 classes need their own
compilation, so that run is marked slow.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sagan_jax import data as data_lib
from sagan_jax.errors import DataError

@pytest.fixture
def config(tiny_config):
  """configs/tiny.py (conftest's tiny_config) cut to two steps."""
  c = tiny_config
  c.total_steps = 2
  c.checkpoint_every = 2
  c.log_every = 1
  c.sample_every = 0
  c.data.random_flip = True
  return c


def make_folder(root, n_classes=10, per_class=2):
  rng = np.random.default_rng(0)
  for k in range(n_classes):
    os.makedirs(f"{root}/class{k}")
    for i in range(per_class):
      img = rng.integers(0, 255, (20 + 3 * i, 27 + k, 3), dtype=np.uint8)
      Image.fromarray(img).save(f"{root}/class{k}/{i}.{'png' if i % 2 else 'jpg'}")


@pytest.fixture
def recorded(monkeypatch):
  """Records every batch the training loop takes from the source."""
  batches, sources = [], []
  real = data_lib.make_source

  def wrapped(config, **kw):
    src = real(config, **kw)
    sources.append(src)
    inner = src.iterator

    def gen():
      for b in inner:
        batches.append(b)
        yield b

    src.iterator = gen()
    return src

  monkeypatch.setattr(data_lib, "make_source", wrapped)
  return batches, sources


def run(config, workdir):
  from sagan_jax import train
  return train.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("source", ["folder", "cifar10",
                                    pytest.param("imagenet2012", marks=pytest.mark.slow)])
def test_short_training_run(source, tmp_path, recorded, config):
  batches, sources = recorded
  c = config
  if source == "folder":
    make_folder(tmp_path / "images")
    c.data.source, c.data.dir, c.model.num_classes = "folder", str(tmp_path / "images"), 10
    state = run(c, tmp_path / "work")
  else:
    c.data.source, c.data.name = "tfds", source
    c.model.num_classes = 10 if source == "cifar10" else 1000
    with tfds.testing.mock_data(num_examples=16):
      state = run(c, tmp_path / "work")
  assert int(state.step) == c.total_steps
  assert sources[0].name.endswith(source if source != "folder" else "images")
  assert len(batches) == c.total_steps * c.optim.n_critic
  for b in batches:
    assert b["image"].shape == (c.batch_size, 16, 16, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and (b["label"] < c.model.num_classes).all()
  assert os.path.isdir(tmp_path / "work" / "checkpoints" / str(c.total_steps))


def test_class_mismatch_stops_training_with_the_value_to_set(tmp_path, config):
  make_folder(tmp_path / "images", n_classes=2, per_class=2)
  c = config
  c.data.source, c.data.dir, c.model.num_classes = "folder", str(tmp_path / "images"), 10
  with pytest.raises(DataError, match="--config.model.num_classes=2"):
    run(c, tmp_path / "work")
  assert not os.path.exists(tmp_path / "work" / "checkpoints" / "2")


def test_folder_config_trains_and_resumes_from_the_command_line(tmp_path):
  """configs/folder.py as the README shows it: train, rerun, resume."""
  import subprocess
  import sys
  from tests.test_cli import _env
  make_folder(tmp_path / "images", n_classes=3, per_class=3)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "sagan_jax.main", "--config", "configs/folder.py",
         f"--config.data.dir={tmp_path / 'images'}", "--workdir", str(tmp_path / "work"),
         "--config.model.resolution=16", "--config.model.ch=8", "--config.model.g_attention=(8,)",
         "--config.model.d_attention=(8,)", "--config.batch_size=4", "--config.log_every=1",
         "--config.sample_every=0", "--config.data.shuffle_buffer=16"]
  first = subprocess.run(cmd + ["--config.total_steps=2"], cwd=root, env=_env(),
                         capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "step 2/2" in first.stdout
  second = subprocess.run(cmd + ["--config.total_steps=3"], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from" in second.stdout and "step 3/3" in second.stdout
  assert os.path.isdir(tmp_path / "work" / "checkpoints" / "3")


@pytest.mark.slow
def test_imagenet128_config_end_to_end_on_mock_data(tmp_path, recorded):
  """configs/imagenet128.py itself (tiny width) on tfds mock imagenet2012."""
  from tests.conftest import load_config
  c = load_config("imagenet128", total_steps=2, batch_size=4, checkpoint_every=2, log_every=1,
                  sample_every=0, model__ch=8, model__dtype="float32")
  c.data.shuffle_buffer = 16
  with tfds.testing.mock_data(num_examples=8):
    state = run(c, tmp_path / "work")
  batches, _ = recorded
  assert int(state.step) == 2
  assert batches[0]["image"].shape == (4, 128, 128, 3)
  assert os.path.isdir(tmp_path / "work" / "checkpoints" / "2")
