"""Every user mistake: one `error:` line on stderr, exit status 2, no traceback, nothing written.

`ROWS` is the table of mistakes across the four commands, each run as a user
runs it (`python -m sagan_jax.<command> ...`, a separate process; the rows
run a few at a time). `VALIDATE_ROWS` covers every range check of
`config_base.validate` in this process (each one also fails through the CLI
the same way, as the `main` rows with a bad value show).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sagan_jax import config_base, errors, preflight
from tests.conftest import ROOT, load_config
from tests.test_cli import _env


@dataclasses.dataclass(frozen=True)
class Row:
  command: str            # sagan_jax.<command>
  args: tuple[str, ...]   # {d}: the fixtures folder, {wd}: this row's (fresh) workdir
  expect: str             # a fragment of the error message
  devices: int = 1        # CPU devices the process sees


TINY = ("--config", "configs/tiny.py", "--workdir", "{wd}")
FOLDER = ("--config", "configs/folder.py", "--workdir", "{wd}", "--config.model.resolution=16",
          "--config.model.g_attention=(8,)", "--config.model.d_attention=(8,)")
SAMPLES = "--samples={d}/samples.npz"

ROWS = {
    # --- main: the config file and its overrides (found while parsing the flags)
    "config file missing": Row("main", ("--config", "{d}/nope.py", "--workdir", "{wd}"),
                               "config file '{d}/nope.py' does not exist"),
    "config file unreadable": Row("main", ("--config", "{d}/a_folder", "--workdir", "{wd}"),
                                  "cannot read config file '{d}/a_folder': Is a directory"),
    "config syntax error": Row("main", ("--config", "{d}/syntax.py", "--workdir", "{wd}"),
                               "has a syntax error at line 3"),
    "config without get_config": Row("main", ("--config", "{d}/noget.py", "--workdir", "{wd}"),
                                     "has no get_config() function"),
    "config variant it lacks": Row("main", ("--config", "configs/cifar10.py:big", "--workdir",
                                            "{wd}"), "has no variants (got ':big')"),
    "unknown variant": Row("main", ("--config", "configs/tiny.py:big", "--workdir", "{wd}"),
                           "configs/tiny.py:big: unknown variant; use one of ['baseline'"),
    "unknown field": Row("main", TINY + ("--config.model.chanels=8",),
                         "no field 'model.chanels'; did you mean model.ch?"),
    "wrong type": Row("main", TINY + ("--config.batch_size=abc",), "--config.batch_size=abc"),
    "missing --workdir": Row("main", ("--config", "configs/tiny.py"),
                             "--workdir must have a value"),
    "stray argument": Row("main", TINY + ("extra",), "unexpected arguments: ['extra']"),
    # --- main: values (config_base.validate; every range is in VALIDATE_ROWS)
    "batch size 0": Row("main", TINY + ("--config.batch_size=0",),
                        "config.batch_size=0 is invalid: must be a positive integer"),
    "attention at a size G lacks": Row("main", TINY + ("--config.model.g_attention=(5,)",),
                                       "feature-map sizes of this model: [8, 16]"),
    "adam beta2 out of range": Row("main", TINY + ("--config.optim.beta2=1.5",),
                                   "config.optim.beta2=1.5 is invalid: must be in [0, 1)"),
    "unknown on_nan": Row("main", TINY + ("--config.on_nan=ignore",),
                          "config.on_nan='ignore' is invalid"),
    "batch not divisible by the devices": Row("main", TINY + ("--config.batch_size=6",),
                                              "not divisible by the 4 devices", devices=4),
    # --- main: the workdir
    "workdir is a file": Row("main", ("--config", "configs/tiny.py", "--workdir",
                                      "{d}/a_file"), "--workdir {d}/a_file is a file"),
    "workdir not writable": Row("main", ("--config", "configs/tiny.py", "--workdir",
                                         "{d}/read_only/run"), "is not writable"),
    # --- main: the data
    "image folder missing": Row("main", FOLDER + ("--config.data.dir={d}/no_images",),
                                "the image folder {d}/no_images does not exist"),
    "one class for a 10-class model": Row("main", FOLDER + ("--config.data.dir={d}/one_class",
                                                            "--config.model.num_classes=10"),
                                          "has only one class"),
    "TFDS dataset not prepared": Row("main", ("--config", "configs/cifar10.py", "--workdir",
                                              "{wd}", "--config.data.dir={d}/no_tfds"),
                                     "TFDS dataset 'cifar10' is not prepared in {d}/no_tfds"),
    # --- main: small data and fine-tuning (docs/own_data.md)
    "unknown augmentation": Row("main", TINY + ("--config.augment.policy=color,rotate",),
                                "config.augment.policy='color,rotate' is invalid: unknown op"),
    "classes naming a class the source lacks": Row(
        "main", TINY + ("--config.data.classes=(3,12)", "--config.model.num_classes=2"),
        "names class 12, but the digits data has 10 classes"),
    "examples_per_class beyond the smallest class": Row(
        "main", TINY + ("--config.data.examples_per_class=200",),
        "config.data.examples_per_class=200 but class"),
    "init_from missing": Row("main", TINY + ("--config.init_from={d}/nope_run",),
                             "config.init_from='{d}/nope_run': {d}/nope_run does not exist"),
    "init_from without checkpoints": Row("main", TINY + ("--config.init_from={d}/empty",),
                                         "no checkpoints in {d}/empty/checkpoints"),
    "init_from of another architecture": Row(
        "main", TINY + ("--config.init_from={d}/ch8_run",),
        "the architectures differ"),
    "init_class_map of the wrong length": Row(
        "main", TINY + ("--config.init_from={d}/ch8_run", "--config.init_class_map=(1,2)"),
        "config.init_class_map=(1, 2) is invalid"),
    "init_class_map out of range": Row(
        "main", TINY + ("--config.init_from={d}/ch8_run",
                        "--config.init_class_map=(0,1,2,3,4,5,6,7,8,12)"),
        "class 12 does not exist in {d}/ch8_run"),
    "freeze_d_blocks beyond D's depth": Row("main", TINY + ("--config.freeze_d_blocks=4",),
                                            "must be an integer in [0, 3]"),
    # --- sample
    "sample: workdir missing": Row("sample", ("--workdir", "{wd}", "--out", "{wd}.png"),
                                   "--workdir {wd} does not exist"),
    "sample: no checkpoints": Row("sample", ("--workdir", "{d}/empty", "--out", "{wd}.png"),
                                  "no checkpoints in {d}/empty/checkpoints: train first"),
    "sample: --step that does not exist": Row(
        "sample", ("--workdir", "{d}/fake_run", "--out", "{wd}.png", "--step=7"),
        "--step 7: no checkpoint of that step in {d}/fake_run/checkpoints (available: [2])"),
    "sample: --step not a number": Row("sample", ("--workdir", "{d}/fake_run", "--step=last",
                                                  "--out", "{wd}.png"), "--step=last"),
    "sample: no output named": Row("sample", ("--workdir", "{d}/fake_run"), "give --out"),
    # --- evaluate
    "evaluate: .npz without images": Row("evaluate", ("--samples={d}/no_images.npz",),
                                         "needs an array 'images'"),
    "evaluate: float images": Row("evaluate", ("--samples={d}/float.npz",),
                                  "must be uint8 in [0, 255], got float32 in [-1, 1]"),
    "evaluate: images not NHWC RGB": Row("evaluate", ("--samples={d}/gray.npz",),
                                         "must be [N, H, W, 3] (RGB), got (4, 16, 16)"),
    "evaluate: values beyond 255": Row("evaluate", ("--samples={d}/big.npz",),
                                       "values must be in [0, 255], got [0, 300]"),
    "evaluate: samples file missing": Row("evaluate", ("--samples={d}/nope.npz",),
                                          "--samples {d}/nope.npz: no such file"),
    "evaluate: reference stats of another dimension": Row(
        "evaluate", (SAMPLES, "--ref_stats={d}/ref_64.npz"),
        "mu (64,) and sigma (64, 64) are not Inception pool3 statistics"),
    "evaluate: Inception weights missing": Row("evaluate", (SAMPLES, "--weights={d}/nope.pt"),
                                               "--weights {d}/nope.pt: no such file"),
    "evaluate: Inception weights of the wrong file": Row(
        "evaluate", (SAMPLES, "--weights={d}/not_weights.pth"), "not usable Inception weights"),
    "evaluate: --samples and --workdir": Row("evaluate", (SAMPLES, "--workdir={d}/fake_run"),
                                             "give exactly one of --samples"),
    "evaluate: --num_samples -1": Row("evaluate", (SAMPLES, "--num_samples=-1"),
                                      "--num_samples=-1 is invalid: must be a positive integer"),
    "evaluate: labels count differs from images": Row(
        "evaluate", ("--samples={d}/labels_3_of_4.npz",), "3 'labels' for 4 'images'"),
    "evaluate: unknown metric": Row("evaluate", (SAMPLES, "--metrics=fid,lpips"),
                                    "--metrics='fid,lpips' is invalid: give a comma list from "
                                    "fid,is,kid,prdc,ifid (unknown: lpips)"),
    "evaluate: negative k": Row("evaluate", (SAMPLES, "--metrics=prdc", "--pr_k=-1"),
                                "--pr_k=-1 is invalid: must be a positive integer"),
    "evaluate: KID subsets of one": Row("evaluate", (SAMPLES, "--kid_subset_size=1"),
                                        "--kid_subset_size=1 is invalid: must be an integer >= 2"),
    "evaluate: resize mode unknown": Row("evaluate", (SAMPLES, "--resize=lanczos"),
                                         "value should be one of <bilinear|tf1>"),
    "evaluate: --best with --samples": Row("evaluate", (SAMPLES, "--best"),
                                           "--best samples from a run: use it with --workdir"),
    "evaluate: intra-FID of unlabelled samples": Row(
        "evaluate", (SAMPLES, "--metrics=fid,ifid"), "--metrics=ifid needs labelled samples"),
    "evaluate: digits split that does not exist": Row(
        "evaluate", ("--compute_ref_stats={wd}.npz", "--config", "configs/digits.py",
                     "--split=test"),
        "--split='test' is invalid: the embedded digits have one set"),
    "evaluate: digits score, no Inception weights": Row(
        "evaluate", ("--samples={d}/digits.npz", "--digits_score", "--weights={d}/nope.pt"),
        "For the digits score alone add --noinception"),
    # --- describe
    "describe: config file missing": Row("describe", ("--config", "{d}/nope.py"),
                                         "config file '{d}/nope.py' does not exist"),
    "describe: unknown field": Row("describe", ("--config", "configs/tiny.py",
                                                "--config.model.attention=8"),
                                   "no field 'model.attention'"),
    "describe: bad value": Row("describe", ("--config", "configs/tiny.py", "--nocompile",
                                            "--config.model.ch=12"),
                               "config.model.ch=12 is invalid: must be a multiple of 8"),
    "describe: batch 0": Row("describe", ("--config", "tiny", "--nocompile", "--batch=0"),
                             "--batch=0 is invalid: must be a positive integer"),
    "describe: negative mesh": Row("describe", ("--config", "tiny", "--mesh=-1"),
                                   "--mesh=-1 is invalid: must be an integer >= 0"),
    "process id beyond the process count": Row("main", TINY + ("--num_processes=2",
                                                             "--process_id=2"),
                                                "--process_id=2 is invalid: must be below "
                                                "--num_processes=2"),
    "process count 0": Row("main", TINY + ("--num_processes=0",), "--num_processes"),
    # --- every command: --config by name
    "unknown built-in config name": Row("main", ("--config", "digitz", "--workdir", "{wd}"),
                                        "--config 'digitz': no such file, and not a built-in"),
    # --- sample: flag ranges
    "sample: negative sample count": Row(
        "sample", ("--workdir", "{d}/fake_run", "--npz", "{wd}.npz", "--num_samples", "-3"),
        "--num_samples=-3 is invalid: must be a positive integer"),
    "sample: per_class 0": Row("sample", ("--workdir", "{d}/fake_run", "--out", "{wd}.png",
                                          "--per_class=0"), "--per_class=0 is invalid"),
    "sample: truncation 0": Row("sample", ("--workdir", "{d}/fake_run", "--out", "{wd}.png",
                                           "--truncation=0"), "--truncation=0.0 is invalid"),
    # --- convert
    "convert: unknown framework": Row("convert", ("--from", "no_such_framework", "--weights",
                                                  "{d}", "--config", "tiny", "--workdir",
                                                  "{wd}"), "--from"),
    "convert: weights folder missing": Row("convert", ("--from", "studiogan", "--weights",
                                                       "{d}/nope", "--config", "tiny",
                                                       "--workdir", "{wd}"),
                                           "--weights {d}/nope: not a directory"),
}


def _make_fixtures(d: str) -> bool:
  """The files the rows point at; returns whether a read-only folder could be mounted."""
  def write(name, text):
    with open(os.path.join(d, name), "w") as f:
      f.write(text)

  write("syntax.py", "from sagan_jax import config_base\n\ndef get_config(:\n  pass\n")
  write("noget.py", "from sagan_jax import config_base\nc = config_base.base_config()\n")
  write("a_file", "not a directory\n")
  write("not_weights.pth", "these are not the weights you are looking for\n")
  for sub in ("a_folder", "empty", "no_tfds", "fake_run/checkpoints/2", "one_class/cats",
              "read_only"):
    os.makedirs(os.path.join(d, sub))
  for i in range(3):
    Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(
        os.path.join(d, "one_class", "cats", f"{i}.png"))
  rng = np.random.default_rng(0)
  np.savez(os.path.join(d, "samples.npz"), images=rng.integers(0, 256, (4, 16, 16, 3),
                                                               dtype=np.uint8))
  np.savez(os.path.join(d, "no_images.npz"), pictures=np.zeros((4, 16, 16, 3), np.uint8))
  np.savez(os.path.join(d, "float.npz"), images=np.linspace(-1, 1, 4 * 16 * 16 * 3,
                                                            dtype=np.float32).reshape(
                                                                4, 16, 16, 3))
  np.savez(os.path.join(d, "gray.npz"), images=np.zeros((4, 16, 16), np.uint8))
  np.savez(os.path.join(d, "big.npz"), images=np.arange(4 * 16 * 16 * 3).reshape(
      4, 16, 16, 3) % 301)
  np.savez(os.path.join(d, "ref_64.npz"), mu=np.zeros(64), sigma=np.eye(64))
  np.savez(os.path.join(d, "labels_3_of_4.npz"), images=np.zeros((4, 16, 16, 3), np.uint8),
           labels=np.arange(3))
  np.savez(os.path.join(d, "digits.npz"), images=np.zeros((10, 16, 16, 3), np.uint8),
           labels=np.arange(10))
  _save_run(os.path.join(d, "ch8_run"), model__ch=8)
  # We run as root in CI containers: permissions do not stop root, a read-only mount does.
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                      os.path.join(d, "read_only")], capture_output=True)
  return r.returncode == 0


def _save_run(path: str, **overrides) -> None:
  """A verified checkpoint of a fresh tiny state (another architecture for init_from)."""
  from sagan_jax import checkpointing, parallel
  from sagan_jax import state as state_lib
  config = load_config("tiny", **overrides)
  state = state_lib.create_state(state_lib.make_models(config), config, parallel.make_mesh(1))
  ckpt = checkpointing.Checkpointer(path, config)
  ckpt.save(2, state)
  ckpt.finish()
  ckpt.close()


def _listing(path: str) -> list[str]:
  """Everything under the fixtures folder but the rows' own workdirs (`wd_*`, which rows
  running at the same time may create and remove; each row checks its own)."""
  out = []
  for root, dirs, files in os.walk(path):
    if root == path:
      dirs[:] = [n for n in dirs if not n.startswith("wd_")]
      files = [n for n in files if not n.startswith("wd_")]
    out += [os.path.relpath(os.path.join(root, n), path) for n in dirs + files]
  return sorted(out)


def _run(row: Row, d: str, wd: str) -> dict:
  fill = lambda s: s.format(d=d, wd=wd)  # noqa: E731
  env = {**_env(), "SAGAN_JAX_CACHE": d + "_cache"}
  if row.devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={row.devices}"
  before, t0 = _listing(d), time.time()
  p = subprocess.run([sys.executable, "-m", f"sagan_jax.{row.command}",
                      *map(fill, row.args)], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  return {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout,
          "expect": fill(row.expect), "wd_exists": os.path.exists(wd) or bool(glob.glob(wd + ".*")),
          "fixtures_changed": before != _listing(d), "seconds": time.time() - t0}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """All rows, run 3 at a time (each is mostly interpreter start-up and imports)."""
  d = str(tmp_path_factory.mktemp("bad_input"))
  read_only = _make_fixtures(d)
  rows = {k: r for k, r in ROWS.items() if read_only or "read_only" not in " ".join(r.args)}
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {k: pool.submit(_run, r, d, os.path.join(d, "wd_" + str(i)))
               for i, (k, r) in enumerate(rows.items())}
    out = {k: f.result() for k, f in futures.items()}
  print("seconds per row:", {k: round(v["seconds"], 1) for k, v in out.items()})
  if read_only:
    subprocess.run(["umount", "--lazy", os.path.join(d, "read_only")], check=True)
  return out


def test_the_table_has_at_least_25_distinct_mistakes_over_every_command():
  assert len(ROWS) >= 25
  assert {r.command for r in ROWS.values()} == {"main", "sample", "evaluate", "describe",
                                                "convert"}


@pytest.mark.parametrize("name", list(ROWS))
def test_mistake_gives_one_clear_error(results, name):
  if name not in results:
    pytest.skip("cannot mount a read-only filesystem here (needs root)")
  r = results[name]
  assert r["rc"] == 2, r
  # stderr is the message and nothing else (it may continue on more lines: a list of options)
  assert r["stderr"].startswith("error: ") and r["stderr"].count("error:") == 1, r["stderr"]
  assert r["expect"] in r["stderr"], (r["expect"], r["stderr"])
  assert "Traceback" not in r["stderr"] + r["stdout"]
  assert not r["wd_exists"] and not r["fixtures_changed"]   # nothing written


# ----------------------------------------------------------------------------
# Every range check of config_base.validate, in-process.

VALIDATE_ROWS = [
    ("total_steps", 0), ("batch_size", -8), ("log_every", 0), ("checkpoint_every", 0),
    ("keep_checkpoints", 0), ("sample_every", -1), ("eval_every", -1), ("loss", "wgan"),
    ("on_nan", "skip"), ("max_rollbacks", -1), ("model.resolution", 48), ("model.ch", 0),
    ("model.z_dim", 0), ("model.ch", 12), ("model.num_classes", -1),
    ("model.g_attention", (4,)), ("model.d_attention", (32,)), ("model.init", "xavier"),
    ("model.dtype", "float16"), ("model.sn_eps", 0.0), ("model.sn_init_iters", -1),
    ("model.bn_momentum", 1.0), ("model.bn_group_size", 3), ("optim.g_lr", 0.0),
    ("optim.d_lr", -1e-4), ("optim.eps", 0.0), ("optim.beta1", -0.5), ("optim.beta2", 1.0),
    ("optim.n_critic", 0), ("optim.schedule", "step"), ("optim.warmup_steps", 21),
    ("ema.decay", 1.0), ("ema.start_step", -1), ("data.source", "imagenet"),
    ("data.train_crop", "top"), ("eval.num_samples", 0), ("mesh.num_devices", -1),
    ("profile_steps", (5, 2)), ("model.d_ch", -1), ("model.conv_impl", "cudnn"),
    ("model.attention_impl", "flash"),
    ("augment.policy", "rotate"), ("augment.p", 1.5), ("augment.ada_target", 1.0),
    ("augment.ada_interval", 0), ("augment.ada_kimg", 0), ("optim.lecam_weight", -1.0),
    ("optim.lecam_decay", 1.0), ("data.examples_per_class", -1), ("data.classes", (1, 1)),
    ("freeze_d_blocks", 9), ("init_class_map", (1,)),
]


@pytest.mark.parametrize("field,value", VALIDATE_ROWS)
def test_validate_names_each_bad_field(field, value):
  config = load_config("tiny")
  node, leaf = config_base.field(config, field)
  node[leaf] = value
  with pytest.raises(errors.ConfigError, match=rf"config\.{field.replace('.', '[.]')}="):
    preflight.check_config(config)


@pytest.mark.parametrize("overrides,message", [
    ({"data.source": "folder", "data.dir": ""}, "config.data.dir='' is invalid"),
    ({"eval_every": 5, "eval.metric": "fid"}, "eval.ref_stats"),
    ({"eval_every": 5, "eval.metric": "digits", "model.num_classes": 3}, "one class per digit"),
    ({"augment.ada_target": 0.6}, "needs an augmentation policy"),
    ({"data.classes": (1, 2)}, "config.model.num_classes=10 is invalid"),
])
def test_validate_checks_fields_together(overrides, message):
  config = load_config("tiny", **{k.replace(".", "__"): v for k, v in overrides.items()})
  with pytest.raises(errors.ConfigError, match=message):
    preflight.check_config(config)
