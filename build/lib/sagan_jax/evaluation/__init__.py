"""Evaluation: Inception-v3 (TF 2015-12-05 graph) features, FID, IS, digits score.

Modules:
  inception     the network in Flax, input preprocessing, a jitted batched extractor
  weights       the TorchScript / pytorch-fid weight files -> folded params, and their cache
  metrics       streaming Gaussian statistics, Frechet distance, Inception Score
  digits_score  a cheap independent classifier score for the digits demo
  evaluators    in-training evaluators ('digits', 'fid'), one interface, a registry

Nothing here imports torch: the weight files are read by `sagan_jax.torch_pickle`;
see docs/evaluation.md.
"""
