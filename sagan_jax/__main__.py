"""`python -m sagan_jax COMMAND ...`: the same as the `sagan-jax` command."""

from sagan_jax.cli import main

main()
