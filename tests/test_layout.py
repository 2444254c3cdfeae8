"""The package layout rules of docs/DESIGN.md, checked on the source: no module imports a later stage, no
library imports a stage, and nothing reaches into another module's `_private` names."""

import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ghosttrack_jax")

# Pipeline order of the stage subpackages; libraries come before every stage, the entry points after.
STAGE_ORDER = ("extract", "train", "answer", "track", "detect", "evaluate", "report")
LIBRARIES = ("errors", "config_lib", "stats", "runtime", "lm", "sae")
ENTRY_POINTS = {
  "tools": len(STAGE_ORDER) + 1,
  "pipeline": len(STAGE_ORDER) + 2,
  "main": len(STAGE_ORDER) + 3,
  "cli": len(STAGE_ORDER) + 4,  # the `ghosttrack` command: dispatches to main and tools.score_cli
}


def rank(module: str) -> int:
  """0 for libraries, 1..7 for the stages in pipeline order, above that for tools and entry points."""
  parts = module.split(".")
  assert parts[0] == "ghosttrack_jax", module
  top = parts[1] if len(parts) > 1 else ""
  if top in ("", "__init__") or top in LIBRARIES:
    return 0
  if top in STAGE_ORDER:
    return STAGE_ORDER.index(top) + 1
  if top in ENTRY_POINTS:
    return ENTRY_POINTS[top]
  raise AssertionError(f"{module}: not a library, stage or entry point; add it to the layout rules")


def module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def violations(module: str, source: str) -> list[str]:
  """Every layout violation in one module's source."""
  tree = ast.parse(source)
  own = rank(module)
  out = []
  aliases = set()  # local names bound to ghosttrack_jax modules
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Import):
      targets = [(a.name, a.asname or a.name.split(".")[0]) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ghosttrack_jax"):
      for a in node.names:
        if a.name.startswith("_"):
          out.append(f"{module}:{node.lineno} imports the private name {a.name} of {node.module}")
        targets.append((f"{node.module}.{a.name}", a.asname or a.name))
    for target, local in targets:
      if not target.startswith("ghosttrack_jax"):
        continue
      # `from pkg import name` may name a module or an object: rank the longest module prefix.
      parts = target.split(".")
      candidates = [".".join(parts[:i]) for i in range(len(parts), 1, -1)]
      mod = next((c for c in candidates if _exists(c)), "ghosttrack_jax")
      aliases.add(local)
      if rank(mod) > own:
        out.append(f"{module}:{node.lineno} imports {mod}, which comes later in the pipeline")
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Attribute)
      and node.attr.startswith("_")
      and not node.attr.startswith("__")
      and isinstance(node.value, ast.Name)
      and node.value.id in aliases
    ):
      out.append(f"{module}:{node.lineno} uses the private name {node.value.id}.{node.attr}")
  return out


def _exists(module: str) -> bool:
  path = os.path.join(os.path.dirname(PACKAGE), *module.split("."))
  return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for f in sorted(files):
      if f.endswith(".py"):
        yield os.path.join(root, f)


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_module_follows_the_layout(path):
  with open(path, encoding="utf-8") as f:
    assert violations(module_name(path), f.read()) == []


def test_the_checker_catches_what_it_should():
  backwards = "from ghosttrack_jax.evaluate import metrics\n"
  assert violations("ghosttrack_jax.detect.stage", backwards)  # detect (5) imports evaluate (6)
  assert violations("ghosttrack_jax.sae.common", "from ghosttrack_jax.train import step\n")  # library
  assert violations("ghosttrack_jax.track.stage", "from ghosttrack_jax.answer.prompts import _helper\n")
  assert violations(
    "ghosttrack_jax.track.stage", "from ghosttrack_jax.answer import prompts\nprompts._helper()\n"
  )
  assert not violations(
    "ghosttrack_jax.evaluate.stage", "from ghosttrack_jax.detect import oof\noof.load()\n"
  )
  assert not violations("ghosttrack_jax.detect.cv", "from ghosttrack_jax import stats\n")


# Nothing branches on an architecture's name: what differs per architecture is a method or a field of its
# class (sae/<arch>.py, a subclass of sae.common.Architecture).
ARCH_NAME_BRANCH = re.compile(
  r"(\.arch|\barch\.name)\s*(==|!=|\bin\b)|[\"'](jumprelu|topk|batchtopk|relu_l1)[\"']\s*(==|!=)"
)
# An architecture is looked up by its name in one place (sae.registry.build); it is built from the
# config there (registry.from_config), from an export's record in sae.trained and from another tool's
# SAE record in sae.external.
LOOKUP = re.compile(r"ARCHITECTURES\[|registry\.build\(")
LOOKUP_ALLOWED = {
  os.path.join("sae", "registry.py"),
  os.path.join("sae", "trained.py"),
  os.path.join("sae", "external.py"),
}


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_no_branch_on_an_architecture_name(path):
  with open(path, encoding="utf-8") as f:
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(f, 1) if ARCH_NAME_BRANCH.search(line)]
  assert hits == [], "use a method or field of the architecture's class: " + "; ".join(hits)


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_the_architecture_is_looked_up_in_one_place(path):
  if os.path.relpath(path, PACKAGE) in LOOKUP_ALLOWED:
    return
  with open(path, encoding="utf-8") as f:
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(f, 1) if LOOKUP.search(line)]
  assert hits == [], "take the architecture object from registry.from_config: " + "; ".join(hits)


def test_the_architecture_checks_catch_what_they_should():
  branches = (
    'if hyper.arch == "topk":',
    'if c.sae.arch in ("a", "b"):',
    'x = "relu_l1" == a',
    "if arch.name != 'x':",
  )
  for line in branches:
    assert ARCH_NAME_BRANCH.search(line), line
  for line in (
    'cfg = {"arch": arch.name}',
    "arch = registry.from_config(c, d)",
    'c.sae.arch = "topk"',
    "for arch in a:",
  ):
    assert not ARCH_NAME_BRANCH.search(line), line
  assert LOOKUP.search("cls = registry.ARCHITECTURES[name]") and LOOKUP.search(
    "registry.build('topk', d_model=4)"
  )
