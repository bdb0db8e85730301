"""Evaluation: Inception-v3 (TF 2015-12-05 graph) features, FID, IS, digits score.

Modules:
  inception     the network in Flax, input preprocessing, a jitted batched extractor
  weights       the TorchScript / pytorch-fid weight files -> folded params, and their cache
  metrics       streaming Gaussian statistics, Frechet distance, Inception Score
  feature_metrics  KID, precision/recall, density/coverage, intra-FID of two feature sets
  inception_scorer  one Inception path for `evaluate` and training: reference, one pass, metrics
  image_sets    image .npz files and dataset splits for `evaluate`
  digits_score  a cheap independent classifier score for the digits demo
  training_evals  in-training evaluations ('digits', 'fid', 'kid', 'prdc'), each on its schedule

Nothing here imports torch: the weight files are read by `sagan_jax.torch_pickle`;
see docs/evaluation.md.
"""
