"""Checkpoint files written atomically (a crash mid-write never leaves a half-written ``last.pt``) and
read without running code from the file (:mod:`comem.serialization`). What the file holds and how its
entries are interpreted: :mod:`comem.checkpoint_state`."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from comem.checkpoint_state import CheckpointError
from comem.engine.finite import check_finite_checkpoint
from comem.engine.rng import numpy_state_as_plain
from comem.serialization import read_torch_file

TEMP_PATTERN = ".*.pt.*.tmp"  # what save_checkpoint writes before renaming


class _RecordingWriter:
    """Passes writes to ``stream`` and keeps the ``OSError`` of a failed one: torch reports a failed
    write as its own ``RuntimeError`` without the errno, and "no space left" must be said as such."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.stream.flush()


def _write_error(path: Path, error: OSError) -> CheckpointError:
    if error.errno == errno.ENOSPC:
        reason = "no space left on the device"
    else:
        reason = error.strerror or str(error)
    kept = f"; the previous {path.name} is kept" if path.exists() else ""
    return CheckpointError(f"{path}: cannot write checkpoint: {reason}{kept}")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    A failed write (disk full, read-only file system) removes the temporary file, leaves the previous
    ``path`` as it was and raises :class:`CheckpointError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            writer = _RecordingWriter(stream)
            try:
                torch.save(state, writer)
                stream.flush()
                os.fsync(stream.fileno())
            except RuntimeError as error:
                if writer.error is None:
                    raise
                raise _write_error(path, writer.error) from error
            except OSError as error:
                raise _write_error(path, error) from None
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary checkpoint files a killed process left in ``directory`` (call it only while
    holding the run directory's lock: then no other process is writing one). Returns them."""
    stale = sorted(directory.glob(TEMP_PATTERN)) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints of earlier comem versions stored numpy's random state as a tuple with an array."""
    rng_states = [state.get("rng")] + [rank.get("rng") for rank in state.get("rank_states", [])]
    for rng in rng_states:
        if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
            rng["numpy"] = numpy_state_as_plain(rng["numpy"])
    return state


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A comem checkpoint's content (tensors and plain values); nothing in the file is run. One whose
    model holds nan or inf values (a diverged run) is refused: resuming, evaluating or predicting
    with it would only give nan."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    state = read_torch_file(path, CheckpointError, "checkpoint")
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a comem checkpoint (no 'model' entry)")
    check_finite_checkpoint(state, path)
    return _upgrade(state)
