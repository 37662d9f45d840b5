"""``--resume`` continues the run ``last.pt`` holds, not another one.

Every training setting of the command is compared with the checkpoint's. A setting that changes what
the remaining steps compute (batch size, clips, clip length, stride, crop, mode, backbone, data, seed,
optimizer, ... : every field not listed in :data:`MAY_CHANGE`) is an error listing each difference;
the settings in :data:`MAY_CHANGE` are accepted and said in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comem.errors import UserError

# Settings a resumed run may change: where and how fast it runs, how it is evaluated and saved, and
# ``epochs`` (to extend a run; the learning-rate schedule then follows the new length).
MAY_CHANGE = frozenset(
    {
        "workers",
        "device",
        "views",
        "crops",
        "eval_scale",
        "epochs",
        "eval_every",
        "save_every",
        "out",
        "resume",
        "overwrite",
        "nonfinite_steps",  # when a diverged run stops, and how long a stalled rank is waited for
        "dist_timeout",
        "pretrained",  # the checkpoint's weights replace the pretrained ones
        "pretrained_strict",
        "compile",
        "channels_last",
        "wandb",  # where the same numbers are also logged
        "wandb_project",
        "wandb_name",
        "wandb_mode",
    }
)


class ResumeMismatchError(UserError, ValueError):
    """The command's settings differ from the checkpoint's in a way that breaks exact resume."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _same(name: str, saved: Any, current: Any) -> bool:
    if name == "data" and saved is not None and current is not None:
        return Path(saved).resolve() == Path(current).resolve()
    if isinstance(saved, list | tuple) and isinstance(current, list | tuple):
        return list(saved) == list(current)
    return saved == current


def check_resume(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Compare the checkpoint's config ``saved`` with the command's ``current`` (both as dicts).

    Raises :class:`ResumeMismatchError` naming every setting that breaks exactness; returns the
    accepted changes as ``--flag old -> new`` (fields one of the two versions lacks are skipped).
    """
    changed = [
        (name, saved[name], value)
        for name, value in current.items()
        if name in saved and not _same(name, saved[name], value)
    ]
    breaking = [f"{_flag(name)} {old} -> {new}" for name, old, new in changed if name not in MAY_CHANGE]
    if breaking:
        raise ResumeMismatchError(
            f"{path}: --resume with other settings than the run's ({'; '.join(breaking)}); "
            "use the run's settings, or a new --out for a new run"
        )
    return [
        f"{_flag(name)} {old} -> {new}"
        for name, old, new in changed
        if name not in ("resume", "overwrite", "out")
    ]
