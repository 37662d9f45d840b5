"""The numeric range of every training option, checked for any config (flags, YAML or the API).

Separate from :mod:`comem.config` so the ranges read as one table. :func:`range_problem` returns the
first problem as ``"<field> must be ...; got <value>"`` (the config names the option as the user
spelled it) or ``None``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# field -> (lowest, highest, whether each end is allowed); ``None``: unbounded on that side.
# Integers that must be >= 1 are listed too; any number of any field must be finite.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "clips": (1, None, True, True),
    "clip_len": (1, None, True, True),
    "stride": (1, None, True, True),
    "crop_size": (1, None, True, True),
    "min_scale": (1, None, True, True),
    "max_scale": (1, None, True, True),
    "eval_scale": (1, None, True, True),
    "views": (1, None, True, True),
    "workers": (0, None, True, True),
    "key_dim": (1, None, True, True),
    "gate_hidden": (1, None, True, True),
    "entry_hidden": (1, None, True, True),
    "dropout": (0, 1, True, False),
    "epochs": (1, None, True, True),
    "batch_size": (1, None, True, True),
    "lr": (0, None, False, True),
    "weight_decay": (0, None, True, True),
    "momentum": (0, 1, True, False),
    "memory_lr_scale": (0, None, False, True),
    "warmup_epochs": (0, None, True, True),
    "clip_grad": (0, None, False, True),
    "accum_steps": (1, None, True, True),
    "seed": (0, None, True, True),
    "eval_every": (1, None, True, True),
    "save_every": (0, None, True, True),
    "nonfinite_steps": (1, None, True, True),
    "dist_timeout": (0, None, False, True),
    "target_fps": (0, None, False, True),
    "memory_chunk": (1, None, True, True),
    "ava_detection_thresh": (0, 1, True, True),
    "ava_box_jitter": (0, 1, True, False),
    "randaug_ops": (0, None, True, True),
    "randaug_magnitude": (0, 30, True, True),
    "mixup_alpha": (0, None, True, True),
    "cutmix_alpha": (0, None, True, True),
    "mix_prob": (0, 1, True, True),
    "mix_switch_prob": (0, 1, True, True),
    "label_smoothing": (0, 1, True, False),
    "ema_decay": (0, 1, False, False),
}


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, int | float) and not isinstance(item, bool)]
    return []


def _interval(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def range_problem(config: Any) -> str | None:
    """The first numeric field of the dataclass ``config`` that is not finite or out of its range."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if any(not math.isfinite(number) for number in _numbers(value)):
            return f"{field.name} must be a finite number; got {value}"
        if field.name not in RANGES or value is None:
            continue
        low, high, low_in, high_in = RANGES[field.name]
        below = low is not None and (value < low if low_in else value <= low)
        above = high is not None and (value > high if high_in else value >= high)
        if below or above:
            return f"{field.name} must be {_interval(low, high, low_in, high_in)}; got {value}"
    return None
