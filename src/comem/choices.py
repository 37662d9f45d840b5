"""The names a string option can take, in a module that imports nothing.

The modules that act on a name (:mod:`comem.memory`, :mod:`comem.data.decode`,
:mod:`comem.data.formats`, :mod:`comem.models.build`) import it from here, and so does
:mod:`comem.config`, which lets ``comem --help`` and ``comem train -h`` list every choice and default
without importing torch (docs/architecture.md, "A fast command").
"""

from __future__ import annotations

# The collaborative memory (comem.memory): how a clip reads the others, how the read enters its
# features, and how a clip's features become its memory entry.
MEMORY_KINDS: tuple[str, ...] = ("attention", "sigmoid", "sink", "average")
FUSION_KINDS: tuple[str, ...] = ("gate", "add")
SUMMARY_KINDS: tuple[str, ...] = ("mean", "max", "meanmax")
# Whether a clip's read depends on when the other clips happened (``none``: the order-blind read).
CLIP_TIME_KINDS: tuple[str, ...] = ("none", "relative")

# A memory after every stage, the stem included: the memory then compares what the clips show one or
# two layers from the pixels, where telling colours apart is cheap to learn (docs/learning.md).
DEFAULT_MEMORY_STAGES: tuple[str, ...] = ("all",)

# Video decoding backends (comem.data.decode).
DECODERS: tuple[str, ...] = ("pyav", "torchcodec", "frames")

# Dataset annotation formats (comem.data.formats: one reader each; "auto" detects the format).
DATA_FORMATS: tuple[str, ...] = (
    "auto",
    "slowfast",
    "kinetics",
    "charades",
    "charades-frames",
    "ssv1",
    "ssv2",
)

# Which evaluation views share a memory (``comem.data.sampling.memory_groups``): groups of at most
# the training clip count, spread over the video, one crop each; or all views in one memory.
EVAL_MEMORY_KINDS: tuple[str, ...] = ("groups", "all")

# The built-in long-range tasks (comem.data.synthetic, ``comem make-synthetic --task``).
SYNTHETIC_TASKS: tuple[str, ...] = ("distinct", "parity", "order")
