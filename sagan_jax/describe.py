r"""Parameter table, FLOPs and memory of a config, without training.

  python -m sagan_jax.describe --config configs/imagenet128.py
  python -m sagan_jax.describe --config configs/imagenet128.py --mesh 8 --batch 256

Prints a per-module parameter table, then, as the last line, one JSON
object: generator_params / discriminator_params (trainable), the SN and BN
state sizes, and (unless --nocompile) train_gflops_per_image and
g_forward_gflops_per_image from XLA's cost analysis of the step (`counted_flops`:
its loops unrolled) and the memory XLA plans for the compiled step.
With --mesh N the step is compiled for N devices (virtual CPU devices when
there is no accelerator) and the per-device memory XLA plans is reported, so
you know whether a batch fits before launching. The FLOPs are those of the
convolutions `model.conv_impl` picks on this platform (on a CPU, `auto`'s fused
rewrites do fewer than an accelerator's plain convolutions; add
`--config.model.conv_impl=xla` to count those); the JSON says which (`conv_impl`,
`platform`). `sagan-jax describe ...` is the same command.
"""

from __future__ import annotations

import json

from absl import app, flags

from sagan_jax import command, errors

FLAGS = flags.FLAGS


def count(tree) -> int:
  import jax
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def module_rows(params, prefix: str) -> list[tuple[str, int]]:
  """(name, trainable params) per top-level submodule, model order."""
  return [(f"{prefix}/{name}", count(sub)) for name, sub in params.items()]


def _step_args(config, mesh, batch: int):
  """Abstract (batch, rng) of the train step for `batch` global images on `mesh`."""
  import jax
  import jax.numpy as jnp
  from sagan_jax import parallel
  m = config.model
  rep = parallel.replicated(mesh)
  bs = parallel.batch_sharding(mesh, 1)
  n = config.optim.n_critic
  b = {"image": jax.ShapeDtypeStruct((n, batch, m.resolution, m.resolution, 3), jnp.uint8,
                                     sharding=bs),
       "label": jax.ShapeDtypeStruct((n, batch), jnp.int32, sharding=bs)}
  return b, jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)


def compile_step(config, models, state, mesh, batch: int):
  """AOT-compiles the train step for `batch` global images on `mesh` (state: abstract)."""
  from sagan_jax import train
  return train.make_train_step(models, config, mesh).lower(
      state, *_step_args(config, mesh, batch)).compile()


def step_flops(config, models, state, mesh, batch: int) -> float:
  """FLOPs of one train step of `batch` global images, all devices together (`counted_flops`)."""
  from sagan_jax import train
  return counted_flops(lambda: train.make_train_step(models, config, mesh).lower(
      state, *_step_args(config, mesh, batch)), devices=mesh.devices.size)


def g_forward_flops(config, models, state, batch: int) -> float:
  import jax
  import jax.numpy as jnp
  from sagan_jax import sampling
  m = config.model
  z = jax.ShapeDtypeStruct((batch, m.z_dim), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return counted_flops(lambda: sampling.jitted_generate(models.generator).lower(state.g, z, y))


def counted_flops(lower, compiled=None, devices: int = 1) -> float:
  """XLA's FLOP count of the whole program `lower()` returns (a `Lowered`; it must jit a fresh
  function) over all its devices, traced with models/loops.py's loops unrolled: a loop's
  body counts once in XLA's cost analysis, so the loops' programs would under-report their
  arithmetic. The count is of the program before XLA's optimisation passes (within ~1% of the
  compiled program's, which can add or fold a few operations); for a jit over a mesh that is
  the global program, before it is split across the devices. Where the backend has no such
  analysis before compiling (jax 0.11's GPU backend returns None), it is the compiled
  program's: `compiled`, if given (the same program already compiled; the loops run on CPUs
  only, so nothing is rolled there), else `lower()` compiled. A compiled program is one
  device's share, so that count is multiplied by `devices` (the mesh's size)."""
  from sagan_jax.models import loops
  scale = 1
  with loops.unrolled():
    lowered = lower()
    cost = lowered.cost_analysis()
    if cost is None:
      cost, scale = (compiled or lowered.compile()).cost_analysis(), devices
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float((cost or {}).get("flops", 0.0)) * scale


def describe(config, batch: int | None = None, mesh_size: int = 0,
             compile_flops: bool = True) -> dict:
  from sagan_jax import parallel, preflight, state as state_lib
  preflight.check_config(config)
  mesh = parallel.make_mesh(mesh_size) if compile_flops else None
  models, state = state_lib.abstract_state(config, mesh)
  rows = module_rows(state.g["params"], "G") + module_rows(state.d["params"], "D")
  width = max(len(r[0]) for r in rows)
  print(f"{'module':<{width}}  {'params':>14}")
  for name, n in rows:
    print(f"{name:<{width}}  {n:>14,}")
  info = {
      "config_resolution": config.model.resolution,
      "generator_params": count(state.g["params"]),
      "discriminator_params": count(state.d["params"]),
      "generator_spectral_state": count(state.g["spectral"]),
      "discriminator_spectral_state": count(state.d["spectral"]),
      "generator_bn_state": count(state.g["batch_stats"]),
  }
  print(f"{'G total (trainable)':<{width}}  {info['generator_params']:>14,}")
  print(f"{'D total (trainable)':<{width}}  {info['discriminator_params']:>14,}")
  if compile_flops:
    import jax
    info.update({"conv_impl": config.model.conv_impl, "platform": jax.default_backend()})
    print(f"FLOPs below: model.conv_impl={config.model.conv_impl} on {jax.default_backend()}"
          + (" (CPU rewrites: fewer FLOPs than an accelerator's convolutions; "
             "--config.model.conv_impl=xla counts those)"
             if jax.default_backend() == "cpu" and config.model.conv_impl != "xla" else ""))
    n_dev = mesh.devices.size
    batch = batch or config.batch_size
    parallel.check_batch_size(batch, mesh)
    compiled = compile_step(config, models, state, mesh, batch)
    flops = step_flops(config, models, state, mesh, batch)
    info.update({
        "batch_size": batch,
        "devices": n_dev,
        "train_gflops_per_iteration": flops / 1e9,
        "train_gflops_per_image": flops / batch / 1e9,
        "g_forward_gflops_per_image": g_forward_flops(config, models, state, 8) / 8 / 1e9,
    })
    mem = compiled.memory_analysis()
    if mem is not None:
      per_dev = {k: int(getattr(mem, k, 0) or 0) for k in (
          "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes", "generated_code_size_in_bytes")}
      total = (per_dev["argument_size_in_bytes"] + per_dev["output_size_in_bytes"]
               - per_dev["alias_size_in_bytes"] + per_dev["temp_size_in_bytes"])
      info["per_device_memory_gib"] = total / 2**30
      info["per_device_memory_bytes"] = per_dev
  return info


@command.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  errors.check_flag(FLAGS.batch is None or FLAGS.batch >= 1, "batch", FLAGS.batch,
                    "must be a positive integer (default: the config's batch_size)")
  errors.check_flag(FLAGS.mesh >= 0, "mesh", FLAGS.mesh,
                    "must be an integer >= 0 (0: all visible devices)")
  import jax
  if FLAGS.mesh:
    # Virtual devices only matter (and only work) before the CPU backend starts.
    jax.config.update("jax_num_cpu_devices", FLAGS.mesh)
  info = describe(FLAGS.config, FLAGS.batch, FLAGS.mesh, FLAGS.compile)
  print(json.dumps(info))


def define_flags() -> None:
  command.define_config_flag("Config: a built-in name (digits, imagenet128:official, ...) or a "
                           "file (configs/*.py[:variant]).")
  flags.DEFINE_integer("batch", None, "Global batch to compile for (default: config's).")
  flags.DEFINE_integer("mesh", 0, "Compile for this many devices (0: all visible). "
                       "On CPU, that many virtual devices are created.")
  flags.DEFINE_bool("compile", True, "Compile the train step for FLOPs and memory "
                    "(--nocompile: only count parameters).")
  flags.mark_flag_as_required("config")


if __name__ == "__main__":
  command.run(main, define_flags)
