"""The pip package: a wheel built from this checkout and installed into a fresh virtual environment runs
the whole tiny pipeline with the `ghosttrack` command from a folder outside the checkout, finding the
configs and the corpus and QA files it ships, and verifies the run.

Offline: the wheel is built without build isolation (setuptools from requirements.txt) and installed
with `--no-index`; the new environment sees the test environment's installed dependencies through a
.pth file (which makes them importable but runs none of its .pth files, so this checkout's editable
install stays invisible), and pip checks the wheel's dependencies against them.
"""

import os
import shutil
import subprocess
import sys
import sysconfig

import tiny_pipeline

REPO = tiny_pipeline.REPO
# What the build reads: the package, the shipped configs and data, and the project files.
SOURCES = ("pyproject.toml", "README.md", "ghosttrack_jax", "configs", "data")


def _run(cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, **kw)
  assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
  return proc


def test_wheel_runs_the_pipeline_outside_the_checkout(tmp_path):
  src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
  src.mkdir()
  for name in SOURCES:
    path = os.path.join(REPO, name)
    if os.path.isdir(path):
      shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy(path, src / name)
  dist = tmp_path / "dist"
  _run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "-w",
      str(dist),
      str(src),
    ]
  )
  (wheel,) = [str(p) for p in dist.iterdir() if p.name.endswith(".whl")]

  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  python = str(venv / "bin" / "python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
  with open(os.path.join(site, "test_environment_packages.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", wheel])

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(tiny_pipeline.ENV)
  where = _run(
    [python, "-c", "import ghosttrack_jax.runtime.paths as p; print(p.__file__); print(p.REPO_ROOT)"],
    cwd=elsewhere,
    env=env,
  ).stdout.split()
  assert all(w.startswith(site) for w in where), where  # the installed copy, its shipped configs and data
  installed = {
    os.path.relpath(os.path.join(d, n), os.path.join(site, "ghosttrack_jax"))
    for d, _, names in os.walk(os.path.join(site, "ghosttrack_jax"))
    for n in names
    if n.endswith(".py") and "shipped" not in d
  }
  ours = {
    os.path.relpath(os.path.join(d, n), os.path.join(REPO, "ghosttrack_jax"))
    for d, _, names in os.walk(os.path.join(REPO, "ghosttrack_jax"))
    for n in names
    if n.endswith(".py")
  }
  assert installed == ours, sorted(installed ^ ours)  # every module is in the wheel (pyproject's list)

  ghosttrack = str(venv / "bin" / "ghosttrack")
  workdir = str(tmp_path / "run")
  for command in ("run", "verify"):
    proc = _run(
      [ghosttrack, command, "--config=configs/tiny.py", f"--workdir={workdir}"], cwd=elsewhere, env=env
    )
  assert "0 damaged" in proc.stdout, proc.stdout
  assert os.path.isfile(os.path.join(workdir, "results", "tiny_gpt2", "evaluation", "report.html"))
