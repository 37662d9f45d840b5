"""The ``comem`` command: parse, build, call. Errors in user input end as one line, never a traceback.

Each subcommand is one module here with ``NAME``, ``add_parser(commands)`` and ``run(args)``; add a new one
to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from comem import __version__
from comem.cli import (
    bench,
    check_data,
    doctor,
    eval_ava,
    evaluate,
    flops,
    models,
    predict,
    synthetic,
    synthetic_ava,
    train,
)
from comem.cli.logs import configure_console
from comem.errors import UserError

COMMANDS: list[ModuleType] = [
    train,
    evaluate,
    predict,
    eval_ava,
    synthetic,
    synthetic_ava,
    check_data,
    models,
    flops,
    bench,
    doctor,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comem", description="Video-level training with collaborative memory."
    )
    parser.add_argument("--version", action="version", version=f"comem {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `comem`: what it can do
        parser.print_help()
        return 0
    from comem.engine.stopping import TrainingStopped  # torch: only once a command runs

    configure_console()
    handlers = {command.NAME: command.run for command in COMMANDS}
    try:
        return handlers[args.command](args)
    except UserError as error:
        print(f"comem {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:  # last.pt saved and said; the exit status names the signal
        return 128 + stopped.signum
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError) as error:
        if os.environ.get("COMEM_DEBUG"):
            raise
        print(
            f"comem {args.command}: error: {' '.join(str(error).split())} (COMEM_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
