"""`python -m advseg_jax COMMAND [args]`: dispatches to the command modules of `advseg_jax.cli`
(imported only when their command runs)."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# command: (module with main(argv) -> int, one-line description)
COMMANDS = {
    "train": ("advseg_jax.cli.train", "train / resume a run from a config preset"),
    "evaluate": ("advseg_jax.cli.evaluate", "mIoU of a model directory or workdir on a split"),
    "predict": ("advseg_jax.cli.predict", "segment images, write label / colour PNGs"),
    "convert": ("advseg_jax.cli.convert", "PyTorch .pth <-> model directory"),
    "prepare": ("advseg_jax.cli.prepare", "build a dataset (TFDS array_record) for training"),
    "report": ("advseg_jax.cli.report", "one-page PNG + markdown report of a training workdir"),
}


def usage() -> str:
  w = max(len(c) for c in COMMANDS)
  lines = ["usage: python -m advseg_jax COMMAND [args]   (COMMAND --help for its flags)", "",
           "commands:"]
  lines += [f"  {name:<{w}}  {desc}" for name, (_, desc) in COMMANDS.items()]
  return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage(), end="")
    return 0 if argv else 2
  cmd, rest = argv[0], argv[1:]
  if cmd not in COMMANDS:
    print(f"error: unknown command {cmd!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
  module_name = COMMANDS[cmd][0]
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      print(f"error: command {cmd!r} is not available in this installation (module "
            f"{module_name} is missing)", file=sys.stderr)
      return 2
    raise
  return int(module.main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
