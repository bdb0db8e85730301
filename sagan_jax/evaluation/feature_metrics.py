"""Metrics of two feature sets beyond FID: KID, precision/recall, density/coverage, intra-FID.

Pure functions of features [N, D] (any feature space: Inception pool3, the
digits classifier's hidden layer). The pairwise work runs with jax.numpy on
the default device in row blocks, so 50,000 x 50,000 features never need an
N x N matrix (a block is at most ~`_BLOCK_ELEMENTS` distances), and every
matmul is at Precision.HIGHEST (no TF32 / bfloat16 passes on accelerators).

* `kid`: Kernel Inception Distance (Binkowski et al. 2018): the unbiased
  estimate of MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
  over `subsets` random subsets of `subset_size` features of each set (drawn
  without replacement, numpy seed `seed`); mean and std over the subsets.
  A subset size at least both set sizes gives one exact estimate over all
  features (std 0).
* `prdc`: improved precision and recall (Kynkaanniemi et al. 2019): each
  real feature x gets the radius r_k(x), the distance to its k-th nearest
  other real feature (likewise fakes among fakes). precision = the fraction
  of fakes within (<=) the radius of some real; recall = the fraction of reals
  within the radius of some fake. Density and coverage (Naeem et al. 2020,
  their code's strict `<`): density = sum over fakes of the number of real
  balls containing it / (k * number of fakes); coverage = the fraction of
  reals whose ball contains at least one fake. pr_k and dc_k (defaults 3
  and 5) are the k of each pair.
* `intra_fid`: the mean over classes of the Frechet distance between the
  class's fake features and its real features (Miyato & Koyama 2018).

Distances are taken after subtracting the real features' mean (distances do
not change; float32 loses less to cancellation).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax.evaluation.metrics import GaussianStats, frechet_distance

_HI = jax.lax.Precision.HIGHEST
_BLOCK_ELEMENTS = 1 << 24   # distances (float32) per block: 64 MB


def _block_rows(n_rows: int, n_cols: int) -> int:
  """Rows per block: a power of two, at most _BLOCK_ELEMENTS / n_cols, at most n_rows."""
  rows = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
  rows = 1 << (rows.bit_length() - 1)
  return max(1, min(rows, 1 << max(n_rows - 1, 0).bit_length()))


def _blocks(x: np.ndarray, rows: int):
  """(start, padded block [rows, D], valid count) over the rows of x."""
  for i in range(0, x.shape[0], rows):
    b = x[i:i + rows]
    n = b.shape[0]
    if n < rows:
      b = np.concatenate([b, np.zeros((rows - n, x.shape[1]), x.dtype)])
    yield i, b, n


def _as_features(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} features must be [N, D], got shape {x.shape}")
  return x


def _sq_dists(a, b, b_sq):
  a_sq = jnp.sum(a * a, axis=1)
  return jnp.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * jnp.matmul(a, b.T, precision=_HI),
                     0.0)


# ----------------------------------------------------------------------------
# KID.

@jax.jit
def _kernel_block_sum(a, b, valid):
  """Sum over rows a[:valid] and all of b of (a.b / d + 1)^3 (float32 row sums)."""
  k = (jnp.matmul(a, b.T, precision=_HI) / a.shape[1] + 1.0) ** 3
  rows = jnp.sum(k, axis=1)
  return jnp.where(jnp.arange(a.shape[0]) < valid, rows, 0.0)


def _kernel_sum(a: np.ndarray, b: np.ndarray) -> float:
  """sum_ij k(a_i, b_j), blocked over a's rows, accumulated in float64 on the host."""
  rows = _block_rows(a.shape[0], b.shape[0])
  bd = jnp.asarray(b, jnp.float32)
  total = 0.0
  for _, blk, n in _blocks(a, rows):
    total += float(np.sum(np.asarray(_kernel_block_sum(jnp.asarray(blk), bd, n), np.float64)))
  return total


def _kernel_diag_sum(x: np.ndarray) -> float:
  x = x.astype(np.float64)
  return float(np.sum((np.sum(x * x, axis=1) / x.shape[1] + 1.0) ** 3))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """The unbiased MMD^2 estimate of two feature sets [n, D], [m, D] (n, m >= 2), cubic kernel."""
  n, m = x.shape[0], y.shape[0]
  if n < 2 or m < 2:
    raise ValueError(f"KID needs at least 2 features on each side, got {n} and {m}")
  kxx = (_kernel_sum(x, x) - _kernel_diag_sum(x)) / (n * (n - 1))
  kyy = (_kernel_sum(y, y) - _kernel_diag_sum(y)) / (m * (m - 1))
  kxy = _kernel_sum(x, y) / (n * m)
  return float(kxx + kyy - 2.0 * kxy)


def kid(fake, real, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
  """(mean, std) of the unbiased MMD^2 over `subsets` subsets of `subset_size` (see module doc)."""
  fake, real = _as_features(fake, "fake").astype(np.float32), _as_features(real, "real")
  if fake.shape[1] != real.shape[1]:
    raise ValueError(f"feature dims differ: {fake.shape[1]} vs {real.shape[1]}")
  if subsets < 1 or subset_size < 2:
    raise ValueError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
  real = real.astype(np.float32)
  nf, nr = min(subset_size, fake.shape[0]), min(subset_size, real.shape[0])
  if nf == fake.shape[0] and nr == real.shape[0]:
    return mmd2_unbiased(fake, real), 0.0
  rng = np.random.default_rng(seed)
  values = [mmd2_unbiased(fake[rng.choice(fake.shape[0], nf, replace=False)],
                          real[rng.choice(real.shape[0], nr, replace=False)])
            for _ in range(subsets)]
  return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------
# k-NN radii, precision/recall, density/coverage.

@functools.partial(jax.jit, static_argnames="kmax")
def _kth_block(blk, x, x_sq, *, kmax: int):
  """The kmax+1 smallest squared distances of each block row to x (the row itself first)."""
  neg, _ = jax.lax.top_k(-_sq_dists(blk, x, x_sq), kmax + 1)
  return -neg


def knn_sq_radii(x: np.ndarray, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
  """{k: squared distance of each row of x to its k-th nearest other row}."""
  kmax = max(ks)
  if x.shape[0] <= kmax:
    raise ValueError(f"k-NN radii with k={kmax} need more than {kmax} features, got {x.shape[0]}")
  xd = jnp.asarray(x)
  x_sq = jnp.sum(xd * xd, axis=1)
  rows = _block_rows(x.shape[0], x.shape[0])
  out = np.empty((x.shape[0], kmax + 1), np.float32)
  for i, blk, n in _blocks(x, rows):
    out[i:i + n] = np.asarray(_kth_block(jnp.asarray(blk), xd, x_sq, kmax=kmax))[:n]
  return {k: out[:, k] for k in ks}


@jax.jit
def _cross_block(fblk, valid, f_r2_pr, real, real_sq, r_r2_pr, r_r2_dc):
  """One block of fakes against all reals: what precision, recall, density, coverage need."""
  d2 = _sq_dists(fblk, real, real_sq)                         # [B, Nr]
  ok = (jnp.arange(fblk.shape[0]) < valid)[:, None]
  precise = jnp.any(d2 <= r_r2_pr[None, :], axis=1)            # [B]
  dense = jnp.sum(d2 < r_r2_dc[None, :], axis=1)               # [B]
  recalled = jnp.any(ok & (d2 <= f_r2_pr[:, None]), axis=0)    # [Nr]
  nearest = jnp.min(jnp.where(ok, d2, jnp.inf), axis=0)        # [Nr]
  return precise, dense, recalled, nearest


def prdc(fake, real, pr_k: int = 3, dc_k: int = 5) -> dict[str, float]:
  """{'precision', 'recall', 'density', 'coverage'} of fake against real features."""
  fake, real = _as_features(fake, "fake"), _as_features(real, "real")
  if fake.shape[1] != real.shape[1]:
    raise ValueError(f"feature dims differ: {fake.shape[1]} vs {real.shape[1]}")
  if pr_k < 1 or dc_k < 1:
    raise ValueError(f"k must be >= 1, got pr_k={pr_k}, dc_k={dc_k}")
  centre = real.astype(np.float64).mean(axis=0)
  fake = (fake - centre).astype(np.float32)
  real = (real - centre).astype(np.float32)
  r_radii = knn_sq_radii(real, (pr_k, dc_k))
  f_radii = knn_sq_radii(fake, (pr_k,))
  real_d = jnp.asarray(real)
  real_sq = jnp.sum(real_d * real_d, axis=1)
  r_pr, r_dc = jnp.asarray(r_radii[pr_k]), jnp.asarray(r_radii[dc_k])
  rows = _block_rows(fake.shape[0], real.shape[0])
  precise, dense = np.zeros(fake.shape[0], bool), np.zeros(fake.shape[0], np.int64)
  recalled = np.zeros(real.shape[0], bool)
  nearest = np.full(real.shape[0], np.inf, np.float32)
  for i, blk, n in _blocks(fake, rows):
    fr = np.zeros(rows, np.float32)
    fr[:n] = f_radii[pr_k][i:i + n]
    p, d, r, m = _cross_block(jnp.asarray(blk), n, jnp.asarray(fr), real_d, real_sq, r_pr, r_dc)
    precise[i:i + n], dense[i:i + n] = np.asarray(p)[:n], np.asarray(d)[:n]
    recalled |= np.asarray(r)
    nearest = np.minimum(nearest, np.asarray(m))
  return {"precision": float(precise.mean()), "recall": float(recalled.mean()),
          "density": float(dense.sum() / (dc_k * fake.shape[0])),
          "coverage": float((nearest < r_radii[dc_k]).mean())}


# ----------------------------------------------------------------------------
# Intra-class FID.

def class_stats(features, labels) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{class: (mu, sigma)} of features grouped by integer label (classes with >= 2 only)."""
  features, labels = np.asarray(features), np.asarray(labels).reshape(-1)
  if features.shape[0] != labels.shape[0]:
    raise ValueError(f"{features.shape[0]} features but {labels.shape[0]} labels")
  out = {}
  for c in np.unique(labels):
    sel = features[labels == c]
    if sel.shape[0] >= 2:
      st = GaussianStats().update(sel)
      out[int(c)] = (st.mu, st.sigma)
  return out


def intra_fid(fake, fake_labels, real=None, real_labels=None,
              real_class_stats: dict | None = None) -> float:
  """Mean over the fakes' classes of FID(fake of class c, real of class c).

  The real side is features + labels, or `real_class_stats` {class: (mu, sigma)}.
  Every class of the fakes needs >= 2 fakes and real statistics of that class.
  """
  if real_class_stats is None:
    if real is None or real_labels is None:
      raise ValueError("intra-FID needs labelled real features or per-class statistics")
    real_class_stats = class_stats(real, real_labels)
  fake_labels = np.asarray(fake_labels).reshape(-1)
  classes = [int(c) for c in np.unique(fake_labels)]
  fake_stats = class_stats(fake, fake_labels)
  missing = [c for c in classes if c not in fake_stats or c not in real_class_stats]
  if missing or not classes:
    raise ValueError(f"intra-FID needs at least 2 samples and 2 real images of every class; "
                     f"classes lacking them: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
  fids = [frechet_distance(*fake_stats[c], *real_class_stats[c]) for c in classes]
  return float(np.mean(fids))
