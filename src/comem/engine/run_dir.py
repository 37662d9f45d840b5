"""The run directory (``--out``) of one training run: never overwritten or shared by accident.

:func:`claim_run_dir` is taken before anything is trained. It

- makes the directory, saying in one line why it cannot (``--out`` is a file, read-only, ...);
- locks it for this process (``fcntl.flock`` on ``OUT/.comem-train.lock``, which holds the PID): a
  second run into the same directory refuses and names that PID. The kernel drops the lock when the
  process dies, however it dies, so a lock file left by a dead run does not block;
- refuses a fresh run into a directory that holds one (``--resume`` continues it, ``--overwrite``
  replaces it);
- refuses a fresh run into a directory holding files comem did not write (listed; ``--overwrite``
  accepts them and leaves them as they are, though comem's own file names, ``config.yaml`` say, are
  replaced): every file of a directory no comem run has claimed (no lock file) counts as the user's,
  and in a claimed one every name a run does not write. ``--out`` inside the ``--data`` folder is
  refused whatever it holds;
- removes temporary checkpoint files a killed run left behind.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from comem.engine.checkpoint import TEMP_PATTERN, remove_stale_temps
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
# Everything else a run or ``comem eval`` beside its checkpoints may write (``eval_<split>_<name>/``).
OTHER_OUTPUTS = ("steps.csv", "metrics.csv", "ema", "wandb", LOCK_NAME)
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


def comem_wrote(name: str) -> bool:
    """Whether a run directory's entry ``name`` is one comem writes there."""
    return (
        name in REPLACED_OUTPUTS
        or name in OTHER_OUTPUTS
        or name.startswith("eval_")
        or fnmatch.fnmatch(name, TEMP_PATTERN)
    )


def foreign_files(out: Path) -> list[str]:
    """The entries of ``out`` comem did not write (all of them where no comem run claimed ``out``)."""
    if not out.is_dir():
        return []
    names = sorted(entry.name for entry in out.iterdir())
    if (out / LOCK_NAME).exists():
        return [name for name in names if not comem_wrote(name)]
    return names


def _check_not_data(out: Path, data: str | Path | None) -> None:
    if data is None:
        return
    data = Path(data).resolve()
    if out.resolve() == data or data in out.resolve().parents:
        raise RunDirError(
            f"{out}: --out is inside the --data folder {data}; choose an --out outside the dataset"
        )


def _check_foreign(out: Path, *, resume: bool, overwrite: bool) -> None:
    if overwrite or (resume and (out / "last.pt").exists()):
        return
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise RunDirError(
            f"{out}: holds files comem did not write ({shown}); choose an empty or new --out, "
            "or pass --overwrite to write the run beside them"
        )


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
def claim_run_dir(
    out: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    main: bool = True,
    data: str | Path | None = None,
) -> Iterator[Path]:
    """Hold ``out`` for one training run (see the module docstring); released on exit.

    ``main``: whether this process writes the run's files (rank 0 under torchrun); the other ranks
    take no lock and check nothing: rank 0's refusal ends the job. Claiming a directory this process
    already holds (the CLI claims it before opening ``OUT/train.log``, the trainer again) does nothing.
    """
    out = Path(out)
    if not main or out.resolve() in _held:
        yield out
        return
    _check_not_data(out, data)
    _check_foreign(out, resume=resume, overwrite=overwrite)
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
