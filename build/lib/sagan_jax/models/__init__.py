"""SAGAN models: layers (SN, CBN, self-attention), residual blocks, G and D."""

from sagan_jax.models.sagan import (Discriminator, Generator, architecture,
                                    discriminator_from_config, generator_from_config)

__all__ = ["Discriminator", "Generator", "architecture", "discriminator_from_config",
           "generator_from_config"]
