"""FID and Inception Score, computed from Inception features on the host in float64.

* `GaussianStats`: streaming mean and covariance (Chan et al.'s pairwise
  update), float64, fed batch by batch; equals np.mean / np.cov(rowvar=False).
* `frechet_distance`: pytorch-fid's formula
      |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)).
  The default 'eigh' route takes tr(sqrt(S1 S2)) as the sum of square roots
  of the eigenvalues of R^T S2 R with R R^T = S1 (Cholesky; pivoted Cholesky
  of numerical rank when S1 is singular): symmetric PSD with the nonzero
  spectrum of S1 S2, so exact in exact arithmetic, stable for singular
  covariances and several times faster than scipy's `sqrtm`. 'sqrtm' is
  pytorch-fid's own route (scipy.linalg.sqrtm, retried with 1e-6*I added to
  both covariances when the result is not finite), kept as the reference.
* `inception_score`: exp(E_x KL(p(y|x) || p(y))) over 10 splits in order, the
  original (Salimans et al.) definition; mean and std over the splits.
* `compute_features` / `metrics_from_features`: the batched, jitted extraction
  (see inception.FeatureExtractor) wired to the statistics; the metrics beyond
  FID and IS are in `feature_metrics`, and `inception_scorer` binds all of them
  to an extractor and a reference for the `evaluate` command and training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg


class GaussianStats:
  """Streaming float64 mean and covariance of feature vectors."""

  def __init__(self, dim: int | None = None):
    self.n = 0
    self.dim = dim
    self.mean: np.ndarray | None = None
    self._m2: np.ndarray | None = None   # sum of centred outer products

  def update(self, x: np.ndarray) -> "GaussianStats":
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
      raise ValueError(f"features must be [N, D], got {x.shape}")
    nb = x.shape[0]
    if nb == 0:
      return self
    if self.dim is None:
      self.dim = x.shape[1]
    if x.shape[1] != self.dim:
      raise ValueError(f"feature dim {x.shape[1]} != {self.dim}")
    mb = x.mean(axis=0)
    xc = x - mb
    m2b = xc.T @ xc
    if self.n == 0:
      self.n, self.mean, self._m2 = nb, mb, m2b
      return self
    n = self.n + nb
    delta = mb - self.mean
    self.mean = self.mean + delta * (nb / n)
    self._m2 = self._m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
    self.n = n
    return self

  @property
  def mu(self) -> np.ndarray:
    if self.n == 0:
      raise ValueError("no features were added")
    return self.mean

  @property
  def sigma(self) -> np.ndarray:
    """Unbiased covariance (ddof=1), as np.cov(rowvar=False)."""
    if self.n < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
    return self._m2 / (self.n - 1)

  def save(self, path: str, **extra) -> None:
    np.savez(path, mu=self.mu, sigma=self.sigma, num_images=np.array(self.n), **extra)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an .npz with keys 'mu' and 'sigma' (pytorch-fid's format)."""
  with np.load(path) as f:
    if "mu" not in f.files or "sigma" not in f.files:
      raise ValueError(f"{path}: reference statistics need arrays 'mu' and 'sigma'")
    return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
  # Eigenvalues below the numerical-rank tolerance (as numpy's matrix_rank)
  # are rounding noise of a zero eigenvalue; their square roots would add up
  # to ~1e-4 on a rank-deficient 2048-d covariance, so they count as zero.
  tol = max(float(np.max(np.abs(w), initial=0.0)), 0.0) * w.shape[0] * np.finfo(np.float64).eps
  return np.where(w > tol, w, 0.0)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def _psd_factor(s: np.ndarray) -> np.ndarray:
  """Some R with R @ R.T == s (s symmetric PSD): [d, rank]."""
  s = (s + s.T) / 2
  try:
    return np.linalg.cholesky(s)                 # positive definite: the usual case
  except np.linalg.LinAlgError:
    pass
  # Semidefinite (e.g. fewer samples than dimensions): pivoted Cholesky, which
  # stops at the numerical rank; O(d^2 rank) instead of an O(d^3) eigh.
  from scipy.linalg import lapack
  c, piv, rank, info = lapack.dpstrf(s, lower=1)
  if info >= 0 and rank > 0:
    r = np.empty((s.shape[0], rank))
    r[piv - 1] = np.tril(c)[:, :rank]
    return r
  return _sqrt_psd(s)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray,
                       factor1: np.ndarray | None = None) -> float:
  """tr(sqrt(sigma1 @ sigma2)) for PSD matrices.

  For any R with R R^T = sigma1, R^T sigma2 R is symmetric PSD and has the
  nonzero eigenvalues of sigma1 @ sigma2. R is the Cholesky factor of sigma1
  (pivoted, of numerical rank, when sigma1 is singular: fewer samples than
  dimensions), so one symmetric eigenvalue solve remains. `factor1`: such an
  R, precomputed (e.g. for a fixed reference covariance).
  """
  r = _psd_factor(sigma1) if factor1 is None else factor1
  m = r.T @ sigma2 @ r
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(_clip_eigenvalues(w))))


def _scipy_sqrtm(m: np.ndarray) -> np.ndarray:
  """scipy.linalg.sqrtm without its error print (scipy >= 1.18 dropped `disp`)."""
  try:
    return scipy.linalg.sqrtm(m, disp=False)[0]
  except TypeError:
    return scipy.linalg.sqrtm(m)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     method: str = "eigh") -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID formula)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = trace_sqrt_product(sigma1, sigma2)
    if not np.isfinite(tr_covmean):
      offset = np.eye(sigma1.shape[0]) * eps
      tr_covmean = trace_sqrt_product(sigma1 + offset, sigma2 + offset)
  elif method == "sqrtm":
    covmean = _scipy_sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = _scipy_sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  else:
    raise ValueError(f"method {method!r}: use 'eigh' or 'sqrtm'")
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """(mean, std) of exp(E KL(p(y|x) || p(y))) over `splits` consecutive splits."""
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if n < splits:
    raise ValueError(f"Inception Score with {splits} splits needs >= {splits} samples, got {n}")
  logp = _log_softmax(logits)
  p = np.exp(logp)
  scores = []
  for k in range(splits):
    lo, hi = k * n // splits, (k + 1) * n // splits
    part_logp, part_p = logp[lo:hi], p[lo:hi]
    log_py = np.log(part_p.mean(axis=0))
    kl = (part_p * (part_logp - log_py)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------
# Features -> metrics.

@dataclasses.dataclass
class Features:
  """What one pass over images produced."""
  stats: GaussianStats
  logits: np.ndarray | None = None       # [N, 1008] (unbiased or biased, see is_logits)
  pool3: np.ndarray | None = None        # [N, 2048] when kept

  @property
  def num_images(self) -> int:
    return self.stats.n


def compute_features(extractor, images, *, keep_pool3: bool = False,
                     is_logits: str = "logits_unbiased") -> Features:
  """Streams `images` (array or iterator of batches) through the extractor.

  pool3 statistics are accumulated in float64 on the host; logits (when the
  weights have the classifier) and, if asked, the pool3 features are kept.
  """
  stats = GaussianStats()
  logits, pool3 = [], []
  for out in extractor.iter_batches(images):
    stats.update(out["pool3"])
    if keep_pool3:
      pool3.append(out["pool3"])
    if is_logits in out:
      logits.append(out[is_logits])
  return Features(
      stats=stats,
      logits=np.concatenate(logits) if logits else None,
      pool3=np.concatenate(pool3) if keep_pool3 and pool3 else None)


def metrics_from_features(feats: Features, ref: tuple[np.ndarray, np.ndarray] | None,
                          splits: int = 10) -> dict:
  """{'fid', 'is_mean', 'is_std', 'num_samples'}; None where not computable."""
  out = {"fid": None, "is_mean": None, "is_std": None, "num_samples": feats.num_images}
  if ref is not None:
    out["fid"] = frechet_distance(feats.stats.mu, feats.stats.sigma, ref[0], ref[1])
  if feats.logits is not None and feats.logits.shape[0] >= splits:
    out["is_mean"], out["is_std"] = inception_score(feats.logits, splits)
  return out
