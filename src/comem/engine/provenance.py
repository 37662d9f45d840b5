"""What a run records about itself beside its checkpoints, so anyone can say afterwards what ran.

- ``OUT/config.yaml``: the resolved configuration, a valid ``--config`` file (``comem train
  --config OUT/config.yaml`` repeats the run from any directory: its paths, ``data``, ``out`` and a
  ``pretrained`` file, are absolute).
- ``OUT/env.json``: versions of comem and its main dependencies, CUDA/cuDNN, device names, world
  size, the command line and the git commit of the code when it runs from a checkout.

The environment is read here once for every report of it: ``env.json``, ``comem doctor``'s versions
and devices and ``comem bench``'s header (:func:`versions`, :func:`devices`, :func:`device_name`).

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
import torch.distributed as dist

from comem.config import TrainConfig, config_yaml

PACKAGES = ("comem", "torch", "torchvision", "av", "numpy", "torchcodec")


def _version(package: str) -> str | None:
    """The imported package's ``__version__`` (torch's names its CUDA build, ``2.x+cu130``, and a
    package imported from a source tree, ``PYTHONPATH=src``, may differ from the installed one);
    else the installed distribution's version; None when it is neither."""
    version = getattr(sys.modules.get(package), "__version__", None)
    if version is not None:
        return str(version)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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


def versions() -> dict[str, str | None]:
    """Versions of comem, its main dependencies and what they run on; ``None`` where there is none
    (a package not installed, no CUDA build)."""
    import av

    info: dict[str, str | None] = {name: _version(name) for name in PACKAGES}
    info.update(
        python=platform.python_version(),
        libavcodec=".".join(map(str, av.library_versions.get("libavcodec", ()))) or None,
        cuda=torch.version.cuda,
        cudnn=str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        nccl=None,
    )
    if torch.version.cuda and dist.is_available() and dist.is_nccl_available():
        version = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    return info


def cpu_name() -> str:
    """The processor's model name where Linux tells it, else its architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def devices() -> list[dict[str, Any]]:
    """The CPU and every CUDA device with its memory and compute capability."""
    found: list[dict[str, Any]] = [
        {
            "device": "cpu",
            "name": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
    ]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        found.append(
            {
                "device": f"cuda:{index}",
                "name": properties.name,
                "memory_gib": round(properties.total_memory / 2**30, 1),
                "compute_capability": f"{properties.major}.{properties.minor}",
                "multiprocessors": properties.multi_processor_count,
            }
        )
    return found


def environment(world_size: int = 1) -> dict[str, Any]:
    """Versions, devices and the command line of this process (JSON-serialisable)."""
    found = versions()
    names = [entry["name"] for entry in devices()]
    return {
        "versions": found,
        "python": found["python"],
        "platform": platform.platform(),
        "cuda": found["cuda"],
        "cudnn": found["cudnn"],
        "devices": names[1:] or names,  # the GPUs, else the CPU
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
