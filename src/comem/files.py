"""Small file writers every layer uses."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def finite_or_null(value: Any) -> Any:
    """``value`` with every nan or infinite float (in nested dicts, lists, tuples) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def json_text(payload: Any, indent: int | None = None) -> str:
    """Standard JSON (RFC 8259) of ``payload``: a non-finite number is written ``null``, never the
    ``NaN``/``Infinity`` that Python's json module writes and other languages' parsers reject."""
    return json.dumps(finite_or_null(payload), indent=indent, allow_nan=False)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic JSON write (a reader never sees a half-written metrics file); non-finite numbers as null."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json_text(payload, indent=2) + "\n")
    os.replace(tmp, path)


def save_figure(figure: Figure, path: Path) -> None:
    """Write a matplotlib ``Figure`` made with the object API (Agg canvas: no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
