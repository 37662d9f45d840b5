"""``comem doctor``: versions, devices, and one training and evaluation step of every mode through
every code path this machine supports, each a PASS / FAIL / SKIP line; exit status 1 on any FAIL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "doctor"


def _modes(text: str) -> tuple[str, ...]:
    from comem.config import MODES

    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if not chosen or any(mode not in MODES for mode in chosen):
        raise argparse.ArgumentTypeError(f"a comma-separated subset of {','.join(MODES)}; got {text!r}")
    return chosen


def _checks(text: str) -> tuple[str, ...]:
    from comem.diagnostics.doctor import check_names

    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if any(name not in check_names() for name in chosen):
        raise argparse.ArgumentTypeError(
            f"a comma-separated subset of {','.join(check_names())}; got {text!r}"
        )
    return chosen


def add_parser(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser(
        NAME,
        help="check that comem trains here: every mode through every code path the device has",
        description="Versions, devices, and one training and evaluation step of every mode through every "
        "code path this machine supports, each a PASS / FAIL / SKIP line; exit status 1 on any FAIL.",
    )
    doctor.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] [auto]")
    doctor.add_argument("--modes", type=_modes, help="comma-separated modes to check [all]")
    doctor.add_argument(
        "--skip", type=_checks, default=(), help="comma-separated checks to leave out (e.g. compile) [none]"
    )
    doctor.add_argument("--json", dest="json_path", help="also write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    from comem.config import MODES
    from comem.diagnostics.doctor import format_header, format_summary, run_checks, start_report

    report = start_report(args.device)
    print(format_header(report), flush=True)
    modes = args.modes or MODES
    run_checks(
        report, modes_to_check=modes, skip=args.skip, progress=lambda check: print(check.line(), flush=True)
    )
    print(format_summary(report))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1
