"""The built-in configs, installed as `sagan_jax.configs` (`sagan-jax train --config digits`).

Each file is also a plain config file: `--config configs/digits.py`.
"""
