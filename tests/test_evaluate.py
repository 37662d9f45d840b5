"""Multi-view evaluation and its reports, checked against views cut and scored by hand.

The checkpoint's memory weights are random (see the ``tiny_checkpoint`` fixture), so a view's score
depends on which other views share its memory: a wrong grouping of views would show.
"""

import csv
import json
import warnings
from collections import Counter
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from tinydata import CLASS_NAMES

from comem.cli import main
from comem.data.decode import VideoReader
from comem.data.sampling import clip_times, eval_clip_starts
from comem.data.transforms import normalize
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.inference.evaluate import evaluate_checkpoint
from comem.inference.trained import load_trained
from comem.tasks.classification import video_scores
from comem.tasks.reports import write_eval_report

FRAMES, CLIP_LEN, STRIDE, SPAN, CROP = 24, 4, 2, 7, 32  # as TINY_TRAIN_FLAGS and tinydata


def read_predictions(path: Path) -> dict[str, dict[str, float]]:
    """predictions.csv as {video: {class: score}} over its top-k columns."""
    with path.open() as stream:
        rows = list(csv.DictReader(stream))
    k = sum(1 for column in rows[0] if column.startswith("pred"))
    return {row["video"]: {row[f"pred{i}"]: float(row[f"score{i}"]) for i in range(1, k + 1)} for row in rows}


def hand_views(path: Path, starts: list[int], tops: list[int]) -> torch.Tensor:
    """uint8 (1, V, C, T, 32, 32): every clip's frames at ``start + STRIDE * t``, cut at each top row
    (frames are 32 px wide and the eval scale is 32, so no resizing is involved); clip-major."""
    with VideoReader(path) as reader:
        frames = reader.read(np.arange(reader.num_frames))
    views = [frames[s : s + SPAN : STRIDE, top : top + CROP] for s in starts for top in tops]
    return torch.from_numpy(np.stack(views)).permute(0, 4, 1, 2, 3)[None]


def test_single_view_eval_is_the_middle_clip_scored_alone(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    metrics, out = evaluate_checkpoint(
        tiny_checkpoint, views=1, crops=1, workers=0, device="cpu", out=tmp_path / "eval"
    )
    assert metrics["views"] == 1 and metrics["videos"] == 4
    predictions = read_predictions(out / "predictions.csv")
    model = load_trained(tiny_checkpoint, torch.device("cpu")).model
    start = (FRAMES - SPAN + 1) // 2  # the middle of the valid start range [0, 17]
    assert eval_clip_starts(FRAMES, 1, SPAN) == [start]
    for video, scores in predictions.items():
        with torch.no_grad():
            logits = model(normalize(hand_views(Path(video), [start], [0])))
        want = logits.softmax(dim=-1)[0, 0]
        got = torch.tensor([scores[name] for name in CLASS_NAMES])
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


# The views (clip k, crop r) = view 3k + r of a 3-view, 3-crop evaluation of a 2-clip model, by the
# memory they share: one of all 9, or (groups) at most 2 clips spread over the video, one crop each:
# clips {0, 2} and {1}, each crop position apart.
MEMORIES = {"all": [list(range(9))], "groups": [[0, 6], [3], [1, 7], [4], [2, 8], [5]]}


@pytest.mark.parametrize("eval_memory", ["all", "groups"])
def test_multi_view_portrait_three_crops_mean_and_max_over_views_sharing_memories(
    eval_memory: str,
    tiny_checkpoint: Path,
    portrait_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes: Counter[str] = Counter()
    read = VideoReader.read

    def counted(reader: VideoReader, *args, **kwargs):  # noqa: ANN202 - one decoding pass over the file
        passes[reader.path] += 1
        return read(reader, *args, **kwargs)

    monkeypatch.setattr(VideoReader, "read", counted)
    outputs = {}
    for aggregate in ("mean", "max"):
        metrics, out = evaluate_checkpoint(
            tiny_checkpoint,
            data=portrait_data,
            views=3,
            crops=3,
            aggregate=aggregate,
            eval_memory=eval_memory,
            workers=0,
            device="cpu",
            out=tmp_path / aggregate,
        )
        assert (metrics["views"], metrics["clips"], metrics["crops"]) == (9, 3, 3)
        assert metrics["aggregate"] == aggregate and metrics["eval_memory"] == eval_memory
        assert metrics["memories_per_video"] == len(MEMORIES[eval_memory])
        outputs[aggregate] = read_predictions(out / "predictions.csv")
    # each video decoded in one pass for all 9 views, once per evaluation
    assert sorted(passes.values()) == [2, 2] and len(passes) == 2

    model = load_trained(tiny_checkpoint, torch.device("cpu")).model
    starts = [3, 9, 15]  # centres of 3 equal segments of the start range [0, 17]
    assert eval_clip_starts(FRAMES, 3, SPAN) == starts
    for video in outputs["mean"]:
        views = normalize(hand_views(Path(video), starts, tops=[0, 8, 16]))  # top, centre, bottom
        times = torch.from_numpy(clip_times(starts, SPAN, FRAMES)).repeat_interleave(3)[
            None
        ]  # a clip's crops
        shared = torch.zeros(9, 2)  # each view read its memory's views only
        with torch.no_grad():
            for group in MEMORIES[eval_memory]:
                shared[group] = model(views[:, group], times=times[:, group]).softmax(dim=-1)[0]
            alone = model(views, share_memory=False).softmax(dim=-1)[0]
        for aggregate, want in (("mean", shared.mean(dim=0)), ("max", shared.amax(dim=0))):
            got = torch.tensor([outputs[aggregate][video][name] for name in CLASS_NAMES])
            # float32 rounding of a batch of 2 against 1; views read at even times miss by 3e-2
            torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
        # the memory matters: scoring each view alone gives other scores
        assert (alone.mean(dim=0) - shared.mean(dim=0)).abs().max() > 1e-3


def test_eval_cli_writes_consistent_reports(
    tiny_checkpoint: Path, portrait_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(portrait_data)]
    assert main([*argv, "--crops", "3", "--workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "predictions.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["video", "true", "pred1", "score1", "pred2", "score2"]  # 2 classes: top-2
    assert len(rows) == metrics["videos"] == 2
    hits = [row["pred1"] == row["true"] for row in rows]
    assert metrics["val_top1"] == pytest.approx(100.0 * np.mean(hits))
    for row in rows:
        assert float(row["score1"]) >= float(row["score2"])
        assert float(row["score1"]) + float(row["score2"]) == pytest.approx(1.0, abs=1e-5)
    confused = Counter((row["true"], row["pred1"]) for row in rows if row["pred1"] != row["true"])
    assert {(p["true"], p["predicted"]): p["videos"] for p in metrics["top_confused"]} == confused
    with (out / "per_class.csv").open() as stream:
        per_class = list(csv.DictReader(stream))
    assert [row["class"] for row in per_class] == list(CLASS_NAMES)
    assert sum(int(row["correct"]) for row in per_class) == sum(hits)
    image = matplotlib.image.imread(out / "confusion_matrix.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 300


def test_multi_label_report_has_sklearn_per_class_ap_and_a_chart(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"action {i}" for i in range(6)]
    scores = torch.from_numpy(rng.random((30, 6)))
    targets = torch.from_numpy((rng.random((30, 6)) < 0.3).astype(np.float32))
    targets[:, 4] = 0  # no positives: left out, not counted as AP 0
    videos = [f"video_{i}.mp4" for i in range(30)]
    extra = write_eval_report(tmp_path, scores, targets, videos, names)
    want = {
        names[c]: 100.0 * average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
        for c in range(6)
        if c != 4
    }
    assert extra["per_class_AP"] == pytest.approx(want, abs=1e-6)
    with (tmp_path / "per_class.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert rows[4] == {"class": "action 4", "positives": "0", "AP": ""}
    assert {row["class"]: float(row["AP"]) for row in rows if row["AP"]} == pytest.approx(want, abs=1e-4)
    with (tmp_path / "predictions.csv").open() as stream:
        first = next(csv.DictReader(stream))
    assert first["true"] == ";".join(names[c] for c in np.flatnonzero(targets[0].numpy()))
    assert first["pred1"] == names[int(scores[0].argmax())]
    image = matplotlib.image.imread(tmp_path / "per_class_ap.png")
    assert image.ndim == 3 and image.shape[0] > 200
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_eval_on_data_of_the_other_label_kind_is_a_one_line_error(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A multi-label (sigmoid, mAP) checkpoint on single-label data with no more classes was scored
    # with softmax and top-1, its report mixing both.
    state = load_checkpoint(tiny_checkpoint)
    state["multi_label"] = True
    save_checkpoint(state, tmp_path / "multi.pt")
    argv = ["eval", "--checkpoint", str(tmp_path / "multi.pt"), "--data", str(tiny_dataset)]
    assert main([*argv, "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "eval")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"comem eval: error: {tiny_dataset}: single-label data but {tmp_path / 'multi.pt'} "
                     "was trained on multi-label data"]  # fmt: skip
    assert not (tmp_path / "eval").exists()


def test_video_scores_mean_and_max_by_hand() -> None:
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # one video, two views, two classes
    e = float(np.exp(2.0))
    single = video_scores(logits, multi_label=False, aggregate="mean")
    torch.testing.assert_close(single, torch.tensor([[(0.5 + e / (1 + e)) / 2, (0.5 + 1 / (1 + e)) / 2]]))
    sigmoid_2 = 1 / (1 + float(np.exp(-2.0)))
    multi = video_scores(logits, multi_label=True, aggregate="max")
    torch.testing.assert_close(multi, torch.tensor([[sigmoid_2, 0.5]]))
    with pytest.raises(ValueError, match="aggregate"):
        video_scores(logits, multi_label=False, aggregate="median")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert video_scores(logits, multi_label=False).shape == (1, 2)
