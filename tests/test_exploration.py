"""Exploration helpers: attention maps, interpolation, truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import exploration
from sagan_jax.models import Generator


def test_query_map_picks_the_query_row_and_upsamples():
  r = 8  # feature map 8x8 -> 16 queries... keys on the pooled 4x4 grid
  beta = np.zeros((r * r, (r // 2) ** 2), np.float32)
  q_feat = 2 * r + 5  # feature position (2, 5)
  beta[q_feat, 3] = 1.0  # looks only at pooled key (0, 3)
  m = exploration.query_map(beta, (2 * 4 + 1, 5 * 4 + 2), image_size=32)  # pixel in cell (2,5)
  assert m.shape == (32, 32)
  # Key (0, 3) covers pixel rows 0-7, cols 24-31 of the 32x32 image.
  assert m[0:8, 24:32].min() == 1.0 and m.sum() == 64.0


def test_generator_sows_attention_for_each_layer():
  g = Generator(resolution=32, ch=8, z_dim=8, num_classes=3, attention=(8, 16))
  z = jnp.ones((2, 8))
  y = jnp.array([0, 2])
  v = g.init(jax.random.PRNGKey(0), z, y, train=False)
  imgs, maps = exploration.generate_with_attention(g, v, z, y)
  assert imgs.shape == (2, 32, 32, 3)
  assert sorted(maps) == ["attention16", "attention8"]
  assert maps["attention16"].shape == (2, 256, 64) and maps["attention8"].shape == (2, 64, 16)
  np.testing.assert_allclose(np.asarray(maps["attention8"]).sum(-1), 1.0, rtol=1e-5)
  sheet = exploration.attention_sheet(np.zeros((2, 32, 32, 3), np.uint8),
                                      np.asarray(maps["attention16"]),
                                      exploration.default_queries(32))
  assert sheet.shape == (2 * 4, 32, 32, 3)


def test_interpolation_endpoints_and_truncation():
  z0, z1 = jnp.zeros(4), jnp.ones(4)
  path = exploration.interpolate(z0, z1, 5)
  np.testing.assert_array_equal(path[0], z0)
  np.testing.assert_array_equal(path[-1], z1)
  np.testing.assert_allclose(path[2], 0.5)
  z = exploration.truncated_z(jax.random.PRNGKey(0), 1000, 16, 0.5)
  assert float(jnp.abs(z).max()) <= 0.5
  z_full = exploration.truncated_z(jax.random.PRNGKey(0), 1000, 16, None)
  assert float(jnp.abs(z_full).max()) > 2.0


def test_parse_queries_checks_bounds():
  assert exploration.parse_queries("1:2,3:4", 16) == [(1, 2), (3, 4)]
  with pytest.raises(ValueError, match="outside"):
    exploration.parse_queries("16:0", 16)
