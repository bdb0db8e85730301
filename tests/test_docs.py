"""The docs' commands, run as written: README.md and docs/*.md cannot drift from the code.

Every shell command in a code block of README.md and docs/*.md (```bash/sh
blocks, and lines of plain ``` blocks that start with a command) and README's
Python snippets run, in document order, from one fresh copy of the checkout
(its tracked and unignored files only), with relative paths exactly as
written. What cannot run here is treated by the first matching rule of
`RULES`, which says why:

- run:   as written.
- short: as written plus `SHORT`'s overrides (a training command that takes
         minutes: a few steps of the same config, so the commands after it
         find a real run).
- parse: as written plus absl's `--only_check_args`: the flags, the --config
         file or name and every `--config.<field>` override are parsed and
         checked, then the command exits before doing its work (it needs an
         accelerator, a dataset, a bucket or hours).
- help:  `--help` exits 0 (scripts with their own argument parsers).
- dry:   with the script's own `-n` (print the commands, run nothing).
- skip:  not run (installs, the suite itself, servers, torch-only commands).

A command no rule covers and that is not a sagan_jax command fails the test,
so a new doc command is either runnable or classified here.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_cli import _env

DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT)
                             for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]

# Overrides that turn a training command into a few-step run of the same config.
SHORT = ("--config.total_steps=6", "--config.log_every=2", "--config.checkpoint_every=3",
         "--config.sample_every=3", "--config.eval_every=3", "--config.eval.num_samples=100")

SAGAN = r"^(sagan-jax|python -m sagan_jax)"
RULES = [  # (pattern searched in the command, treatment, why)
    (r"^pip install", "skip", "an install: .ci/run runs the README's install command itself, "
                              "tests/test_install.py installs the package"),
    (r"^pytest\b", "skip", "the test suite itself"),
    (r"^tensorboard\b", "skip", "a server"),
    (r"torchvenv|peer_pytorch\.py|make_convert_fixtures\.py", "skip",
     "needs torch and a peer's checkout (never in this project's environment)"),
    (r"^python benchmarks/", "help", "a benchmark: minutes of timing"),
    (r"tests/fixtures/convert|runs/studiogan_fixture", "run",
     "the StudioGAN checkpoint shipped as a test fixture: seconds"),
    (r"gs://|imagenet128|cifar10|--config folder|configs/folder\.py", "parse",
     "needs an accelerator, a prepared dataset or a bucket"),
    (r"on_collapse=", "parse", "a run driven into collapse on purpose, minutes "
     "(tests/test_collapse.py forces one)"),
    (SAGAN + r"(\.sweep\b| sweep\b)", "parse", "trains one run per variant and seed, minutes "
     "each (tests/test_sweep.py runs a sweep of the tiny config)"),
    (r"runs/digits_(18|04|59)", "parse", "the small-data and fine-tuning measurements, one "
     "digits training each (tests/test_small_data.py and tests/test_finetune.py train "
     "them at tiny sizes)"),
    (SAGAN + r"(\.main\b| train\b).*--config (configs/)?(digits|tiny)", "short",
     "trains for minutes"),
    (r"runs/imagenet128|refs/|samples\.npz|real\.npz", "parse",
     "needs a trained ImageNet run or its reference files"),
    (r"^benchmarks/accelerator_check\.sh", "dry", "installs an accelerator's jax wheel and "
     "needs the accelerator (the CPU rehearsal: tests/test_accelerator_check.py, slow)"),
    (SAGAN, "run", "a sagan_jax command that runs in seconds here"),
]


@dataclasses.dataclass
class Command:
  doc: str
  line: int
  text: str

  def __str__(self):
    return f"{self.doc}:{self.line}: {self.text}"


# In plain ``` blocks (which also hold layouts and JSON), the lines that are commands.
_COMMAND_START = re.compile(r"^(sagan-jax |python3? |pip |pytest\b|tensorboard |bash |"
                            r"(launch|benchmarks)/\S+\.(sh|sbatch)\b|/\S*/python3? )")


def shell_commands(doc: str) -> list[Command]:
  """The commands in `doc`'s code blocks (continuations joined, comments dropped)."""
  out, lang, pending, start = [], None, "", 0
  with open(os.path.join(ROOT, doc)) as f:
    lines = f.read().splitlines()
  for i, raw in enumerate(lines, start=1):
    if raw.startswith("```"):
      lang = None if lang is not None else raw[3:].strip() or "plain"
      continue
    if lang not in ("bash", "sh", "shell", "plain"):
      continue
    line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
    if not pending:
      start = i
    pending += line.rstrip("\\").strip() + " " if line else ""
    if line.endswith("\\"):
      continue
    text, pending = " ".join(pending.split()), ""
    if text and (lang != "plain" or _COMMAND_START.match(text)):
      out.append(Command(doc, start, text))
  return out


def python_snippets(doc: str) -> list[Command]:
  """The ```python blocks of `doc`."""
  with open(os.path.join(ROOT, doc)) as f:
    text = f.read()
  return [Command(doc, text[:m.start()].count("\n") + 1, m.group(1))
          for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def treatment(command: str) -> tuple[str, str]:
  for pattern, kind, why in RULES:
    if re.search(pattern, command):
      return kind, why
  return "unclassified", "no rule in tests/test_docs.py.RULES covers it"


def fresh_checkout(dest: str) -> str:
  """A copy of the checkout's tracked and unignored files (a clean clone's content)."""
  try:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  for rel in files:
    src = os.path.join(ROOT, rel)
    if os.path.isfile(src):
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, rel))
  return dest


def argv_of(command: str, kind: str) -> list[str]:
  argv = shlex.split(command)
  if argv[0] == "sagan-jax" and shutil.which("sagan-jax") is None:
    argv = [sys.executable, "-m", "sagan_jax", *argv[1:]]   # not installed: the same code
  elif argv[0] == "python":
    argv[0] = sys.executable
  extra = {"short": list(SHORT), "parse": ["--only_check_args"], "help": ["--help"],
           "dry": ["-n"]}
  return argv + extra.get(kind, [])


def test_every_doc_command_is_runnable_or_classified():
  commands = [c for doc in DOCS for c in shell_commands(doc)]
  assert any(c.text.startswith(("sagan-jax train", "python -m sagan_jax.main"))
             for c in commands if c.doc == "README.md"), "README has no training command"
  unclassified = [str(c) for c in commands if treatment(c.text)[0] == "unclassified"]
  assert not unclassified, ("doc commands no rule covers (make them runnable or add a rule "
                            "with the reason):\n" + "\n".join(unclassified))


def test_readme_install_and_run_commands_are_the_quick_start():
  """The README's first block is the contract: install, then train the digits default."""
  first = shell_commands("README.md")[:2]
  assert [treatment(c.text)[0] for c in first] == ["skip", "short"], first
  assert first[0].text == "pip install -e ."
  assert re.search(r"--config (configs/digits\.py|digits) --workdir runs/digits$", first[1].text)


def _ends(text: str, n: int = 2000) -> str:
  """The head and the tail of a long stderr (a fatal error's cause is printed first)."""
  return text if len(text) <= 2 * n else text[:n] + "\n[...]\n" + text[-n:]


def test_docs_commands_as_written(tmp_path):
  """Each command in document order from one fresh checkout; each must exit 0."""
  cwd = fresh_checkout(str(tmp_path / "checkout"))
  env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}   # the checkout's own code
  ran, failures = [], []
  for doc in DOCS:
    for c in shell_commands(doc):
      kind, why = treatment(c.text)
      if kind in ("skip", "unclassified"):
        continue
      p = subprocess.run(argv_of(c.text, kind), cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
      ran.append(f"{kind:5} {c}")
      if p.returncode != 0:
        failures.append(f"{c} [{kind}: {why}] exited {p.returncode}:\n{_ends(p.stderr)}")
    if doc == "README.md":   # its snippets use the run its commands made
      for snippet in python_snippets(doc):
        p = subprocess.run([sys.executable, "-c", snippet.text], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        ran.append(f"py    {snippet.doc}:{snippet.line}")
        if p.returncode != 0:
          failures.append(f"python snippet {snippet.doc}:{snippet.line} exited "
                          f"{p.returncode}:\n{_ends(p.stderr)}")
  print("\n".join(ran))
  assert not failures, "\n\n".join(failures)
  assert os.path.isdir(os.path.join(cwd, "runs", "digits", "checkpoints"))


@pytest.mark.parametrize("doc", [d for d in DOCS if d != "README.md"])
def test_other_python_snippets_compile(doc):
  """Snippets that need a trained ImageNet model or a mesh: at least valid Python."""
  for snippet in python_snippets(doc):
    compile(snippet.text, f"{doc}:{snippet.line}", "exec")
