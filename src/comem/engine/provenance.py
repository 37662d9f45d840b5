"""What a run records about itself beside its checkpoints, so anyone can say afterwards what ran.

- ``OUT/config.yaml``: the resolved configuration, a valid ``--config`` file (``comem train
  --config OUT/config.yaml`` repeats the run from any directory: its paths, ``data``, ``out`` and a
  ``pretrained`` file, are absolute).
- ``OUT/env.json``: versions of comem and its main dependencies, CUDA/cuDNN, device names, world
  size, the command line and the git commit of the code when it runs from a checkout.

``OUT/train.log`` (what the console showed) is the command line's: see ``comem.cli.logs``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from comem.config import TrainConfig, config_yaml

PACKAGES = ("comem", "torch", "torchvision", "av", "numpy", "torchcodec")


def _version(package: str) -> str | None:
    """The installed distribution's version; else, for a package imported from a source tree
    (``PYTHONPATH=src``, as ``benchmarks/gpu_check.sh`` runs comem), its ``__version__``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return getattr(module, "__version__", None) if module is not None else None


def git_state(path: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git checkout holding ``path``, or None outside one."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment(world_size: int = 1) -> dict[str, Any]:
    """Versions, devices and the command line of this process (JSON-serialisable)."""
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "versions": {name: _version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": devices or [platform.processor() or platform.machine()],
        "cpu_count": os.cpu_count(),
        "world_size": world_size,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cwd": os.getcwd(),
        "git": git_state(Path(__file__).resolve().parent),
    }


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with ``data``, ``out`` and a ``pretrained`` file given as absolute paths (a relative
    path means nothing once the file is read from another directory)."""
    changes = {"out": os.path.abspath(config.out)}
    if config.data is not None:
        changes["data"] = os.path.abspath(config.data)
    if config.pretrained is not None and Path(config.pretrained).exists():  # not a name like "torchvision"
        changes["pretrained"] = os.path.abspath(config.pretrained)
    return dataclasses.replace(config, **changes)


def write_run_record(out: Path, config: TrainConfig, world_size: int = 1) -> None:
    """Write ``out/config.yaml`` and ``out/env.json`` (the main process calls this once per start)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_yaml(absolute_paths(config)))
    (out / "env.json").write_text(json.dumps(environment(world_size), indent=2) + "\n")
