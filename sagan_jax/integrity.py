"""Whether a run directory is usable and its checkpoints whole: manifest, listing, checks.

Orbax writes step N into `checkpoints/N.orbax-checkpoint-tmp` and renames it
to `checkpoints/N` when every file is written (on GCS, where there is no
rename, it writes `commit_success.txt` last instead). Just before that
rename, sagan_jax writes `sagan_manifest.json` into the directory: the size
and SHA-256 of every file of the saved items. So a step directory holds its
manifest exactly when the save completed, and a file truncated, deleted or
overwritten afterwards is caught before anything is restored from it.

A directory `N.damaged...` is a damaged checkpoint moved out of the way when
the run saved step N again; a `*.orbax-checkpoint-tmp` one is an unfinished
save; `N.deleting` an old checkpoint whose removal (keep-N) was interrupted.
None of them is ever restored.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os

from etils import epath

from sagan_jax import errors

MANIFEST = "sagan_manifest.json"
TMP_MARK = ".orbax-checkpoint-tmp"
ASIDE_MARK = ".damaged"
DELETING_MARK = ".deleting"          # an old checkpoint being removed by the keep-N policy
COMMIT_MARK = "commit_success.txt"   # Orbax's own completion file
ITEMS = ("state", "config", "meta")  # the saved items (subdirectories of a step)
_CHUNK = 4 << 20


def resolve_workdir(workdir: str) -> str:
  """`workdir` as every later step uses it: `~` expanded and made absolute; remote URLs as given.

  Orbax refuses relative paths, so each place a workdir enters sagan_jax (the
  commands, `train_and_evaluate`, `sagan_jax.load`, the checkpointer) calls
  this first. `gs://bucket/run` and other `scheme://` paths are left alone.
  """
  workdir = os.fspath(workdir)
  if "://" in workdir:
    return workdir
  return os.path.abspath(os.path.expanduser(workdir))


def check_workdir(workdir: str) -> None:
  """Raises CheckpointError if `workdir` cannot hold a run; creates and writes nothing.

  Remote paths (gs://...) are not probed: their first write reports problems.
  """
  if "://" in workdir:
    return
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
    raise errors.CheckpointError(f"--workdir {workdir} {where}; give a directory (new, or "
                                 "from an earlier run of this config).")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.CheckpointError(f"--workdir {workdir} is not writable ({existing}: read-only "
                                 "filesystem or no permission); give a directory you can write "
                                 "to.")
  ckpts = os.path.join(path, "checkpoints")
  if os.path.exists(ckpts) and not os.path.isdir(ckpts):
    raise errors.CheckpointError(f"{ckpts} is a file; --workdir must be a run directory.")


@dataclasses.dataclass(frozen=True)
class Listing:
  """What `checkpoints/` holds: step numbers (ascending) and directories never restored."""
  steps: tuple[int, ...]
  unfinished: tuple[str, ...]   # interrupted saves (Orbax temporary directories)
  aside: tuple[str, ...]        # damaged checkpoints moved aside
  deleting: tuple[str, ...]     # old checkpoints whose removal was interrupted


def list_dir(ckpt_dir: epath.Path) -> Listing:
  found: dict[str, list] = {"steps": [], "unfinished": [], "aside": [], "deleting": []}
  if ckpt_dir.is_dir():
    for p in ckpt_dir.iterdir():
      name = p.name
      if name.isdigit() and p.is_dir():
        found["steps"].append(int(name))
      elif TMP_MARK in name:
        found["unfinished"].append(name)
      elif ASIDE_MARK in name:
        found["aside"].append(name)
      elif name.endswith(DELETING_MARK):
        found["deleting"].append(name)
  return Listing(**{k: tuple(sorted(v)) for k, v in found.items()})


def _item_files(step_dir: epath.Path) -> list[str]:
  """Paths (relative to the step) of every file under the saved items, sorted."""
  out = []

  def walk(d: epath.Path, rel: str):
    for p in d.iterdir():
      if p.is_dir():
        walk(p, f"{rel}{p.name}/")
      else:
        out.append(f"{rel}{p.name}")

  for item in ITEMS:
    if (step_dir / item).is_dir():
      walk(step_dir / item, f"{item}/")
  return sorted(out)


def _digest(path: epath.Path) -> tuple[int, str]:
  h, n = hashlib.sha256(), 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
      n += len(chunk)
  return n, h.hexdigest()


def write_manifest(step_dir: epath.Path) -> None:
  """Records size and SHA-256 of every item file (call when they are all written)."""
  files = {}
  for rel in _item_files(step_dir):
    size, sha = _digest(step_dir / rel)
    files[rel] = {"size": size, "sha256": sha}
  (step_dir / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


@dataclasses.dataclass(frozen=True)
class Verdict:
  """ok: the manifest matches; unverified: no manifest (older sagan_jax) but Orbax
  finished it; otherwise `problem` says what is wrong."""
  ok: bool
  problem: str = ""
  unverified: bool = False


def check(step_dir: epath.Path) -> Verdict:
  """Compares a step directory with its manifest (reads every byte)."""
  mpath = step_dir / MANIFEST
  if not mpath.exists():
    if not (step_dir / COMMIT_MARK).exists():
      return Verdict(False, "the save did not finish (no manifest, no commit marker)")
    return Verdict(True, unverified=True)
  try:
    files = json.loads(mpath.read_text())["files"]
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    return Verdict(False, f"{MANIFEST} is unreadable ({type(e).__name__})")
  for rel, want in files.items():
    path = step_dir / rel
    if not path.exists():
      return Verdict(False, f"file {rel} is missing")
    size, sha = _digest(path)
    if size != want["size"]:
      kind = "truncated" if size < want["size"] else "longer than saved"
      return Verdict(False, f"file {rel} is {kind} ({size} bytes, saved {want['size']})")
    if sha != want["sha256"]:
      return Verdict(False, f"file {rel} is corrupt (SHA-256 differs from the saved one)")
  return Verdict(True)


def aside_name(ckpt_dir: epath.Path, step: int) -> epath.Path:
  """A free name `N.damaged`, `N.damaged.2`, ... to move a damaged step N to."""
  k = 1
  while True:
    p = ckpt_dir / (f"{step}{ASIDE_MARK}" + (f".{k}" if k > 1 else ""))
    if not p.exists():
      return p
    k += 1


def save_failed(step: int, cdir: epath.Path, e: BaseException) -> errors.CheckpointError:
  """The message of a failed save: why, and that the older checkpoints are intact."""
  reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "the filesystem is read-only",
             errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}
  reason, cause = "", e
  while cause is not None and not reason:
    reason = reasons.get(getattr(cause, "errno", None), "")
    cause = cause.__cause__ or cause.__context__
  text = str(e)
  if not reason:
    reason = next((r for code, r in reasons.items() if os.strerror(code) in text), "")
  done = [s for s in list_dir(cdir).steps if s < step]
  kept = (f"the checkpoints already written are intact; a rerun resumes from step {done[-1]}"
          if done else "no earlier checkpoint exists")
  # Only a storage error is told to free space; any other cause is named as it is.
  todo = ("Free space (or fix the filesystem) and rerun the same command." if reason else
          "Fix the cause above and rerun the same command.")
  return errors.CheckpointError(
      f"saving checkpoint step {step} in {cdir} failed: {reason or 'error'} "
      f"({type(e).__name__}: {text[:300]}). Training stopped rather than run on without "
      f"checkpoints; {kept}. {todo}")
