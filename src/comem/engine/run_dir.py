"""The run directory (``--out``) of one training run: never overwritten or shared by accident.

:func:`claim_run_dir` is taken before anything is trained. It

- makes the directory, saying in one line why it cannot (``--out`` is a file, read-only, ...);
- locks it for this process (``fcntl.flock`` on ``OUT/.comem-train.lock``, which holds the PID): a
  second run into the same directory refuses and names that PID. The kernel drops the lock when the
  process dies, however it dies, so a lock file left by a dead run does not block;
- refuses a fresh run into a directory that holds one (``--resume`` continues it, ``--overwrite``
  replaces it);
- removes temporary checkpoint files a killed run left behind.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from comem.engine.checkpoint import remove_stale_temps
from comem.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other checks still hold
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".comem-train.lock"
# What a run writes into its directory: a fresh run into a directory holding one of these refuses.
RUN_OUTPUTS = ("last.pt", "best.pt", "metrics.json")
# What ``--overwrite`` removes before the new run starts (nothing else in the directory is touched).
REPLACED_OUTPUTS = (
    *RUN_OUTPUTS,
    *("curves.png", "classes.txt", "tb", "train.log", "config.yaml", "env.json"),
    *("detections_val.csv", "eval_val.json"),
)
_held: set[Path] = set()  # run directories this process holds (a nested claim of one is a no-op)


log = logging.getLogger(__name__)


class RunDirError(UserError, RuntimeError):
    """``--out`` cannot be used for this run (message names the directory and what to do)."""


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    return error.strerror or str(error)


def _make_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: --out is a file, not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"{out}: cannot create the --out directory ({_reason(error)})") from None


def _lock(out: Path) -> int:
    """Open and lock ``out/LOCK_NAME`` without blocking; returns the open descriptor."""
    path = out / LOCK_NAME
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunDirError(f"{out}: cannot write into the --out directory ({_reason(error)})") from None
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.read(handle, 64).decode(errors="replace").strip() or "unknown"
        os.close(handle)
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RunDirError(
                f"{out}: another comem train (PID {holder}) is running in this directory; "
                "wait for it to end or choose another --out"
            ) from None
        raise RunDirError(f"{out}: cannot lock the --out directory ({_reason(error)})") from None
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
    except OSError as error:
        os.close(handle)
        raise RunDirError(f"{out}: cannot write into the --out directory ({_reason(error)})") from None
    return handle


def _check_not_a_run(out: Path, *, resume: bool, overwrite: bool) -> None:
    found = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not found or overwrite or (resume and (out / "last.pt").exists()):
        if found and overwrite:
            for name in REPLACED_OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            log.info(f"--overwrite: removed the earlier run's files from {out}")
        return
    hint = "continue it with --resume, " if "last.pt" in found else ""
    raise RunDirError(
        f"{out}: already holds a run ({', '.join(found)}); {hint}choose another --out, "
        "or pass --overwrite to replace it"
    )


@contextmanager
def claim_run_dir(out: str | Path, *, resume: bool, overwrite: bool, main: bool = True) -> Iterator[Path]:
    """Hold ``out`` for one training run (see the module docstring); released on exit.

    ``main``: whether this process writes the run's files (rank 0 under torchrun); the other ranks
    take no lock and check nothing: rank 0's refusal ends the job. Claiming a directory this process
    already holds (the CLI claims it before opening ``OUT/train.log``, the trainer again) does nothing.
    """
    out = Path(out)
    if not main or out.resolve() in _held:
        yield out
        return
    _make_dir(out)
    handle = _lock(out)
    _held.add(out.resolve())
    try:
        _check_not_a_run(out, resume=resume, overwrite=overwrite)
        remove_stale_temps(out)
        if resume and not (out / "last.pt").exists():
            log.info(f"--resume: no {out / 'last.pt'} yet; starting a fresh run")
        yield out
    finally:
        _held.discard(out.resolve())
        os.close(handle)  # releases the lock
