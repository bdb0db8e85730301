"""The PyTorch checkpoint converters (sagan_jax.convert), without torch.

Synthetic state dicts with the peers' exact key names, order and shapes
(tests/peer_layouts.py) check where every tensor lands, on purpose-built
values; small real checkpoints written by the peers' own code
(tests/fixtures/convert/, made by tests/fixtures/make_convert_fixtures.py
with torch) check that the converted model computes what theirs computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import config_base, preflight
from sagan_jax.convert import build, common
from sagan_jax.errors import CheckpointError
from sagan_jax.models import layers
from tests import peer_layouts as pl
from tests.conftest import ROOT
from tests.fixtures import make_convert_fixtures as fx

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "convert")
SMALL = {"model.ch": 8, "model.z_dim": 8, "model.num_classes": 3}
BIGGAN = {**SMALL, "model.d_attention": (), "model.d_ch": 0}
STUDIOGAN = {**SMALL, "model.d_ch": 8}


def config(overrides):
  return config_base.load("configs/cifar10.py", overrides)


@pytest.fixture
def folder(tmp_path, monkeypatch):
  """A checkpoint folder whose files `common.load` returns from memory: folder(name=obj, ...)."""
  files = {}
  monkeypatch.setattr(common, "load", lambda path: files[os.path.basename(path)])

  def make(**named):
    for name, obj in named.items():
      files[name] = obj
      (tmp_path / name).write_bytes(b"")
    return str(tmp_path)

  return make


def biggan_folder(folder, g=None, d=None, **more):
  return folder(**{"G.pth": g if g is not None else pl.biggan_g(),
                   "D.pth": d if d is not None else pl.biggan_d()}, **more)


def studiogan_folder(folder, g, d, g_extra=(), d_extra=(), when="best"):
  name = f"model={{}}-{when}-weights-step=40.pth"
  return folder(**{name.format("G"): {"state_dict": g, **dict(g_extra)},
                   name.format("D"): {"state_dict": d, "step": 40, **dict(d_extra)}})


# ---------------------------------------------------------------------------
# Where each tensor lands.

def _convert(kind, path, overrides, **kw):
  return build.convert(kind, path, config(overrides), **kw)


def test_linear_output_features_go_from_chw_to_hwc(folder):
  g = pl.biggan_g()
  w, b = g["linear.weight"], g["linear.bias"]        # [16 C, z]: feature c * 16 + h * 4 + w
  r = _convert("biggan-pytorch", biggan_folder(folder, g=g), BIGGAN)
  c = w.shape[0] // 16
  params = r.state.g["params"]["linear"]
  kernel = np.asarray(params["kernel"]).reshape(w.shape[1], 4, 4, c)   # our reshape: (H, W, C)
  bias = np.asarray(params["bias"]).reshape(4, 4, c)
  u = np.asarray(r.state.g["spectral"]["linear"]["sn"]["u"]).reshape(4, 4, c)
  u_src = g["linear.u0"][0]
  for ch, y, x in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (c - 1, 3, 2), (5, 2, 3)]:
    f = ch * 16 + y * 4 + x
    np.testing.assert_array_equal(kernel[:, y, x, ch], w[f])
    assert bias[y, x, ch] == b[f]
    assert u[y, x, ch] / u[0, 0, 0] == pytest.approx(u_src[f] / u_src[0], rel=1e-5)


def test_biggan_conv_layout_gain_offset_and_bn_statistics(folder):
  g = pl.biggan_g()
  g["blocks.1.0.bn2.gain.weight"][:] = 0.0                 # gain = 1 + 0
  r = _convert("biggan-pytorch", biggan_folder(folder, g=g), BIGGAN)
  p, bs = r.state.g["params"]["block2"], r.state.g["batch_stats"]["block2"]
  np.testing.assert_array_equal(p["bn2"]["gamma"], 1.0)
  np.testing.assert_allclose(p["bn1"]["gamma"], 1.0 + g["blocks.1.0.bn1.gain.weight"], rtol=1e-6)
  np.testing.assert_allclose(p["bn1"]["beta"], g["blocks.1.0.bn1.bias.weight"])
  np.testing.assert_allclose(bs["bn1"]["bn"]["var"], g["blocks.1.0.bn1.stored_var"])
  w = g["blocks.1.0.conv1.weight"]                          # [out, in, kh, kw]
  kernel = np.asarray(p["conv1"]["kernel"])                 # [kh, kw, in, out]
  for o, i, y, x in [(0, 0, 0, 0), (3, 5, 0, 2), (31, 30, 2, 1)]:
    assert kernel[y, x, i, o] == w[o, i, y, x]
  out = r.state.g["params"]
  assert float(out["attention16"]["gamma"]) == pytest.approx(0.3)
  np.testing.assert_allclose(out["bn_out"]["scale"], g["output_layer.0.gain"])
  np.testing.assert_allclose(r.state.d["params"]["embed"]["embedding"],
                             pl.biggan_d()["embed.weight"])


def _our_sigma(leaf: dict, u, eps):
  """What our evaluation divides this layer by: power_iteration with 0 iterations."""
  w_mat = leaf["embedding"] if "embedding" in leaf else layers.as_matrix(leaf["kernel"])
  return float(layers.power_iteration(jnp.asarray(w_mat), jnp.asarray(u), 0, eps)[2])


def test_our_eval_sigma_is_the_peers(folder):
  """BigGAN-PyTorch: one power iteration from u0, not kept; torch spectral_norm: u.W v."""
  g, d = pl.biggan_g(), pl.biggan_d()
  r = _convert("biggan-pytorch", biggan_folder(folder, g=g, d=d), BIGGAN)
  eps = r.config.model.sn_eps
  for ours, prefix, tree, src in [(("block1", "conv1"), "blocks.0.0.conv1", r.state.g, g),
                                  (("attention16", "o"), "blocks.1.1.o", r.state.g, g),
                                  (("embed",), "embed", r.state.d, d)]:
    w = src[f"{prefix}.weight"].astype(np.float64)
    w_mat = w.reshape(w.shape[0], -1)
    v = w_mat.T @ src[f"{prefix}.u0"][0]
    v /= np.linalg.norm(v)
    want = np.linalg.norm(w_mat @ v)
    leaf = tree["params"]
    sn = tree["spectral"]
    for k in ours:
      leaf, sn = leaf[k], sn[k]
    assert _our_sigma(leaf, sn["sn"]["u"], eps) == pytest.approx(want, rel=1e-5)

  sg, sdd = pl.studiogan_g(), pl.studiogan_d()
  r = _convert("studiogan", studiogan_folder(folder, sg, sdd), STUDIOGAN)
  w = sg["blocks.0.0.conv2d1.weight_orig"].astype(np.float64)
  want = sg["blocks.0.0.conv2d1.weight_u"] @ w.reshape(w.shape[0], -1) @ sg[
      "blocks.0.0.conv2d1.weight_v"]
  got = _our_sigma(r.state.g["params"]["block1"]["conv1"],
                   r.state.g["spectral"]["block1"]["conv1"]["sn"]["u"], 1e-6)
  assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("legacy", [False, True])
def test_studiogan_sn_class_tables_are_folded(folder, legacy):
  g, d = pl.studiogan_g(legacy=legacy), pl.studiogan_d()
  r = _convert("studiogan", studiogan_folder(folder, g, d), STUDIOGAN)
  table = "embed0" if legacy else "gain"
  w = g[f"blocks.3.0.bn1.{table}.weight_orig"].astype(np.float64)   # block 3 = our block3
  sigma = g[f"blocks.3.0.bn1.{table}.weight_u"] @ w @ g[f"blocks.3.0.bn1.{table}.weight_v"]
  want = 1.0 + (w if legacy else w.T) / sigma                        # ours: [classes, C]
  np.testing.assert_allclose(r.state.g["params"]["block3"]["bn1"]["gamma"], want, rtol=1e-5)
  # StudioGAN's attention is its own entry of `blocks`: block2's output goes to blocks.2.
  gamma = r.state.g["params"]["attention16"]["gamma"]
  assert float(gamma) == pytest.approx(float(g["blocks.2.0.sigma"][0]))
  assert r.config.model.d_relu_shortcut and r.config.model.bn_eps == 1e-4


def test_adam_moments_follow_the_layout(folder):
  g, d = pl.biggan_g(), pl.biggan_d()
  g_opt, g_keys = pl.adam_state(g, step=7)
  d_opt, _ = pl.adam_state(d, step=7, lr=4e-4)
  path = biggan_folder(folder, g=g, d=d, **{"G_optim.pth": g_opt, "D_optim.pth": d_opt})
  r = _convert("biggan-pytorch", path, BIGGAN)
  adam, schedule = r.state.opt["g"]
  assert int(adam.count) == 7 and int(schedule.count) == 7 and int(r.state.step) == 7
  i = g_keys.index("blocks.2.0.conv2.weight")
  np.testing.assert_allclose(adam.mu["block3"]["conv2"]["kernel"],
                             g_opt["state"][i]["exp_avg"].transpose(2, 3, 1, 0))
  np.testing.assert_allclose(adam.nu["block3"]["conv2"]["kernel"],
                             g_opt["state"][i]["exp_avg_sq"].transpose(2, 3, 1, 0))
  i = g_keys.index("blocks.0.0.bn1.gain.weight")             # the +1 is not in the moments
  np.testing.assert_allclose(adam.mu["block1"]["bn1"]["gamma"], g_opt["state"][i]["exp_avg"])
  assert r.config.optim.beta1 == 0.0 and r.config.optim.eps == 1e-8


def test_studiogan_table_moments_rescale_with_the_folded_sigma(folder):
  g, d = pl.studiogan_g(), pl.studiogan_d()
  g_opt, keys = pl.adam_state(g, step=3, betas=(0.5, 0.999), eps=1e-6)
  d_opt, _ = pl.adam_state(d, step=3, betas=(0.5, 0.999), eps=1e-6)
  r = _convert("studiogan", studiogan_folder(folder, g, d, {"optimizer": g_opt},
                                             {"optimizer": d_opt}), STUDIOGAN)
  prefix = "blocks.0.0.bn2.bias"
  w = g[f"{prefix}.weight_orig"].astype(np.float64)
  sigma = g[f"{prefix}.weight_u"] @ w @ g[f"{prefix}.weight_v"]
  m = g_opt["state"][keys.index(f"{prefix}.weight_orig")]
  adam = r.state.opt["g"][0]
  np.testing.assert_allclose(adam.mu["block1"]["bn2"]["beta"], m["exp_avg"].T * sigma, rtol=1e-5)
  np.testing.assert_allclose(adam.nu["block1"]["bn2"]["beta"], m["exp_avg_sq"].T * sigma ** 2,
                             rtol=1e-5)
  assert int(r.state.step) == 40 and int(adam.count) == 3


def test_no_ema_file_copies_g_and_says_so(folder):
  r = _convert("biggan-pytorch", biggan_folder(folder), BIGGAN)
  assert any("EMA" in n for n in r.notes) and any("Adam afresh" in n for n in r.notes)
  for a, b in zip(jax.tree.leaves(r.state.ema), jax.tree.leaves(r.state.g)):
    np.testing.assert_array_equal(a, b)


def test_command_line_settings_win(folder):
  r = build.convert("studiogan", studiogan_folder(folder, pl.studiogan_g(), pl.studiogan_d()),
                    config({**STUDIOGAN, "model.bn_eps": 1e-5}),
                    overridden=frozenset({"model.bn_eps"}))
  assert r.config.model.bn_eps == 1e-5 and r.config.model.sn_eps == 1e-6
  assert any("model.bn_eps" in n for n in r.notes)
  assert "config.model.sn_eps: 1e-12 -> 1e-06" in r.changes


# ---------------------------------------------------------------------------
# Refusals name what is wrong.

@pytest.mark.parametrize("change,overrides,needle", [
    ("wider config", {**BIGGAN, "model.ch": 16}, "'linear.weight'"),
    ("extra tensor", BIGGAN, "'blocks.9.0.conv1.weight'"),
    ("missing tensor", BIGGAN, "'blocks.0.0.bn1.stored_var'"),
    ("attention elsewhere", {**BIGGAN, "model.g_attention": (8,)}, "blocks.0.1"),
])
def test_architecture_mismatches_name_the_tensor(folder, change, overrides, needle):
  g = pl.biggan_g()
  if change == "extra tensor":
    g["blocks.9.0.conv1.weight"] = np.zeros((2, 2, 3, 3), np.float32)
  if change == "missing tensor":
    del g["blocks.0.0.bn1.stored_var"]
  with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
    _convert("biggan-pytorch", biggan_folder(folder, g=g), overrides)


def test_biggan_training_config_is_checked(folder):
  meta = {"itr": 12, "config": {"G_ch": 8, "D_ch": 8, "resolution": 32, "dim_z": 8,
                                "n_classes": 3, "G_attn": "32", "D_attn": "0", "SN_eps": 1e-6}}
  with pytest.raises(CheckpointError, match=r"G_attn=\(32,\).*--config.model.g_attention=32"):
    _convert("biggan-pytorch", biggan_folder(folder, **{"state_dict.pth": meta}), BIGGAN)
  meta["config"].update(G_attn="16", G_shared=True)
  with pytest.raises(CheckpointError, match="--G_shared True"):
    _convert("biggan-pytorch", biggan_folder(folder, **{"state_dict.pth": meta}), BIGGAN)
  meta["config"].update(G_shared=False)
  r = _convert("biggan-pytorch", biggan_folder(folder, **{"state_dict.pth": meta}), BIGGAN)
  assert int(r.state.step) == 12 and r.config.model.sn_eps == 1e-6


def test_config_fields_for_the_peers_are_validated():
  with pytest.raises(config_base.ConfigError, match=r"model\.d_ch=-8"):
    preflight.check_config(config({"model.d_ch": -8}))
  with pytest.raises(config_base.ConfigError, match="model.d_ch=12"):
    preflight.check_config(config({"model.d_ch": 12}))     # D attention needs C/8 channels


def test_folder_and_optimizer_mistakes(folder, tmp_path):
  with pytest.raises(CheckpointError, match="G.pth does not exist"):
    build.convert("biggan-pytorch", str(tmp_path), config(BIGGAN))
  g, d = pl.studiogan_g(), pl.studiogan_d()
  path = studiogan_folder(folder, g, d)
  studiogan_folder(folder, g, d, when="current")
  with pytest.raises(CheckpointError, match="--select best or --select current"):
    build.convert("studiogan", path, config(STUDIOGAN))
  assert int(build.convert("studiogan", path, config(STUDIOGAN), "current").state.step) == 40
  opt, _ = pl.adam_state(pl.biggan_g())
  opt["param_groups"][0]["weight_decay"] = 0.01
  path = biggan_folder(folder, **{"G_optim.pth": opt})
  with pytest.raises(CheckpointError, match="--nooptimizer"):
    build.convert("biggan-pytorch", path, config(BIGGAN))
  build.convert("biggan-pytorch", path, config(BIGGAN), use_optimizer=False)


# ---------------------------------------------------------------------------
# Real checkpoints written by the peers' code.

def _assert_agrees(diffs: dict) -> None:
  for k in ("g", "ema", "d_real", "d_fake"):
    if f"{k}_max_abs_diff" in diffs:
      assert diffs[f"{k}_max_abs_diff"] <= 1e-4 * diffs[f"{k}_scale"], (k, diffs)


@pytest.mark.parametrize("name", ["studiogan", "studiogan_v03"])
def test_converted_studiogan_computes_what_studiogan_computes(name):
  _assert_agrees(fx.compare(os.path.join(FIXTURES, name), through_disk=False))


def test_cli_converts_biggan_pytorch_and_the_run_matches_it(tmp_path):
  src = os.path.join(FIXTURES, "biggan")
  with open(os.path.join(src, "meta.json")) as f:
    meta = json.load(f)
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "sagan_jax.convert", "--from", "biggan-pytorch", "--weights", src,
         "--config", meta["config"], "--workdir", workdir]
  cmd += [f"--config.{k}={v}" for k, v in meta["overrides"].items()]
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "set config.model.sn_eps: 1e-12 -> 1e-08" in p.stdout
  assert "G_ema.pth" in p.stdout and "step 2" in p.stdout
  assert f"--workdir {workdir} --config.model.ch=8" in p.stdout
  _assert_agrees(fx.compare(src, workdir=workdir))
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and again.stderr.startswith("error: ")
  assert "already holds checkpoints" in again.stderr and "Traceback" not in again.stderr
