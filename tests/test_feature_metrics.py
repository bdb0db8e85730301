"""KID, precision/recall, density/coverage and intra-FID against plain-numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from sagan_jax.evaluation import feature_metrics as fm


# ----------------------------------------------------------------------------
# Independent references (float64, whole matrices, the papers' definitions).

def _d2(a, b):
  return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)


def mmd2_reference(x, y):
  d = x.shape[1]
  k = lambda a, b: (a.astype(np.float64) @ b.T.astype(np.float64) / d + 1) ** 3  # noqa: E731
  n, m = len(x), len(y)
  kxx, kyy = k(x, x), k(y, y)
  return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
          - 2 * k(x, y).mean())


def radii_reference(x, k):
  d = np.sqrt(_d2(x, x))
  return np.sort(d, axis=1)[:, k]          # column 0 is the point itself


def prdc_reference(fake, real, pr_k, dc_k):
  d = np.sqrt(_d2(real, fake))              # [Nr, Nf]
  r_pr, r_dc, f_pr = radii_reference(real, pr_k), radii_reference(real, dc_k), \
      radii_reference(fake, pr_k)
  return {"precision": (d <= r_pr[:, None]).any(axis=0).mean(),
          "recall": (d <= f_pr[None, :]).any(axis=1).mean(),
          "density": (d < r_dc[:, None]).sum(axis=0).mean() / dc_k,
          "coverage": (d.min(axis=1) < r_dc).mean()}


def fid_reference(a, b):
  import scipy.linalg
  m1, m2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)


def _gauss(rng, n, d, shift=0.0):
  return (rng.standard_normal((n, d)) + shift).astype(np.float32)


# ----------------------------------------------------------------------------

def test_mmd2_equals_brute_force():
  rng = np.random.default_rng(0)
  x, y = _gauss(rng, 150, 20), _gauss(rng, 90, 20, 0.3)
  assert fm.mmd2_unbiased(x, y) == pytest.approx(mmd2_reference(x, y), rel=1e-4, abs=1e-6)


def test_kid_blocks_give_the_same_sums(monkeypatch):
  rng = np.random.default_rng(1)
  x, y = _gauss(rng, 70, 8), _gauss(rng, 50, 8, 0.5)
  whole = fm.mmd2_unbiased(x, y)
  monkeypatch.setattr(fm, "_BLOCK_ELEMENTS", 64)     # blocks of one row (last one padded)
  assert fm.mmd2_unbiased(x, y) == pytest.approx(whole, rel=1e-5)


def test_kid_subsets_and_exact_case():
  rng = np.random.default_rng(2)
  x, y = _gauss(rng, 120, 16), _gauss(rng, 100, 16, 0.4)
  mean, std = fm.kid(x, y, subsets=1, subset_size=1000)      # >= both sizes: one exact estimate
  assert std == 0.0 and mean == pytest.approx(mmd2_reference(x, y), rel=1e-4)
  mean, std = fm.kid(x, y, subsets=5, subset_size=40, seed=3)
  r = np.random.default_rng(3)
  want = [mmd2_reference(x[r.choice(120, 40, replace=False)], y[r.choice(100, 40, replace=False)])
          for _ in range(5)]
  assert mean == pytest.approx(np.mean(want), rel=1e-4)
  assert std == pytest.approx(np.std(want), rel=1e-3)


def test_kid_defining_cases():
  rng = np.random.default_rng(4)
  x = _gauss(rng, 400, 32)
  same = fm.kid(x, _gauss(rng, 400, 32), subsets=1, subset_size=400)[0]
  far = fm.kid(x, _gauss(rng, 400, 32, 3.0), subsets=1, subset_size=400)[0]
  assert abs(same) < 2e-2 and far > 1.0
  # x against itself: the unbiased estimate is -2 (mean k(x, x) - mean k(x, x')) / n, O(1/n)
  diag = ((x.astype(np.float64) ** 2).sum(1) / 32 + 1) ** 3
  assert -2 * diag.mean() / 400 < fm.kid(x, x, subsets=1, subset_size=400)[0] < 0


@pytest.mark.parametrize("pr_k,dc_k", [(3, 5), (1, 2)])
def test_prdc_equals_brute_force(pr_k, dc_k):
  rng = np.random.default_rng(5)
  real, fake = _gauss(rng, 200, 10), _gauss(rng, 170, 10, 0.4)
  got, want = fm.prdc(fake, real, pr_k, dc_k), prdc_reference(fake, real, pr_k, dc_k)
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1.5 / 170), key   # at most one tie flips


def test_prdc_blocked(monkeypatch):
  rng = np.random.default_rng(6)
  real, fake = _gauss(rng, 90, 6), _gauss(rng, 77, 6, 0.2)
  whole = fm.prdc(fake, real)
  monkeypatch.setattr(fm, "_BLOCK_ELEMENTS", 300)    # blocks of 2 rows, last one padded
  assert fm.prdc(fake, real) == whole


def test_knn_radii_equal_sorting():
  rng = np.random.default_rng(7)
  x = _gauss(rng, 60, 5)
  got = fm.knn_sq_radii(x, (1, 3))
  for k in (1, 3):
    np.testing.assert_allclose(np.sqrt(got[k]), radii_reference(x, k), rtol=1e-4)


def test_prdc_defining_cases():
  rng = np.random.default_rng(8)
  real = _gauss(rng, 300, 16)
  same = fm.prdc(real, real)
  assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
  far = fm.prdc(_gauss(rng, 300, 16, 50.0), real)
  assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_intra_fid_equals_mean_of_class_fids():
  rng = np.random.default_rng(9)
  fake, real = _gauss(rng, 300, 4), _gauss(rng, 400, 4, 0.5)
  fl, rl = np.arange(300) % 3, np.arange(400) % 3
  want = np.mean([fid_reference(fake[fl == c], real[rl == c]) for c in range(3)])
  assert fm.intra_fid(fake, fl, real, rl) == pytest.approx(want, rel=1e-6)
  stats = fm.class_stats(real, rl)
  assert fm.intra_fid(fake, fl, real_class_stats=stats) == pytest.approx(want, rel=1e-6)
  assert fm.intra_fid(real, rl, real, rl) == pytest.approx(0.0, abs=1e-8)


def test_intra_fid_needs_every_class():
  rng = np.random.default_rng(10)
  with pytest.raises(ValueError, match=r"classes lacking them: \[3\]"):
    fm.intra_fid(_gauss(rng, 40, 3), np.arange(40) % 4, _gauss(rng, 30, 3), np.arange(30) % 3)


def test_timing_script_times_each_metric_on_a_small_set(capsys):
  """benchmarks/feature_metrics.py end to end at a toy size: one JSON line, each metric timed."""
  import importlib.util
  import json
  import os
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks",
                      "feature_metrics.py")
  spec = importlib.util.spec_from_file_location("bench_feature_metrics", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(["--n", "1100", "--dim", "4", "--trials", "1"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["n"] == 1100 and out["machine"]["cores"] >= 1
  for name in ("prdc", "kid", "kid_exact"):
    assert out[name]["seconds"] >= 0 and out[name]["gflop"] > 0, out[name]   # (no timing asserted)
  with pytest.raises(SystemExit):
    bench.main(["--n", "500"])
