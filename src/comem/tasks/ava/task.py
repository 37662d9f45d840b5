"""``comem train --task ava``: keyframe action detection in the three modes, evaluated with the official
AVA frame mAP on a detections CSV.

- ``single``: each keyframe clip alone (its memory is itself), as the usual AVA baseline.
- ``joint``: the keyframe clip and the N - 1 memory clips of its movie in one graph.
- ``comem``: a no-grad pass builds the memory of all N clips, then the keyframe clip alone runs with
  gradients reading it; only the keyframe clip carries boxes, so the second pass is one clip and peak
  memory stays that of one clip for any N. Under DDP that pass is the step's one all-reduce.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comem.checkpoint_state import checkpoint_weights, config_from_state, spec_from_state
from comem.config import TrainConfig, comem_home
from comem.files import json_text, write_json
from comem.models.build import build_model
from comem.tasks.ava.data import AvaKeyframeDataset, ClipSpec, collate_keyframes, load_ava, write_detections
from comem.tasks.ava.evaluation import AvaFormatError, evaluate_files
from comem.tasks.ava.model import AvaDetector
from comem.tasks.ava.synthetic import SyntheticAvaSpec, ensure_synthetic_ava
from comem.tasks.base import CheckpointEvaluation, EvalRequest, Predictions, StepContext, StepResult
from comem.tasks.common import evaluation_config, load_pretrained_weights, model_spec, settle_normalization


def resolve_ava_data(config: TrainConfig) -> Path:
    """The user's AVA dir, or the built-in synthetic AVA-format set (generated into the cache once)."""
    if config.data is not None:
        return Path(config.data)
    return ensure_synthetic_ava(comem_home(), SyntheticAvaSpec(version=config.ava_version))


def detection_step(detector: AvaDetector, batch: dict[str, Any], step: StepContext) -> StepResult:
    """Forward and backward of one batch in ``step.mode``: the BCE loss over its boxes. A two-pass
    mode (comem) reads the memory of a no-grad pass of all clips and trains the keyframe clip; the
    others run every clip in one graph."""
    video = step.to_input(batch["video"])
    boxes, box_index, times = batch["boxes"], batch["box_index"], batch.get("times")
    if step.two_pass and video.shape[1] > 1:
        banks = step.memory_bank(detector.video_model, video, times)
        with step.autocast():
            logits = step.forward(video, boxes, box_index, banks, times, method="forward_keyframe")
    else:
        with step.autocast():
            logits = step.forward(video, boxes, box_index, times)
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch["targets"])
    step.backward(loss)
    return StepResult(float(loss.detach()), int(video.shape[0]))


class AvaTask:
    """AVA v2.1/v2.2 in PySlowFast's layout: training keyframes carry ground-truth boxes, validation
    keyframes the person proposals; each item is a keyframe clip plus ``clips - 1`` memory clips of
    its movie (``comem.tasks.ava.data``)."""

    collate = staticmethod(collate_keyframes)
    selection_metric = "frame_mAP"
    headline_metrics = ("frame_mAP",)
    train_accuracy = False

    def __init__(self, config: TrainConfig, *, data_dir: Path | None = None) -> None:
        self.config = config
        self.data_dir = data_dir if data_dir is not None else resolve_ava_data(config)
        self.data = load_ava(self.data_dir, config.ava_version, detection_thresh=config.ava_detection_thresh)
        # the clip head is unused (the RoI head predicts the actions, with the config's dropout)
        self.model_spec = model_spec(config, 1, dropout=0.0)
        clips = ClipSpec(config.train_clips, config.clip_len, config.stride, config.crop_size)
        num_classes = self.data.num_classes
        self.train_set = AvaKeyframeDataset(
            self.data.train.keyframes,
            self.data.train.movies,
            num_classes,
            clips,
            train=True,
            box_jitter=config.ava_box_jitter,
            seed=config.seed,
        )
        self.val_set = AvaKeyframeDataset(
            self.data.val.keyframes, self.data.val.movies, num_classes, clips, train=False, seed=config.seed
        )

    def build_model(self) -> AvaDetector:
        detector = AvaDetector(
            build_model(self.model_spec), self.data.num_classes, dropout=self.config.dropout
        )
        if self.config.pretrained:
            load_pretrained_weights(detector.video_model, self.config)
        self.model_spec = settle_normalization(detector.video_model, self.model_spec, self.config)
        return detector

    def usable(self, batch: dict[str, Any]) -> bool:
        return len(batch["boxes"]) > 0

    def train_step(self, batch: dict[str, Any], step: StepContext) -> StepResult:
        return detection_step(step.model, batch, step)

    @torch.no_grad()
    def predict(
        self, model: AvaDetector, batch: dict[str, Any], step: StepContext
    ) -> list[tuple[int, list[tuple[str, int, list[float], Any]]]]:
        """Each keyframe's rows: (video_id, second, box x1,y1,x2,y2, scores over class ids 1..K).

        The memory of each keyframe is built from all its clips (two passes, so memory stays flat in N).
        """
        video = step.to_input(batch["video"])
        boxes, box_index, times = batch["boxes"], batch["box_index"], batch.get("times")
        with step.autocast():
            if video.shape[1] > 1:
                banks = model.video_model.memory_bank(video, times=times)
                logits = model.forward_keyframe(video, boxes, box_index, banks, times)
            else:
                logits = model(video, boxes, box_index, times)
        scores = logits.float().sigmoid().cpu().numpy()
        rows = defaultdict(list)
        for row, (item, box) in enumerate(
            zip(box_index.tolist(), batch["original_boxes"].tolist(), strict=True)
        ):
            video_id, second = batch["keys"][item]
            rows[item].append((video_id, second, box, scores[row]))
        return [(index, rows[item]) for item, index in enumerate(batch["index"].tolist())]

    def val_metrics(self, predictions: Predictions, out: Path) -> dict[str, float]:
        """Write ``out/detections_val.csv`` (official format) and score it with the official rules."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / "detections_val.csv"
        rows = [row for item in predictions.items for row in item]
        write_detections(path, rows, [category.id for category in self.data.categories])
        layout = self.data.layout
        exclusions = layout.exclusions("val")
        result, categories = evaluate_files(
            layout.labelmap, layout.groundtruth("val"), path, exclusions if exclusions.is_file() else None
        )
        metrics = {"frame_mAP": 100.0 * result.mean_ap}
        for category in categories:
            metrics[f"AP_{category.name}"] = 100.0 * result.per_class[category.id]
        return metrics

    def report(self, predictions: Predictions, out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
        """``comem eval``: ``detections_val.csv`` and ``eval_val.json`` in ``out_dir``; returns metrics."""
        metrics: dict[str, Any] = {f"val_{k}": v for k, v in self.val_metrics(predictions, out_dir).items()}
        metrics.update(
            {
                "mode": self.config.mode,
                "weights": extra.get("weights", "raw"),
                "checkpoint": extra["checkpoint"],
                "data": str(self.data_dir),
            }
        )
        metrics["detections"] = str(out_dir / "detections_val.csv")
        write_json(out_dir / "eval_val.json", metrics)
        return metrics

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"num_classes": self.data.num_classes, "data_dir": str(self.data_dir.resolve())}

    def summary(self) -> dict[str, Any]:
        return {
            "task": "ava",
            "ava_version": self.config.ava_version,
            "clips": self.config.train_clips,
            "data": str(self.data_dir),
            "train_keyframes": len(self.data.train.keyframes),
            "val_keyframes": len(self.data.val.keyframes),
            "detections": str(Path(self.config.out) / "detections_val.csv"),
        }

    def prepare_output(self, out: Path) -> None:
        pass

    @classmethod
    def for_checkpoint(cls, path: Path, state: dict[str, Any], request: EvalRequest) -> CheckpointEvaluation:
        """The official frame mAP of the checkpoint on the val split; ``request.views`` sets the clips
        per keyframe (memory clips + 1), frames are never cropped; the report goes beside the
        checkpoint (as training's), in ``eval_val_<checkpoint name>_<settings>/`` when the request
        changes a setting, or to ``request.out``."""
        config = evaluation_config(config_from_state(state), request, crops=False)
        if request.views is not None and config.mode != "single":
            config = dataclasses.replace(config, clips=request.views)
        task = evaluation_task(config, data_dir=request.data or Path(state["data_dir"]), split=request.split)
        video_model = build_model(spec_from_state(state))
        detector = AvaDetector(video_model, state["num_classes"], dropout=config.dropout)
        weight_dict, kind = checkpoint_weights(state, path, request.weights)
        detector.load_state_dict(weight_dict)
        suffix = request.settings_suffix()
        default = path.with_name(f"eval_val_{path.stem}{suffix}") if suffix else path.parent
        return CheckpointEvaluation(task, detector, request.out or default, kind)

    @classmethod
    def report_lines(cls, metrics: dict[str, Any], out_dir: Path) -> list[str]:
        """The metrics as JSON and the files written (detections CSV, official frame mAP)."""
        return [json_text(metrics), f"wrote {out_dir / 'eval_val.json'} and {metrics['detections']}"]


def evaluation_task(config: TrainConfig, *, data_dir: Path, split: str) -> AvaTask:
    """The task ``comem eval`` runs on an AVA checkpoint. AVA's test split has no public ground
    truth: only ``val`` is scored."""
    if split != "val":
        raise AvaFormatError(
            "AVA evaluation scores the val split (the test split has no public ground truth)"
        )
    return AvaTask(config, data_dir=data_dir)
