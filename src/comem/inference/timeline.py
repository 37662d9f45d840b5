"""The timeline figure of ``comem predict --plot``: where in the video the evidence for each class lies.

A strip of thumbnails (the middle frame of evenly chosen clips, numbered) over a plot of the
per-clip probabilities of the video's top classes against time, with each clip's extent shaded, so
a user can match a rise in a class's probability to what the frames show. Below it, one map per
memory stage of the clips x clips read weights: row i shows which clips clip i drew its memory from.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.gridspec import SubplotSpec

from comem.files import save_figure
from comem.inference.predict import VideoPrediction

MAX_THUMBNAILS = 8


def thumbnail_clips(num_clips: int, limit: int = MAX_THUMBNAILS) -> list[int]:
    """Indices of at most ``limit`` clips spread evenly over ``num_clips``, first and last included."""
    if num_clips <= limit:
        return list(range(num_clips))
    return sorted({round(i * (num_clips - 1) / (limit - 1)) for i in range(limit)})


def plot_timeline(path: Path, prediction: VideoPrediction, class_names: list[str], *, top: int = 5) -> None:
    """Write the timeline PNG of one prediction: thumbnails, then per-clip probabilities over time."""
    shown = thumbnail_clips(len(prediction.thumbnails))
    aspect = prediction.thumbnails[0].shape[0] / prediction.thumbnails[0].shape[1]
    width, left, right = 13.0, 0.05, 0.8
    column_width = width * (right - left) / max(len(shown), 4)
    thumb_height = min(column_width * aspect, 3.0)
    plot_height = 3.4
    maps_height = 3.0 if prediction.attention else 0.0
    heights = [thumb_height, plot_height] + ([maps_height] if maps_height else [])
    figure = Figure(figsize=(width, sum(heights) + 1.6 + (0.9 if maps_height else 0.0)))
    grid = figure.add_gridspec(
        len(heights), len(shown), height_ratios=heights, hspace=0.45, left=left, right=right
    )
    times = prediction.clip_times_s
    seconds = prediction.fps > 0
    unit = "s" if seconds else " (frame)"
    for column, clip in enumerate(shown):
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(prediction.thumbnails[clip])
        axes.set_axis_off()
        axes.set_title(f"#{clip + 1}  {times[clip]:.1f}{unit}", fontsize=9)
    plot = figure.add_subplot(grid[1, :])
    scale = prediction.fps if seconds else 1.0
    for first, last in prediction.clip_frames:
        plot.axvspan(first / scale, (last + 1) / scale, color="0.5", alpha=0.08, linewidth=0)
    for rank, (index, score) in enumerate(prediction.top(min(top, len(class_names)))):
        plot.plot(
            times,
            prediction.clip_probabilities[:, index],
            marker="o",
            linewidth=2.2 if rank == 0 else 1.4,
            label=f"{class_names[index]} (video {score:.2f})",
        )
    for clip in shown:
        plot.axvline(times[clip], color="0.4", linestyle=":", linewidth=0.8)
        plot.annotate(
            f"#{clip + 1}", (times[clip], 1.05), xytext=(0, 3), textcoords="offset points",
            ha="center", va="bottom", fontsize=8, color="0.3", annotation_clip=False,
        )  # fmt: skip
    plot.set_xlim(0, prediction.duration_s)
    plot.set_ylim(-0.03, 1.05)  # room for markers at 0 and 1
    plot.set_xlabel("time (s)" if seconds else "frame")
    plot.set_ylabel("clip probability (sigmoid)" if prediction.multi_label else "clip probability")
    plot.grid(alpha=0.3)
    plot.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="top classes")
    if prediction.attention:
        plot_read_weights(figure, grid[2, :], prediction.attention)
    name = Path(prediction.path).name
    best, score = prediction.top(1)[0]
    length = f"{prediction.duration_s:.1f}{'s' if seconds else ' frames'}"
    figure.suptitle(
        f"{name}: {prediction.width}x{prediction.height}, {length}, {len(times)} clips (shaded)"
        f" - top: {class_names[best]} {score:.2f}",
        fontsize=11,
    )
    figure.subplots_adjust(top=1 - 0.75 / figure.get_figheight(), bottom=0.6 / figure.get_figheight())
    save_figure(figure, Path(path))


def plot_read_weights(figure: Figure, cell: SubplotSpec, attention: dict[str, np.ndarray]) -> None:
    """One heat map per memory stage in ``cell``: rows are the reading clips, columns the clips read."""
    maps = cell.subgridspec(1, max(len(attention), 3), wspace=0.5)
    for column, (stage, weights) in enumerate(attention.items()):
        axes = figure.add_subplot(maps[0, column])
        image = axes.imshow(weights, vmin=0.0, vmax=max(float(weights.max()), 1e-6), cmap="viridis")
        count = len(weights)
        ticks = range(0, count, max(1, math.ceil(count / 8)))
        axes.set_xticks(list(ticks), [f"#{i + 1}" for i in ticks], fontsize=7)
        axes.set_yticks(list(ticks), [f"#{i + 1}" for i in ticks], fontsize=7)
        axes.set_xlabel("clip read", fontsize=8)
        axes.set_ylabel("reading clip", fontsize=8)
        axes.set_title(f"memory after {stage}", fontsize=9)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
