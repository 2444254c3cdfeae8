"""Docs that resolve: no reference to a file outside the repository, every repository path that the code,
tests and docs name exists, and DESIGN.md promises no flag that main does not define."""

import os
import re
import subprocess

import pytest
import tiny_pipeline

REPO = tiny_pipeline.REPO
# Paths inside the repository as the text names them (a package module, a test, a doc, a script, ...).
_REPO_PATH = re.compile(
  r"(?<![\w./-])((?:ghosttrack_jax|tests|docs|scripts|configs|notebooks|benchmarks|data)/[\w./-]*\w)"
)


def _tracked_text_files() -> list[str]:
  try:
    out = subprocess.run(
      ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  keep = (".py", ".md", ".ipynb", ".sh", ".sbatch", ".toml", ".txt", "Makefile", "run")
  return [
    f
    for f in out.stdout.splitlines()
    if f.endswith(keep)
    and not f.startswith(("ghosttrack_jax/assets/", "data/"))
    and os.path.isfile(os.path.join(REPO, f))
  ]


def _read(rel: str) -> str:
  with open(os.path.join(REPO, rel), encoding="utf-8", errors="replace") as f:
    return f.read()


def test_no_reference_outside_the_repository():
  bad = []
  for rel in _tracked_text_files():
    if rel == "tests/test_docs.py":
      continue
    for n, line in enumerate(_read(rel).splitlines(), 1):
      if "../shared" in line or re.search(r"(?<![\w.])/work(/|\b)", line):
        bad.append(f"{rel}:{n}: {line.strip()}")
      if not rel.startswith("docs/"):
        for m in re.finditer(r"(?<![\w/])(method|environment|sae_recipes)\.md", line):
          bad.append(f"{rel}:{n}: {m.group(0)} without docs/")
  assert not bad, "\n".join(bad)


# Paths that name another repository's file (cited there with its commit), not one of ours.
EXTERNAL = {("docs/sae_recipes.md", "scripts/train_sae.py")}  # khurramkhalil/GhostTrack @ 5c3a3d9


def test_named_repository_paths_exist():
  bad = []
  for rel in _tracked_text_files():
    if rel == "tests/test_docs.py":  # names paths as data
      continue
    for n, line in enumerate(_read(rel).splitlines(), 1):
      for m in _REPO_PATH.finditer(line):
        path = m.group(1).rstrip(".")
        if any(c in path for c in "<>*{}") or "XX" in path or "missing" in path:  # patterns; test inputs
          continue
        if (rel, path) in EXTERNAL:
          continue
        if not os.path.exists(os.path.join(REPO, path)):
          bad.append(f"{rel}:{n}: {path}")
  assert not bad, "\n".join(bad)


def test_design_promises_only_flags_that_exist():
  # Flags of other commands (pip, tensorboard) are not ours to define.
  design = re.sub(r"(pip|tensorboard) [^`\n]*", "", _read("docs/DESIGN.md") + _read("README.md"))
  main = _read("ghosttrack_jax/main.py")
  defined = set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', main)) | {"config", "workdir"}
  promised = set(re.findall(r"(?<![\w-])--(\w+)(?![\w.])", design)) - {"config"}
  undefined = sorted(
    f
    for f in promised
    if f not in defined and f"no `--{f}`" not in design and f"there is no `--{f}`" not in design
  )
  tools = {
    f
    for cli in ("score_cli", "compare", "transfer")
    for f in re.findall(r'DEFINE_\w+\(\s*"(\w+)"', _read(f"ghosttrack_jax/tools/{cli}.py"))
  }
  assert [f for f in undefined if f not in tools] == []


def test_requirements_name_only_files_that_exist():
  """Every file a requirements file includes or mentions, and the README section it points to, exist."""
  readme = _read("README.md")
  for rel in [f for f in _tracked_text_files() if re.fullmatch(r"requirements[\w-]*\.txt", f)]:
    text = _read(rel)
    for name in re.findall(r"(?:-r\s+|\b)(requirements[\w-]*\.txt)", text):
      assert os.path.isfile(os.path.join(REPO, name)), f"{rel} names {name}, which does not exist"
    for section in re.findall(r'README\.md "([^"]+)"', text):
      assert f"## {section}\n" in readme, f"{rel} points to README section {section!r}, which does not exist"
