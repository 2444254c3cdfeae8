"""The `ghosttrack` command (installed with the package):

  ghosttrack run    --config=configs/tiny.py --workdir=runs/tiny [--stages=...] [--config.x.y=...]
  ghosttrack plan   --config=... --workdir=... [--plan_devices=4 --plan_device_kind=a100]
  ghosttrack verify --config=... --workdir=...
  ghosttrack score  --config=... --workdir=... --question="..." [--answer="..."]

`run`, `plan` and `verify` are `python -m ghosttrack_jax.main` (with --plan, --verify); `score` is
`python -m ghosttrack_jax.tools.score_cli`. `--config` is found in the current folder or, as
`configs/<name>.py` or `<name>`, among the configs shipped with the package. `ghosttrack <command> --help`
lists a command's flags.
"""

import sys

from absl import app, flags

USAGE = __doc__.split("\n\n")[1]
COMMANDS = ("run", "plan", "verify", "score")


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    sys.stderr.write(f"usage:\n{USAGE}\n")
    sys.exit(0 if len(argv) > 1 and argv[1] in ("-h", "--help", "help") else 2)
  command, rest = argv[1], argv[2:]
  # Each entry point defines its own absl flags (both a --config), so only the one asked for is imported.
  from ghosttrack_jax.tools import command_line  # noqa: PLC0415

  if command == "score":
    from ghosttrack_jax.tools import score_cli as module  # noqa: PLC0415
  else:
    from ghosttrack_jax import main as module  # noqa: PLC0415
  if {"-h", "--help", "--helpshort"} & set(rest):  # absl's own help would list the flags of this module
    sys.stdout.write(f"{module.__doc__.strip()}\n\n{flags.FLAGS.module_help(module)}\n")
    sys.exit(0)
  extra = {"plan": ["--plan"], "verify": ["--verify"]}.get(command, [])
  app.run(module.main, argv=[f"ghosttrack {command}", *rest, *extra], flags_parser=command_line.parse_flags)


if __name__ == "__main__":
  main()
