"""Evaluation: Inception-v3 (TF 2015-12-05 graph) features, FID, IS, digits score.

Modules:
  inception     the network in Flax, input preprocessing, a jitted batched extractor
  weights       torch-free loaders for the TorchScript / pytorch-fid weight files
  metrics       streaming Gaussian statistics, Frechet distance, Inception Score
  digits_score  a cheap independent classifier score for the digits demo

Nothing here imports torch; see docs/evaluation.md.
"""
