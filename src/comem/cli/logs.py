"""How the command line shows the library's log: comem's modules log through ``logging`` (a library
user configures or silences them as usual); the CLI prints them on stdout and, for a training run,
also appends them to ``OUT/train.log``.

Console lines are the message alone (warnings start with ``warning:``) and are written between
progress-bar redraws; ``train.log`` lines carry a timestamp and no progress bars.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

LOGGER = "comem"


class ConsoleFormatter(logging.Formatter):
    """Formats ``%(prefix)s``: ``warning: `` or ``error: `` by level, empty for information."""

    def format(self, record: logging.LogRecord) -> str:
        levels = ((logging.ERROR, "error: "), (logging.WARNING, "warning: "))
        record.prefix = next((text for level, text in levels if record.levelno >= level), "")
        return super().format(record)


class ConsoleHandler(logging.Handler):
    """Writes to the current ``sys.stdout`` through ``tqdm.write`` (so open progress bars stay intact)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # not at import: ``comem --help`` stays quick

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # logging's convention: a failing handler reports, never raises
            self.handleError(record)


def configure_console() -> None:
    """Show comem's INFO and above on stdout (once per process, however often ``main`` runs)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(ConsoleFormatter("%(prefix)s%(message)s"))
        logger.addHandler(handler)


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[Callable[[BaseException], None]]:
    """Also append comem's log to ``path`` while the block runs. Yields a function that writes an
    error line into ``path`` alone (the console gets it from the command's own error report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(ConsoleFormatter("%(asctime)s %(prefix)s%(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)

    def record(error: BaseException) -> None:
        message = " ".join(str(error).split()) or type(error).__name__
        handler.handle(logging.LogRecord(LOGGER, logging.ERROR, __file__, 0, message, None, None))

    try:
        yield record
    finally:
        logger.removeHandler(handler)
        handler.close()
