"""Reading ``.pt`` files without running code from them.

Every file comem reads with ``torch.load`` (its own checkpoints, pretrained weights) is read with
``weights_only=True``: the unpickler builds tensors and plain Python values (dict, list, tuple, str,
int, float, bool, None) and refuses anything else, so a crafted pickle that would call a function
(``os.system``, ``eval``) fails before any of it runs. comem's checkpoints hold nothing else: random
states are stored as tensors, configs as dicts of plain values.

The one allow-list is for checkpoints of earlier comem versions, which stored numpy's random state as
an ``ndarray``: numpy's array reconstruction (an array of a given shape and dtype filled from bytes)
is allowed, nothing more.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comem.errors import UserError


def _numpy_array_globals() -> list[Any]:
    """What unpickling an ndarray needs (numpy 2 moved ``numpy.core`` to ``numpy._core``)."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _refused_global(error: Exception) -> str | None:
    """The ``module.name`` a weights-only load refused to import, if that is why it failed."""
    match = re.search(r"GLOBAL (\S+)", str(error))
    return match.group(1).rstrip(".") if match else None


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (``torch.save``'s format) or a binary pickle (the legacy one, ``pickle.dump``)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        return file.read(1) == b"\x80"  # the PROTO opcode that starts every binary pickle


def read_torch_file(path: Path, error: type[UserError], what: str) -> Any:
    """``torch.load`` of ``path`` onto the CPU that runs nothing from the file.

    ``error``: the exception raised (one line naming the file) when the file cannot be read or
    would run code; ``what``: the kind of file, for that message ("checkpoint", "weights").
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refused:
        name = _refused_global(refused)
        if name is None and not _looks_like_torch_file(path):
            raise error(f"{path}: cannot read {what} (not a PyTorch file)") from None
        if name is None or not name.startswith("numpy."):
            reason = f"it would import {name} when read" if name else "it is not plain tensor data"
            raise error(
                f"{path}: refused to read this {what}: {reason}, which can run code "
                "(comem reads only tensors and plain values; nothing in the file was run)"
            ) from None
    except Exception as failure:  # a damaged file: torch raises many types
        raise error(f"{path}: cannot read {what} ({type(failure).__name__}: {failure})") from None
    # An earlier comem version stored numpy's random state as an array: allow just that.
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refused:
        name = _refused_global(refused) or "a non-tensor object"
        raise error(
            f"{path}: refused to read this {what}: it would import {name} when read, which can run "
            "code (comem reads only tensors and plain values; nothing in the file was run)"
        ) from None
    except Exception as failure:
        raise error(f"{path}: cannot read {what} ({type(failure).__name__}: {failure})") from None
