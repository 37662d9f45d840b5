"""Reading the text files users give comem (CSVs, class lists, label maps, YAML configs).

Excel and Windows editors save UTF-8 with a byte-order mark; it is dropped here, once for every
reader, so the first video of a CSV or the first class name never starts with ``\\ufeff``. A file that
is not UTF-8 is one line naming it and where it stops being UTF-8.
"""

from __future__ import annotations

import io
from pathlib import Path

from comem.errors import UserError


def read_text(path: Path, error: type[UserError], what: str = "") -> str:
    """The text of ``path`` without a leading BOM; ``error`` (naming the file, and ``what`` it is
    meant to be) if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as failure:
        raise error(f"{path}: cannot read{' ' + what if what else ''} ({failure.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as failure:
        line = data[: failure.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[failure.start]:02x}); save it as UTF-8"
        ) from None


def open_text(path: Path, error: type[UserError]) -> io.StringIO:
    """:func:`read_text` as a stream, for ``csv`` readers (newlines kept as in the file)."""
    return io.StringIO(read_text(path, error), newline="")


def first_line(path: Path) -> str:
    """The first line of ``path`` without BOM or line end, for telling file formats apart."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        return file.readline().rstrip("\r\n")
