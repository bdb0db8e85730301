"""G and D: shapes at every resolution, attention placement, parameter counts."""

import jax
import jax.numpy as jnp
import pytest

from sagan_jax.models import Discriminator, Generator, architecture, sagan
from tests.conftest import load_config


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(model, *args, **kw):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kw))


@pytest.mark.parametrize("res,g_att,d_att", [(16, (8,), (8,)), (32, (16,), (16,)),
                                             (64, (32,), (32,)), (128, (64,), (64,)),
                                             (256, (128,), (64,))])
def test_shapes_at_every_resolution(res, g_att, d_att):
  g = Generator(resolution=res, ch=8, z_dim=16, num_classes=5, attention=g_att)
  d = Discriminator(resolution=res, ch=8, num_classes=5, attention=d_att)
  z, y = jnp.zeros((2, 16)), jnp.zeros((2,), jnp.int32)
  out = jax.eval_shape(lambda: g.init_with_output(jax.random.PRNGKey(0), z, y, train=False)[0])
  assert out.shape == (2, res, res, 3)
  x = jnp.zeros((2, res, res, 3))
  logits = jax.eval_shape(
      lambda: d.init_with_output(jax.random.PRNGKey(0), x, y, update_sn=False)[0])
  assert logits.shape == (2,)
  gv, dv = _shapes(g, z, y, train=False), _shapes(d, x, y, update_sn=False)
  assert f"attention{g_att[0]}" in gv["params"] and f"attention{d_att[0]}" in dv["params"]
  # SN state lives outside params: no 'u' or 'sigma' is trainable.
  assert all("sn" not in str(p) for p, _ in jax.tree_util.tree_flatten_with_path(gv["params"])[0])


def test_unconditional_model_has_no_class_tables():
  g = Generator(resolution=32, ch=8, z_dim=16, num_classes=0, attention=())
  d = Discriminator(resolution=32, ch=8, num_classes=0, attention=())
  gv = _shapes(g, jnp.zeros((2, 16)), None, train=False)
  dv = _shapes(d, jnp.zeros((2, 32, 32, 3)), None, update_sn=False)
  assert "embed" not in dv["params"]
  assert "gamma" not in gv["params"]["block1"]["bn1"]  # plain BN affine instead
  assert "scale" in gv["params"]["block1"]["bn1"]["bn"]


def test_unconditional_models_ignore_the_labels_they_are_given():
  """G and D own the conditioning: callers pass labels whatever num_classes is."""
  g = Generator(resolution=16, ch=8, z_dim=16, num_classes=0, attention=(8,))
  d = Discriminator(resolution=16, ch=8, num_classes=0, attention=(8,))
  z, x = jax.random.normal(jax.random.PRNGKey(1), (4, 16)), jnp.zeros((4, 16, 16, 3))
  gv = g.init(jax.random.PRNGKey(0), z, None, train=False)
  dv = d.init(jax.random.PRNGKey(0), x, None, update_sn=False)
  outs = [g.apply(gv, z, y, train=False) for y in (None, jnp.zeros(4, jnp.int32),
                                                   jnp.arange(4, dtype=jnp.int32))]
  logits = [d.apply(dv, outs[0], y, update_sn=False) for y in (None, jnp.arange(4) % 3)]
  assert all(bool(jnp.array_equal(outs[0], o)) for o in outs[1:])
  assert bool(jnp.array_equal(logits[0], logits[1]))


@pytest.mark.parametrize("config,g,d", [
    ("imagenet128", 42_017_412, 39_448_258),
    ("imagenet128:official", 42_078_852, 39_463_618),
])
def test_paper_parameter_counts(config, g, d):
  m = load_config(config).model
  gv = _shapes(sagan.generator_from_config(m), jnp.zeros((2, 128)),
               jnp.zeros((2,), jnp.int32), train=False)
  dv = _shapes(sagan.discriminator_from_config(m), jnp.zeros((2, 128, 128, 3)),
               jnp.zeros((2,), jnp.int32), update_sn=False)
  assert _count(gv["params"]) == g
  assert _count(dv["params"]) == d


def test_d_attention_sizes_match_block_outputs():
  arch = architecture(128, 64)
  assert [b.out_res for b in arch.d_blocks] == [64, 32, 16, 8, 4, 4]
  assert [b.out_res for b in arch.g_blocks] == [8, 16, 32, 64, 128]
  assert [b.out_ch for b in arch.g_blocks] == [1024, 512, 256, 128, 64]
  with pytest.raises(ValueError, match="not supported"):
    architecture(48, 64)


# Each config.model field with another valid value for the tiny config (resolution 16, ch 16,
# attention at 8). A new model field must be added here: the test then says whether it
# belongs in sagan.SHAPE_FIELDS (the fields a checkpoint restore compares).
_OTHER_VALUE = {
    "resolution": 32, "ch": 24, "d_ch": 8, "z_dim": 16, "num_classes": 0,
    "g_attention": (), "d_attention": (), "g_residual": (8,), "d_residual": (8,),
    "g_sn": False, "d_sn": False, "d_relu_shortcut": True,
    "sn_eps": 1e-6, "sn_init_iters": 1, "bn_eps": 1e-3, "bn_momentum": 0.5,
    "bn_group_size": 4, "init": "orthogonal", "dtype": "bfloat16", "conv_impl": "xla",
    "attention_impl": "xla",
}


def _variable_trees(m):
  g, d = sagan.generator_from_config(m), sagan.discriminator_from_config(m)
  z, y = jnp.zeros((2, m.z_dim)), jnp.zeros((2,), jnp.int32)
  x = jnp.zeros((2, m.resolution, m.resolution, 3))
  shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)
  return (shapes(_shapes(g, z, y, train=False)), shapes(_shapes(d, x, y, update_sn=False)))


def test_shape_fields_are_exactly_the_fields_that_change_the_variables():
  from sagan_jax import preflight
  base = load_config("tiny")
  assert set(_OTHER_VALUE) == set(base.model.keys()), "classify the new config.model field"
  before = _variable_trees(base.model)
  for field, value in _OTHER_VALUE.items():
    c = load_config("tiny")
    c.model[field] = value
    preflight.check_config(c)
    changed = _variable_trees(c.model) != before
    assert changed == (field in sagan.SHAPE_FIELDS), (field, changed)
