r"""The numerics that differ on an accelerator, then training speed with MFU; one JSON file.

  python benchmarks/accelerator_check.py --out accelerator_check.json     # on a GPU/TPU host
  python benchmarks/accelerator_check.py --dry-run --out /tmp/check.json  # CPU, tiny sizes

(`benchmarks/accelerator_check.sh` installs the matching jax wheel into a
fresh virtual environment first and runs this.) In order, each part timed
and recorded, a failing part recorded and the next one run:

  devices     jax's backend, devices and their kind
  conv        every implementation of models/conv.py (and the fused
              up/down resampling rewrites) against the plain XLA conv on the
              same device: values and both gradients, float32 at 'highest'
              matmul precision (must agree to float32 rounding), float32 at
              the default precision (TF32 on NVIDIA Ampere and later: within
              1e-2) and bfloat16 inputs (within 5e-2)
  attention   each attention implementation (models/attention.py; cuDNN's
              fused kernel on NVIDIA GPUs, in bfloat16) against the float32
              einsum path: values and gradients
  train_step  one full train step of configs/tiny.py on the device against
              the float32 CPU result from the same state and inputs (the
              plain XLA convs and einsum attention on the CPU), in float32
              at 'highest' precision, float32 at the default precision and
              bfloat16 compute: losses, and the parameter updates
  benchmark   benchmarks/train_speed.py on configs/imagenet128.py at batch
              256 in bfloat16 (--dry-run: configs/tiny.py), with MFU against
              the chip's datasheet dense bf16 peak (PEAK_TFLOPS, or
              --peak_tflops) and against the bf16 matmul rate it measures;
              batch 128 if 256 does not fit
  train_run   the README's digits default as a user runs it (`python -m
              sagan_jax.main --config configs/digits.py`, --dry-run:
              configs/tiny.py) on this device in a fresh workdir, then
              `sagan_jax.evaluate --digits_score`: wall time, the in-training
              evaluations and the final score (checkpoints, summaries and the
              evaluators on the device); reported, not judged

Errors are max|a - b| / max|b| over each array (gradients included). Each
part prints one line of its figures as it ends, and the JSON report is
rewritten after every part, so a check cut short keeps what finished. A part
that cannot run here (no cuDNN on a TPU, an unknown chip's peak, time out of
--budget_s) is listed under `not_done` and printed at the end; the exit
status is 1 if any check failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# This process holds device memory only as it needs it: the benchmark and the training run
# are child processes that take the GPU's usual share (jax preallocates 75% by default).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Dense bfloat16 datasheet peaks, TFLOP/s, by a lowercase piece of jax's device_kind.
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "tpu v4": 275.0,
               "tpu v5 lite": 197.0, "tpu v5e": 197.0}
# Tolerances on max|a - b| / max|b| by how the device computed.
TOL = {"highest": 1e-5, "default": 1e-2, "bfloat16": 5e-2}
TRAIN_TOL = {"highest": 1e-4, "default": 2e-2, "bfloat16": 1e-1}
PARTS = ("conv", "attention", "train_step", "benchmark", "train_run")


def rel_err(a, b) -> float:
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = float(np.max(np.abs(b))) if b.size else 0.0
  return float(np.max(np.abs(a - b)) / max(scale, 1e-30)) if b.size else 0.0


def peak_tflops(device_kind: str) -> float | None:
  """The datasheet dense bf16 peak of a chip from jax's device_kind, None if unknown."""
  kind = device_kind.lower()
  for name, peak in PEAK_TFLOPS.items():
    if name in kind:
      return peak
  return None


def devices_info() -> dict:
  import jax
  devs = jax.devices()
  return {"backend": jax.default_backend(), "jax": jax.__version__,
          "device_kind": devs[0].device_kind, "count": len(devs),
          "devices": [str(d) for d in devs]}


def _grads(f, *args):
  """(f(*args), d sum(f * r) / d args) for a fixed random cotangent r."""
  import jax
  import jax.numpy as jnp
  y = f(*args)
  r = jax.random.normal(jax.random.PRNGKey(3), y.shape, jnp.float32)
  loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32) * r)  # noqa: E731
  return y, jax.grad(loss, argnums=tuple(range(len(args))))(*args)


def _compare(cases: dict, modes) -> dict:
  """{case: {mode: error}} of fn against ref_fn (float32, 'highest') for cases
  {name: (fn, ref_fn, args)}; one program per mode (compiles dominate on a CPU)."""
  import jax
  import jax.numpy as jnp

  def every(which, cast):
    def f(all_args):
      return {k: _grads(c[which], *a) for (k, c), a in zip(cases.items(), all_args)}
    return jax.jit(f)([[cast(a) for a in c[2]] for c in cases.values()])

  with jax.default_matmul_precision("highest"):
    ref = every(1, lambda a: a)
  out = {k: {} for k in cases}
  for mode in modes:
    cast = (lambda a: a.astype(jnp.bfloat16)) if mode == "bfloat16" else (lambda a: a)
    with jax.default_matmul_precision("highest" if mode == "highest" else None):
      got = every(0, cast)
    for k in cases:
      err = max(rel_err(g, r) for g, r in zip(jax.tree.leaves(got[k]), jax.tree.leaves(ref[k])))
      out[k][mode] = {"max_rel_err": err, "tol": TOL[mode], "ok": err <= TOL[mode]}
  return out


def conv_checks(small: bool) -> dict:
  """Every conv implementation, and the fused resampling, against XLA's conv."""
  import jax
  from sagan_jax.models import conv, resampling
  n, hw, c = (2, 8, 8) if small else (16, 32, 64)
  shapes = {"3x3": (3, 3, c, 2 * c), "1x1": (1, 1, c, 2 * c), "rgb": (3, 3, c, 3)}
  ks = jax.random.split(jax.random.PRNGKey(0), 8)
  x = jax.random.normal(ks[0], (n, hw, hw, c))
  cases = {}
  for name, ws in shapes.items():
    w = 0.1 * jax.random.normal(ks[1], ws)
    for impl in conv.IMPLS:
      cases[f"{name}/{impl}"] = (lambda x, w, i=impl: conv.conv2d(x, w, i), conv.conv_xla,
                                 (x, w))
  w = 0.1 * jax.random.normal(ks[2], (3, 3, c, c))
  for resample in ("up", "down"):
    def literal(x, w, r=resample):
      return resampling.resampled_conv(x, w, lambda *_: "xla", r, fuse=False)
    for impl in conv.IMPLS:
      def fused(x, w, i=impl, r=resample):
        return resampling.resampled_conv(x, w, lambda *_: i, r, fuse=True)
      cases[f"{resample}/{impl}"] = (fused, literal, (x, w))
  return _compare(cases, ("highest", "default", "bfloat16"))


def attention_checks(small: bool) -> dict:
  """attention.attend per implementation against the float32 einsum path."""
  import jax
  from sagan_jax.models import attention
  b, n, d, cv = (2, 64, 4, 16) if small else (4, 4096, 32, 128)  # 64x64 maps, M = N/4
  ks = jax.random.split(jax.random.PRNGKey(1), 3)
  args = (jax.random.normal(ks[0], (b, n, d)), jax.random.normal(ks[1], (b, n // 4, d)),
          jax.random.normal(ks[2], (b, n // 4, cv)))

  def ref(t, p, g):
    return attention.attend(t, p, g, "einsum")

  def case(impl):
    return (lambda t, p, g: attention.attend(t, p, g, impl), ref, args)
  out = _compare({impl: case(impl) for impl in ("einsum", "xla")},
                 ("highest", "default", "bfloat16"))
  if jax.default_backend() == "gpu":  # cuDNN's fused kernel takes bfloat16/float16 only
    out.update(_compare({"cudnn": case("cudnn")}, ("bfloat16",)))
  return out


def _one_step(config, device, state, batch_np, mode):
  """(metrics, new state) of one train step of `config` on `device` from `state`."""
  import jax
  import numpy as np
  from sagan_jax import parallel, state as state_lib, train
  mesh = jax.make_mesh((1,), (parallel.DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=[device])
  models = state_lib.make_models(config)
  rep = parallel.replicated(mesh)
  s = jax.device_put(state, rep)
  b = {k: jax.device_put(v, parallel.batch_sharding(mesh, 1)) for k, v in batch_np.items()}
  rng = jax.device_put(np.asarray(jax.random.PRNGKey(7)), rep)
  with jax.default_matmul_precision("highest" if mode == "highest" else None):
    new, metrics = train.make_train_step(models, config, mesh)(s, b, rng)
  return jax.device_get(metrics), jax.device_get(new)


def _update_err(new, ref, init) -> float:
  """||(new - init) - (ref - init)|| / ||ref - init|| over G's, D's and the EMA's params."""
  import jax
  import numpy as np
  num = den = 0.0
  for part in ("g", "d", "ema"):
    for a, b, c in zip(*(jax.tree.leaves(getattr(s, part)["params"]) for s in (new, ref, init))):
      da, db = np.asarray(a, np.float64) - c, np.asarray(b, np.float64) - c
      num, den = num + float(np.sum((da - db) ** 2)), den + float(np.sum(db ** 2))
  return float(np.sqrt(num / max(den, 1e-30)))


def train_step_checks(small: bool) -> dict:
  """One train step on the default device against the float32 CPU result (on a CPU, the
  dry run: the 'auto' fast paths against the plain ones; 'default' = 'highest' there)."""
  del small  # configs/tiny.py either way
  import jax
  import numpy as np
  from sagan_jax import config_base, state as state_lib
  path = os.path.join(ROOT, "configs", "tiny.py")
  # Adam's first step is lr * g / (|g| + eps): ~lr * sign(g), which rounding flips for
  # gradients near 0. With lr = eps = 1e3 it is ~g, so the updates compare the gradients.
  adam = {"optim.d_lr": 1e3, "optim.g_lr": 1e3, "optim.eps": 1e3}
  ref_cfg = config_base.load(path, {**adam, "model.conv_impl": "xla",
                                    "model.attention_impl": "einsum"})
  cpu = jax.devices("cpu")[0]
  models = state_lib.make_models(ref_cfg)
  with jax.default_device(cpu):
    init = jax.device_get(jax.jit(lambda k: state_lib.init_state(models, ref_cfg, k))(
        jax.random.PRNGKey(ref_cfg.seed)))
  n, bsz, r = ref_cfg.optim.n_critic, ref_cfg.batch_size, ref_cfg.model.resolution
  rs = np.random.default_rng(0)
  batch = {"image": rs.integers(0, 256, (n, bsz, r, r, 3), dtype=np.uint8),
           "label": rs.integers(0, 10, (n, bsz)).astype(np.int32)}
  ref_m, ref_s = _one_step(ref_cfg, cpu, init, batch, "highest")
  modes = ("highest", "bfloat16") if jax.default_backend() == "cpu" else (
      "highest", "default", "bfloat16")
  out = {"config": "configs/tiny.py", "overrides": adam,
         "reference": "CPU, float32, conv xla, attention einsum"}
  for mode in modes:
    cfg = config_base.load(path, {**adam, **({"model.dtype": "bfloat16"}
                                             if mode == "bfloat16" else {})})
    m, s = _one_step(cfg, jax.devices()[0], init, batch, mode)
    losses = {k: rel_err(m[k], ref_m[k]) for k in ("d_loss", "g_loss", "d_real", "d_fake")}
    upd = _update_err(s, ref_s, init)
    worst = max(max(losses.values()), upd)
    out[mode] = {"loss_rel_err": losses, "update_rel_err": upd, "tol": TRAIN_TOL[mode],
                 "ok": worst <= TRAIN_TOL[mode]}
  return out


def _last_json(text: str) -> dict | None:
  lines = [ln for ln in text.splitlines() if ln.startswith("{")]
  return json.loads(lines[-1]) if lines else None


def _tail(text: str, n: int = 5) -> list[str]:
  return text.strip().splitlines()[-n:]


def benchmark(small: bool, peak: float | None, timeout_s: float) -> dict:
  """train_speed.py in a subprocess (its JSON line); batch 128 if 256 runs out of memory."""
  if small:
    runs = [["--configs", "configs/tiny.py", "--steps", "2", "--warmup", "1"]]
  else:
    base = ["--configs", "configs/imagenet128.py", "--steps", "10", "--warmup", "2"]
    runs = [base + ["--set", f"batch_size={b}", "model.dtype=bfloat16"] for b in (256, 128)]
  deadline = time.monotonic() + timeout_s
  tried = []
  for args in runs:
    left = deadline - time.monotonic()
    if left < 30:
      break
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_speed.py"), *args]
    if peak:
      cmd += ["--peak_tflops", str(peak)]
    try:
      p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
      tried.append({"args": args, "error": f"timed out after {left:.0f} s"})
      break
    result = _last_json(p.stdout)
    if p.returncode == 0 and result:
      return {**result, "args": args, "peak_tflops": peak, "tried": tried}
    tried.append({"args": args, "error": _tail(p.stderr, 3) or [p.returncode]})
    if not any(s in p.stderr for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")):
      break   # only running out of memory is worth a smaller batch
  raise RuntimeError(f"train_speed.py did not finish: {tried}")


def train_run(small: bool, timeout_s: float) -> dict:
  """The digits default as the README runs it, on this device, in a fresh workdir; then
  `evaluate --digits_score` on its EMA samples (--dry-run: configs/tiny.py, 500 samples)."""
  config = "configs/tiny.py" if small else "configs/digits.py"
  deadline = time.monotonic() + timeout_s
  with tempfile.TemporaryDirectory(prefix="sagan_jax_check_") as workdir:
    cmd = [sys.executable, "-m", "sagan_jax.main", "--config", config, "--workdir", workdir]
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=max(deadline - time.monotonic(), 1))
    out = {"command": " ".join(["python"] + cmd[1:-1] + ["WORKDIR"]),
           "train_wall_s": round(time.monotonic() - t, 1), "returncode": p.returncode}
    if p.returncode != 0:
      raise RuntimeError(f"training exited {p.returncode}: {_tail(p.stderr)}")
    log = p.stdout.splitlines()
    out["progress"] = [ln for ln in log if ln.startswith("step ")][-2:]
    evals = os.path.join(workdir, "eval.jsonl")
    if os.path.exists(evals):
      with open(evals) as f:
        out["evals"] = [json.loads(ln) for ln in f if ln.strip()]
    cmd = [sys.executable, "-m", "sagan_jax.evaluate", "--workdir", workdir, "--num_samples",
           "500" if small else "1000", "--digits_score", "--noinception"]
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=max(deadline - time.monotonic(), 1))
    out["evaluate_wall_s"] = round(time.monotonic() - t, 1)
    if p.returncode != 0:
      raise RuntimeError(f"evaluate exited {p.returncode}: {_tail(p.stderr)}")
    out["evaluate"] = _last_json(p.stdout)
  return out


def _failed(result) -> list[str]:
  """Names of the checks (dicts with 'ok': False) in a nested result."""
  if not isinstance(result, dict):
    return []
  if result.get("ok") is False:
    return [""]
  return [f"{k}/{sub}".rstrip("/") for k, v in result.items() for sub in _failed(v)]


def summary(name: str, result: dict) -> str:
  """One line of a finished part's headline figures ('' when it has none)."""
  if name == "benchmark" and "sec_per_iteration" in result:
    return (f"{result['config']} batch {result['batch_size']} {result['dtype']}: "
            f"{result['sec_per_iteration']} s/iteration, {result['images_per_sec']} img/s, "
            f"{result['achieved_gflops']} GFLOP/s, compile {result['compile_s']} s, "
            f"MFU {result['mfu']}" + (f" (of the measured matmul rate: {result['mfu_measured']})"
                                      if "mfu_measured" in result else ""))
  if name == "train_run" and "train_wall_s" in result:
    score = result.get("evaluate") or {}
    return (f"{result['command']}: {result['train_wall_s']} s; evaluate: "
            + ", ".join(f"{k} {v:.4g}" for k, v in score.items()
                        if k.startswith("digits_") and isinstance(v, float)))
  worst = {}  # numerics parts: the largest error per mode
  for case in result.values():
    if isinstance(case, dict):
      for mode, r in case.items():
        if isinstance(r, dict) and "max_rel_err" in r:
          worst[mode] = max(worst.get(mode, 0.0), r["max_rel_err"])
  for mode, r in result.items():  # train_step: {mode: {loss_rel_err, update_rel_err, ...}}
    if isinstance(r, dict) and "update_rel_err" in r:
      worst[mode] = max(r["update_rel_err"], *r["loss_rel_err"].values())
  return ", ".join(f"{mode} worst {err:.2g}" for mode, err in worst.items())


def save(report: dict, path: str) -> None:
  """Writes the report whole or not at all (a killed check leaves the last complete one)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, path)


def run(args) -> dict:
  """Every part in order within the time budget; the report as one dict, written to
  args.out after every part (what finished survives a kill or a time-out)."""
  start = time.monotonic()
  report = {"dry_run": args.dry_run, "parts": {}, "failed": [], "not_done": []}
  info = devices_info()
  report["devices"] = info
  print(f"devices: {info['backend']} x{info['count']} {info['device_kind']}", flush=True)
  if not args.dry_run and info["backend"] == "cpu":
    report["not_done"].append("no GPU/TPU visible: checks ran on the CPU (use --dry-run)")
  peak = args.peak_tflops or peak_tflops(info["device_kind"])
  if not peak and info["backend"] != "cpu":
    report["not_done"].append(f"MFU: no datasheet peak known for {info['device_kind']!r} "
                              "(pass --peak_tflops)")
  if info["backend"] != "gpu":
    report["not_done"].append("attention 'cudnn': needs an NVIDIA GPU")
  parts = {"conv": lambda: conv_checks(args.dry_run),
           "attention": lambda: attention_checks(args.dry_run),
           "train_step": lambda: train_step_checks(args.dry_run),
           "benchmark": lambda: benchmark(args.dry_run, peak, args.budget_s
                                          - (time.monotonic() - start)),
           "train_run": lambda: train_run(args.dry_run, args.budget_s
                                          - (time.monotonic() - start))}
  for name in args.parts:
    if time.monotonic() - start > args.budget_s - 30:
      report["not_done"].append(f"{name}: out of time (--budget_s {args.budget_s:.0f})")
      continue
    t = time.monotonic()
    try:
      result = parts[name]()
    except Exception as e:  # noqa: BLE001 - recorded; the next part still runs
      result = {"error": f"{type(e).__name__}: {e}"[:2000]}
      report["not_done"].append(f"{name}: {result['error'][:300]}")
    result["seconds"] = round(time.monotonic() - t, 1)
    report["parts"][name] = result
    report["failed"] += [f"{name}/{f}" for f in _failed(result)]
    report["seconds"] = round(time.monotonic() - start, 1)
    save(report, args.out)
    line = summary(name, result)
    print(f"{name}: {result['seconds']} s, failed: {_failed(result) or 'none'}"
          + (f"; {line}" if line else ""), flush=True)
  report["seconds"] = round(time.monotonic() - start, 1)
  save(report, args.out)
  return report


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dry-run", "--cpu", dest="dry_run", action="store_true",
                  help="tiny sizes (and configs/tiny.py for the benchmark): the CPU rehearsal")
  ap.add_argument("--out", default="accelerator_check.json",
                  help="the JSON report (rewritten after every part)")
  ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS,
                  help="which parts, in this order (default: all)")
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="the chip's peak for MFU (default: PEAK_TFLOPS by device kind)")
  ap.add_argument("--budget_s", type=float, default=540.0,
                  help="stop starting parts after this many seconds (the whole check < 10 min)")
  args = ap.parse_args(argv)
  report = run(args)
  for name in ("benchmark", "train_run"):
    line = summary(name, report["parts"].get(name, {}))
    if line:
      print(f"{name}: {line}")
  for line in report["not_done"]:
    print(f"not done: {line}")
  for name in report["failed"]:
    print(f"FAILED: {name}")
  print(f"wrote {args.out} ({report['seconds']} s)")
  return 1 if report["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
