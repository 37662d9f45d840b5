"""The collaborative memory's options as one record, carried from the config (or ``comem.wrap``'s
keyword arguments) through the tasks and the model builders to every memory.

Torch-free, so the config and the command line's parser can build it without importing torch. The
names each option accepts are in ``comem.choices``; ``CollaborativeMemory`` (``comem/memory.py``)
documents what each does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MemoryOptions:
    """``CollaborativeMemory``'s options (see its docstring), as one record."""

    memory: str = "attention"
    fusion: str = "gate"
    key_dim: int | None = None
    gate_hidden: int | None = 64
    summary: str = "meanmax"
    entry_hidden: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The options as ``CollaborativeMemory``'s keyword arguments."""
        return dataclasses.asdict(self)
