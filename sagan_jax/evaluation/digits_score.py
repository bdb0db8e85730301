"""A cheap, independent quality score for the digits demo (no Inception needed).

A small fixed classifier - scikit-learn's MLPClassifier, one hidden layer of 64
ReLU units, random_state 0 - is trained once per process (about 1-2 s, then
cached in memory) on all 1,797 images of `sklearn.datasets.load_digits`
(8x8, values 0..16). Trained on 70% of them it recognises 97.8% of the other
30%, so its accuracy on good samples should be in the high 90s.

Samples at any resolution are brought into the classifier's space the way the
real digits live there: RGB -> grayscale (ITU-R 601 luma), area-downsampled to
8x8 (exact box averaging, any size), scaled 0..255 -> 0..16. This assumes the
training images map load_digits' value v to pixel v / 16 * 255 (ink bright on
black); pass `invert=True` for dark ink on white.

`digits_score(images, labels)` returns:

* accuracy: fraction of samples classified as their conditioning label - the
  acceptance criterion of the digits demo is >= 0.90 on 1,000 samples, 100 per
  class; per_class_accuracy lists it per class (None for absent classes).
* frechet: Frechet distance (FID's formula) between the samples and all 1,797
  real digits in the classifier's hidden-layer space (64 ReLU features) - 0
  for the real digits themselves, larger is worse; an FID analogue for digits.
* precision, recall, density, coverage: the k-NN metrics of
  `feature_metrics.prdc` (k 3 and 5) between the samples and the real digits
  in the same 64-d feature space; None with fewer than 6 samples.
* diversity: within-class spread of samples relative to real digits: for each
  class, mean pairwise L2 distance between samples' 8x8 images (0..16 scale)
  divided by the same for the real digits of that class, averaged over the
  classes present. ~1 for real-like variety, ~0 for mode collapse (one image
  per class); per_class_diversity lists it per class.

"Real digits" for frechet and diversity are, by default, the demo's own
training images at the samples' resolution (`sagan_jax.data.digits.load(R)`,
bilinear upsampling), sent through the same 8x8 conversion, so that a
generator matching its training data scores frechet ~0 and diversity ~1 (see
`digits_score`'s `reference`).
"""

from __future__ import annotations

import functools
import numpy as np

from sagan_jax.evaluation import feature_metrics
from sagan_jax.evaluation.metrics import GaussianStats, frechet_distance

NUM_CLASSES = 10
_HIDDEN = 64
_SEED = 0


@functools.lru_cache(maxsize=1)
def _real_digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits
  d = load_digits()
  return d.data.astype(np.float64), d.target.astype(np.int64)   # [1797, 64] in 0..16


def train_classifier(x: np.ndarray, y: np.ndarray, seed: int = _SEED):
  """The fixed MLP on 8x8 digits (x in 0..16, [N, 64])."""
  from sklearn.neural_network import MLPClassifier
  clf = MLPClassifier(hidden_layer_sizes=(_HIDDEN,), random_state=seed, max_iter=500)
  return clf.fit(x / 16.0, y)


@functools.lru_cache(maxsize=1)
def _model():
  x, y = _real_digits()
  clf = train_classifier(x, y)
  feats = hidden_features(clf, x)
  ref = GaussianStats().update(feats)
  return clf, (ref.mu, ref.sigma), feats


def hidden_features(clf, x8: np.ndarray) -> np.ndarray:
  """The classifier's hidden-layer (ReLU) activations for [N, 64] inputs in 0..16."""
  h = (x8 / 16.0) @ clf.coefs_[0] + clf.intercepts_[0]
  return np.maximum(h, 0.0)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] exact box-averaging weights (each row sums to 1)."""
  edges_out = np.arange(n_out + 1) * (n_in / n_out)
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    lo, hi = edges_out[i], edges_out[i + 1]
    for j in range(int(np.floor(lo)), int(np.ceil(hi))):
      m[i, j] = min(hi, j + 1) - max(lo, j)
  return m / m.sum(axis=1, keepdims=True)


def to_digits_space(images: np.ndarray, invert: bool = False) -> np.ndarray:
  """[N, H, W, 3] or [N, H, W] uint8 (or float in [-1, 1]) -> [N, 64] in 0..16."""
  x = np.asarray(images)
  if x.dtype == np.uint8:
    x = x.astype(np.float64)
  else:  # float in [-1, 1]
    x = (np.clip(x.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5
  if x.ndim == 4:
    if x.shape[-1] == 3:
      x = x @ np.array([0.299, 0.587, 0.114])
    elif x.shape[-1] == 1:
      x = x[..., 0]
    else:
      raise ValueError(f"expected 1 or 3 channels, got shape {images.shape}")
  if x.ndim != 3:
    raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
  _, h, w = x.shape
  x = np.einsum("ih,nhw,jw->nij", _area_matrix(h, 8), x, _area_matrix(w, 8))
  if invert:
    x = 255.0 - x
  return (x * (16.0 / 255.0)).reshape(x.shape[0], 64)


def _mean_pairwise_distance(x: np.ndarray) -> float:
  n = x.shape[0]
  if n < 2:
    return float("nan")
  sq = (x * x).sum(axis=1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
  iu = np.triu_indices(n, k=1)
  return float(np.sqrt(d2[iu]).mean())


def _class_spread(x8: np.ndarray, labels: np.ndarray) -> list[float]:
  return [_mean_pairwise_distance(x8[labels == c]) for c in range(NUM_CLASSES)]


@functools.lru_cache(maxsize=1)
def _default_reference():
  clf, ref_stats, feats = _model()
  x, y = _real_digits()
  return ref_stats, tuple(_class_spread(x, y)), feats


_REF_CACHE: dict = {}


def _reference_from_images(key, ref_images, ref_labels):
  """Reference statistics of a real image set, cached in memory by `key`."""
  if key not in _REF_CACHE:
    clf = _model()[0]
    x8 = to_digits_space(ref_images)
    ref_labels = np.asarray(ref_labels).astype(np.int64).reshape(-1)
    if x8.shape[0] != ref_labels.shape[0]:
      raise ValueError("reference images and labels differ in number")
    feats = hidden_features(clf, x8)
    st = GaussianStats().update(feats)
    if len(_REF_CACHE) >= 4:
      _REF_CACHE.clear()
    _REF_CACHE[key] = ((st.mu, st.sigma), _class_spread(x8, ref_labels), feats)
  return _REF_CACHE[key]


def _pipeline_digits(resolution: int):
  """The demo's training images at this resolution (sagan_jax.data.digits)."""
  from sagan_jax.data import digits as digits_data
  return digits_data.load(resolution)


def _only(images, labels, classes):
  """The real digits of `classes` (all when None)."""
  if classes is None:
    return images, labels
  keep = np.isin(labels, np.asarray(classes))
  return images[keep], labels[keep]


def _reference(reference, images: np.ndarray, classes=None):
  """(hidden-feature mean/cov, per-class spread, hidden features) of the real digits (of
  `classes` only, when given) to compare with."""
  if isinstance(reference, str):
    if reference != "auto":
      raise ValueError(f"reference {reference!r}: use 'auto', None or (images, labels)")
    reference = None
    if images.ndim == 4 and images.shape[1] == images.shape[2] and images.shape[1] != 8:
      loaded = _only(*_pipeline_digits(int(images.shape[1])), classes)
      return _reference_from_images(("pipeline", int(images.shape[1]), classes), *loaded)
  if reference is None and classes is not None:   # load_digits' own 8x8, of these classes
    x, y = _only(*_real_digits(), classes)
    feats = hidden_features(_model()[0], x)
    st = GaussianStats().update(feats)
    return (st.mu, st.sigma), _class_spread(x, y), feats
  if reference is None:
    stats, spread, feats = _default_reference()
    return stats, list(spread), feats
  ref_images, ref_labels = reference
  ref_images = np.asarray(ref_images)
  key = ("given", ref_images.shape, hash(ref_images.tobytes()),
         hash(np.asarray(ref_labels).tobytes()))
  return _reference_from_images(key, ref_images, ref_labels)


def digits_score(images: np.ndarray, labels: np.ndarray, invert: bool = False,
                 reference="auto", classes=None) -> dict:
  """Scores generated digits against their conditioning labels (see module doc).

  reference: the real digits that frechet and diversity compare with, as the
  model saw them. They pass through the same 8x8 conversion, so resampling
  blur counts the same on both sides and the training images themselves score
  frechet 0 and diversity 1.
    'auto' (default): for square samples of resolution R != 8, the demo's
        training images `sagan_jax.data.digits.load(R)` (bilinear upsampling);
        else as None.
    None: load_digits' own 8x8 images (right for 8x8 or nearest-neighbour
        upsampling; a bilinear upsample-then-downsample round trip alone
        lowers diversity to ~0.7 and raises frechet to ~3 against these).
    (images, labels): any other real set, uint8 [N, H, W, 3] and [N].
  classes: a model trained on only these digits (`config.data.classes`):
  'auto' and None then compare with the real digits of those classes only.
  The accuracy does not depend on the reference.
  """
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  x8 = to_digits_space(images, invert=invert)
  if x8.shape[0] != labels.shape[0]:
    raise ValueError(f"{x8.shape[0]} images but {labels.shape[0]} labels")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError("labels must be digit classes 0..9")
  clf = _model()[0]
  classes = None if classes is None else tuple(int(k) for k in classes)
  (ref_mu, ref_sigma), spread, ref_feats = _reference(reference, np.asarray(images), classes)
  pred = clf.predict(x8 / 16.0)
  correct = pred == labels
  per_class_acc: list[float | None] = []
  per_class_div: list[float | None] = []
  for c in range(NUM_CLASSES):
    m = labels == c
    per_class_acc.append(float(correct[m].mean()) if m.any() else None)
    ok = m.sum() >= 2 and np.isfinite(spread[c]) and spread[c] > 0
    per_class_div.append(_mean_pairwise_distance(x8[m]) / spread[c] if ok else None)
  feats = hidden_features(clf, x8)
  frechet = None
  if feats.shape[0] >= 2:
    st = GaussianStats().update(feats)
    frechet = max(0.0, frechet_distance(st.mu, st.sigma, ref_mu, ref_sigma))  # no -1e-8s
  divs = [d for d in per_class_div if d is not None]
  knn = {k: None for k in ("precision", "recall", "density", "coverage")}
  if feats.shape[0] > 5:
    knn = feature_metrics.prdc(feats, ref_feats, pr_k=3, dc_k=5)
  return {
      **knn,
      "accuracy": float(correct.mean()) if labels.size else float("nan"),
      "frechet": frechet,
      "diversity": float(np.mean(divs)) if divs else None,
      "per_class_accuracy": per_class_acc,
      "per_class_diversity": per_class_div,
      "num_samples": int(labels.size),
  }
