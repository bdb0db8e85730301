"""What both converters share: PyTorch layouts -> ours, spectral-norm state, Adam state.

Layouts (PyTorch -> sagan_jax):
  conv weight [out, in, kh, kw]  -> kernel [kh, kw, in, out]   (both cross-correlate)
  linear weight [out, in]        -> kernel [in, out]
  embedding [classes, C]         -> [classes, C]
  G's input linear: PyTorch views its output features as (C, 4, 4), we reshape
  them as (4, 4, C), so its columns (and bias, and SN vector u) are permuted.

Spectral norm: the source's evaluation divides each weight by some sigma_src
(torch's spectral_norm: u.W v with the stored u and v; BigGAN-PyTorch: one
more power iteration from its stored u, not saved). Ours in evaluation
divides by ||W^T u|| (less a term in eps) for the stored u. `carry_sigma`
stores the source's u direction with the length that makes that exactly
sigma_src, so our evaluation agrees whether or not the vectors had
converged; a training step re-normalises u at its first power iteration.

Every source tensor is used once or dropped on purpose (`StateDict`), every
leaf of ours is filled once and shape-checked (`TreeBuilder`): an unknown,
unused or missing tensor, or a shape that differs, is a CheckpointError
naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from sagan_jax import torch_pickle
from sagan_jax.errors import CheckpointError

# State-dict entries that are buffers, not trainable parameters (so not in the optimiser).
BUFFER_NAMES = ("u0", "sv0", "stored_mean", "stored_var", "accumulation_counter",
                "running_mean", "running_var", "num_batches_tracked", "weight_u", "weight_v")
_HINT = ("the checkpoint's model differs from the config's: check model.resolution, ch, d_ch, "
         "z_dim, num_classes, g_attention and d_attention")


def identity(x: np.ndarray) -> np.ndarray:
  return x


def conv_layout(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight [out, in, kh, kw] -> our kernel [kh, kw, in, out]."""
  return w.transpose(2, 3, 1, 0)


def dense_layout(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight [out, in] -> our kernel [in, out]."""
  return w.T


def chw_to_hwc(channels: int, width: int = 4) -> np.ndarray:
  """perm with ours[i] = theirs[perm[i]]: features ordered (C, H, W) -> (H, W, C)."""
  return np.arange(channels * width * width).reshape(channels, width, width).transpose(
      1, 2, 0).reshape(-1)


def l2_normalize(x: np.ndarray, eps: float) -> np.ndarray:
  """torch's F.normalize: x / max(||x||, eps)."""
  return x / max(float(np.linalg.norm(x)), eps)


def carry_sigma(w_mat: np.ndarray, u: np.ndarray, sigma: float, eps: float) -> np.ndarray:
  """Our u for W [out, in] whose evaluation sigma is exactly `sigma` (see the top).

  Our evaluation computes v = W^T u / (||W^T u|| + eps) and sigma = u.W v =
  n^2 / (n + eps) with n = ||W^T u||; so n = (sigma + sqrt(sigma^2 + 4 sigma eps)) / 2.
  """
  u_hat = u / np.linalg.norm(u)
  n = (sigma + np.sqrt(sigma * sigma + 4.0 * sigma * eps)) / 2.0
  return u_hat * (n / np.linalg.norm(w_mat.T @ u_hat))


def load(path: str) -> Any:
  """A torch.save file, read without torch; a file it cannot read is a CheckpointError."""
  try:
    return torch_pickle.load(path)
  except torch_pickle.TorchFileError as e:
    raise CheckpointError(str(e)) from None


@dataclasses.dataclass
class Source:
  """A peer's checkpoint folder, read: state_dicts, optimiser states, step and settings."""
  framework: str
  folder: str
  g: StateDict | None = None
  d: StateDict | None = None
  ema: StateDict | None = None
  optim: dict[str, tuple[dict, str]] = dataclasses.field(default_factory=dict)  # 'G'/'D'
  step: int | None = None
  # Config fields the source's code fixes (dotted name -> value): eps, momentum, betas.
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Architecture its own training config states: our field -> (value, its option name).
  arch: dict[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SNWeight:
  """A spectrally normalised weight as the source stores it, in float64."""
  weight: np.ndarray   # the unnormalised weight, source layout
  u: np.ndarray        # left singular vector estimate [out]
  sigma: float         # what the source divides by in evaluation


class StateDict:
  """A source state_dict being consumed: each tensor is taken once or dropped on purpose."""

  def __init__(self, tensors: dict, name: str):
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
      raise CheckpointError(f"{name}: not a state_dict (a dict of named tensors)")
    keys = list(tensors)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel
      tensors = {k[len("module."):]: v for k, v in tensors.items()}
    self.tensors, self.name, self.used = dict(tensors), name, set()

  def has(self, key: str) -> bool:
    return key in self.tensors

  def take(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      raise CheckpointError(f"{self.name} has no tensor {key!r}, which this config's model "
                            f"needs: {_HINT}.")
    self.used.add(key)
    return np.asarray(self.tensors[key], np.float64)

  def drop(self, key: str) -> None:
    """Marks a tensor as deliberately unused (e.g. BN's num_batches_tracked)."""
    if key in self.tensors:
      self.used.add(key)

  def param_keys(self) -> list[str]:
    """The trainable tensors in file order: the order of the source's optimiser state."""
    return [k for k in self.tensors if k.rsplit(".", 1)[-1] not in BUFFER_NAMES]

  def check_all_used(self) -> None:
    left = [k for k in self.tensors if k not in self.used]
    if left:
      more = f" (and {len(left) - 3} more)" if len(left) > 3 else ""
      raise CheckpointError(f"{self.name}: tensor {', '.join(map(repr, left[:3]))}{more} "
                            f"has no place in this config's model: {_HINT}.")


@dataclasses.dataclass
class MomentRule:
  """How a source parameter's Adam moments become ours: layout, then / scale (m), / scale^2 (v)."""
  path: tuple[str, ...]
  layout: Callable[[np.ndarray], np.ndarray]
  scale: float = 1.0


class TreeBuilder:
  """Fills one model's variables {collection: nested dict} against a template's shapes."""

  def __init__(self, template: dict, sd: StateDict, sn_eps: float):
    self.template, self.sd, self.sn_eps = template, sd, sn_eps
    self.tree: dict[str, Any] = {}
    self.moments: dict[str, MomentRule] = {}
    self.mismatches: list[str] = []   # every shape mismatch, reported together by result()

  def put(self, collection: str, path: tuple[str, ...], value: np.ndarray, source: str):
    want = self.template[collection]
    for p in path:
      if not isinstance(want, dict) or p not in want:
        raise CheckpointError(f"{self.sd.name}: tensor {source!r} maps to "
                              f"{collection}/{'/'.join(path)}, which this config's model "
                              f"lacks: {_HINT}.")
      want = want[p]
    value = np.asarray(value)
    if tuple(value.shape) != tuple(want.shape):
      self.mismatch(source, value.shape, f"{collection}/{'/'.join(path)}", want.shape)
      return
    node = self.tree.setdefault(collection, {})
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value.astype(want.dtype)

  def mismatch(self, source: str, got, where: str, want) -> None:
    """Records one tensor whose shape differs; `result` lists them all in one error."""
    self.mismatches.append(f"tensor {source!r} gives shape {tuple(got)} for {where}, the "
                           f"config's model needs {tuple(want)}")

  def param(self, path: tuple[str, ...], key: str, value: np.ndarray,
            layout: Callable = identity, scale: float = 1.0, offset: float = 0.0) -> None:
    """params/<path> = layout(value) * scale + offset; its Adam moments follow the same map."""
    self.put("params", path, layout(value) * scale + offset, key)
    self.moments[key] = MomentRule(path, layout, scale)

  def result(self) -> dict:
    """The filled tree; every template leaf must have been set."""
    if self.mismatches:
      n = len(self.mismatches)
      raise CheckpointError(f"{self.sd.name}: {n} tensor{'s' * (n > 1)} of another shape than "
                            "the config's model: " + "; ".join(self.mismatches) + f". {_HINT}.")

    def check(want, got, where):
      for k, v in want.items():
        if k not in got:
          raise CheckpointError(f"{self.sd.name}: nothing in the checkpoint fills "
                                f"{where}{k}: {_HINT}.")
        if isinstance(v, dict):
          check(v, got[k], f"{where}{k}/")
    check(self.template, self.tree, "")
    self.sd.check_all_used()
    return self.tree

  # Layers -------------------------------------------------------------------

  def sn_layer(self, path: tuple[str, ...], key: str, sn: SNWeight, bias_key: str | None,
               kind: str, perm: np.ndarray | None = None) -> None:
    """An SN conv / dense / embedding: kernel (or table), bias, and spectral u and sigma."""
    layout = {"conv": conv_layout, "dense": dense_layout, "embed": identity}[kind]
    u = carry_sigma(sn.weight.reshape(sn.weight.shape[0], -1), sn.u, sn.sigma, self.sn_eps)
    if perm is not None:   # G's input linear: output features (C, H, W) -> (H, W, C)
      if sn.weight.shape[0] != perm.size:
        want = self.template["params"]
        for p in path:
          want = want[p]
        self.mismatch(key, sn.weight.T.shape, f"params/{'/'.join(path)}/kernel",
                      want["kernel"].shape)
        return
      layout = _permuted(layout, perm, axis=-1)
      u = u[perm]
    self.param(path + ("embedding" if kind == "embed" else "kernel",), key, sn.weight, layout)
    if bias_key is not None:
      self.param(path + ("bias",), bias_key, self.sd.take(bias_key),
                 identity if perm is None else _permuted(identity, perm, axis=-1))
    self.put("spectral", path + ("sn", "u"), u, key)
    self.put("spectral", path + ("sn", "sigma"), np.float64(sn.sigma), key)

  def bn_stats(self, path: tuple[str, ...], mean_key: str, var_key: str) -> None:
    self.put("batch_stats", path + ("mean",), self.sd.take(mean_key), mean_key)
    self.put("batch_stats", path + ("var",), self.sd.take(var_key), var_key)


def _permuted(layout: Callable, perm: np.ndarray, axis: int) -> Callable:
  return lambda w: np.take(layout(w), perm, axis=axis)


# Adam ----------------------------------------------------------------------

@dataclasses.dataclass
class AdamState:
  """A torch Adam state converted to our params' layout."""
  count: int
  mu: dict
  nu: dict
  hyper: dict   # lr, betas, eps, weight_decay of the source's first param group


def convert_adam(optim: dict, sd: StateDict, moments: dict[str, MomentRule], params: dict,
                 name: str) -> AdamState:
  """A torch.optim.Adam state_dict -> (count, mu, nu) over our params.

  The optimiser indexes parameters in the model's parameter order, which is
  the state_dict's order without its buffers. torch's `step` is the number
  of updates done, as optax's count is; both bias-correct with it the same
  way (torch >= 1.5; older torch folded the correction into eps).
  """
  groups = optim.get("param_groups") if isinstance(optim, dict) else None
  states = optim.get("state") if isinstance(optim, dict) else None
  if not groups or not isinstance(states, dict):
    raise CheckpointError(f"{name}: not a torch optimizer state_dict")
  order = [i for g in groups for i in g.get("params", [])]
  keys = sd.param_keys()
  if len(order) != len(keys):
    raise CheckpointError(f"{name} holds {len(order)} parameters, {sd.name} has {len(keys)}: "
                          "they are not from the same model.")
  g0 = groups[0]
  if g0.get("amsgrad") or float(g0.get("weight_decay", 0.0)) != 0.0:
    raise CheckpointError(f"{name}: Adam with amsgrad or weight decay cannot continue as "
                          "ours; convert with --nooptimizer to start a fresh optimiser.")
  mu, nu, steps = _zeros_like(params), _zeros_like(params), set()
  for index, key in zip(order, keys):
    s = states.get(index)
    if not s:        # a parameter that never had a gradient
      continue
    rule = moments[key]
    m = rule.layout(np.asarray(s["exp_avg"], np.float64)) / rule.scale
    v = rule.layout(np.asarray(s["exp_avg_sq"], np.float64)) / rule.scale ** 2
    _set(mu, rule.path, m.astype(np.float32))
    _set(nu, rule.path, v.astype(np.float32))
    steps.add(int(np.asarray(s["step"])))
  if len(steps) > 1:
    raise CheckpointError(f"{name}: parameters have different step counts {sorted(steps)}")
  hyper = {"lr": g0.get("lr"), "betas": tuple(g0.get("betas", ())), "eps": g0.get("eps")}
  return AdamState(steps.pop() if steps else 0, mu, nu, hyper)


def _zeros_like(tree):
  return {k: _zeros_like(v) if isinstance(v, dict) else np.zeros_like(v, np.float32)
          for k, v in tree.items()}


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for p in path[:-1]:
    tree = tree[p]
  if tree[path[-1]].shape != value.shape:
    raise CheckpointError(f"Adam moment of {'/'.join(path)} has shape {value.shape}, "
                          f"the parameter {tree[path[-1]].shape}")
  tree[path[-1]] = value


def fill_optax_state(empty, adam: AdamState):
  """Our optimiser state (optax.adam's chain) with the converted count and moments.

  `empty` is `tx.init(params)`: a tuple whose ScaleByAdamState gets count, mu
  and nu, and whose schedule state gets the same count (the schedule position
  is the number of updates done).
  """
  import jax.numpy as jnp
  out = []
  for part in empty:
    if hasattr(part, "mu"):
      part = part._replace(count=jnp.asarray(adam.count, part.count.dtype),
                           mu=adam.mu, nu=adam.nu)
    elif hasattr(part, "count"):
      part = part._replace(count=jnp.asarray(adam.count, part.count.dtype))
    out.append(part)
  return type(empty)(out)

