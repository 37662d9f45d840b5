"""comem: video-level training with collaborative memory (Yang et al., CVPR 2021).

Several clips of a video share a collaborative memory that gates each clip's features; comem trains
at video level with about the memory of single-clip training. In your own model and loop::

    import comem, torch
    from torchvision.models.video import r3d_18

    model = comem.wrap(r3d_18(num_classes=5), ["layer3", "layer4"])   # memories after two stages
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    video, label = torch.randn(2, 3, 3, 8, 64, 64), torch.tensor([1, 4])  # (B, N clips, C, T, H, W)
    optimizer.zero_grad()
    loss = comem.step(model, video, label, mode="comem")               # forward + backward
    optimizer.step()
    print(comem.load(model).predict(video[0]).attention)                # clips x clips read weights

The public names (each documented): ``wrap``, ``step``, ``load``, ``CollaborativeMemory``,
``WrappedModel``, ``Predictor``, ``VideoPrediction``, ``VideoModel``, ``ModelSpec``,
``build_model``, ``VideoClips``, ``MemoryOptions``, ``TwoPassModel``, ``TrainConfig``,
``UserError``. The ``comem`` command trains, evaluates and predicts with the same pieces
(``comem --help``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module defining it; imported on first use so ``comem`` (the CLI) starts fast
_EXPORTS = {
    "wrap": "comem.models.wrap",
    "step": "comem.engine.step",
    "load": "comem.inference.predictor",
    "CollaborativeMemory": "comem.memory",
    "WrappedModel": "comem.models.wrap",
    "Predictor": "comem.inference.predictor",
    "VideoPrediction": "comem.inference.predict",
    "VideoModel": "comem.models.build",
    "ModelSpec": "comem.models.build",
    "build_model": "comem.models.build",
    "VideoClips": "comem.data.clips",
    "MemoryOptions": "comem.models.layouts",
    "TwoPassModel": "comem.models.contract",
    "TrainConfig": "comem.config",
    "UserError": "comem.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    """The public names are imported on first use (``comem.wrap`` imports torch, the CLI need not)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'comem' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the public API, so ``help(comem)`` and completion list it."""
    return sorted({*globals(), *_EXPORTS})
