"""Clip times: from the sampler through the dataset and batch to every memory, and a memory that
reads them (``clip_time='relative'``) or not (``'none'``)."""

import contextlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from tinydata import write_dataset

from comem.checkpoint_state import spec_from_state
from comem.cli import main
from comem.data.datasets import MultiClipVideoDataset, collate_clips, load_kinetics_csv_dir
from comem.data.sampling import clip_span, clip_times, eval_clip_starts
from comem.data.synthetic import PALETTE
from comem.engine import step as step_module
from comem.engine.modes import comem_step, joint_step, tsn_step
from comem.inference.predict import score_views
from comem.memory import CollaborativeMemory, relative_time_features
from comem.models.build import ModelSpec, VideoModel, build_model
from comem.models.wrap import wrap


def trained_like(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every zero-initialised memory parameter (gate, time bias) given real values, as after training."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for memory in module.modules():
            if isinstance(memory, CollaborativeMemory):
                memory.out.weight.normal_(0, 0.5)
                memory.out.bias.normal_(0, 0.5)
                if memory.time_bias is not None:
                    memory.time_bias.normal_(0, 2.0)
                if memory.time_query is not None:
                    memory.time_query.normal_(0, 1.0)
    return module


def tiny_model(clip_time: str = "relative") -> VideoModel:
    torch.manual_seed(0)
    return trained_like(build_model(ModelSpec(num_classes=3, clip_time=clip_time, dropout=0.0))).eval()


VIDEO = torch.randint(
    0, 256, (2, 4, 3, 4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
)
TIMES = torch.tensor([[0.1, 0.3, 0.6, 0.9], [0.05, 0.5, 0.55, 0.7]])


# --- the memory ---------------------------------------------------------------------------------


def test_relative_memory_is_the_identity_and_order_blind_at_init() -> None:
    module = CollaborativeMemory(16, clip_time="relative")
    features = torch.randn(2 * 3, 16, 2, 3, 3)
    assert torch.equal(module(features, 3, torch.rand(2, 3)), features)
    blind = CollaborativeMemory(16, clip_time="none")
    blind.load_state_dict(module.state_dict(), strict=False)
    bank = torch.randn(2, 3, 16)
    times = torch.rand(2, 3)
    torch.testing.assert_close(module.attention(bank, bank, times, times), blind.attention(bank, bank))


@pytest.mark.parametrize("memory", ["attention", "sigmoid", "sink", "average"])
def test_shuffling_clips_with_their_times_permutes_the_outputs(memory: str) -> None:
    module = trained_like(CollaborativeMemory(16, memory=memory, clip_time="relative"))
    features = torch.randn(2, 4, 16, 2, 3, 3)
    permutation = torch.tensor([2, 0, 3, 1])
    out = module(features.flatten(0, 1), 4, TIMES).view_as(features)
    shuffled = module(features[:, permutation].flatten(0, 1), 4, TIMES[:, permutation]).view_as(features)
    torch.testing.assert_close(shuffled, out[:, permutation])


@pytest.mark.parametrize("memory", ["attention", "average"])
def test_shuffling_the_times_alone_changes_a_time_aware_read_only(memory: str) -> None:
    features = torch.randn(2 * 4, 16, 2, 3, 3)
    reversed_times = TIMES.flip(1)
    aware = trained_like(CollaborativeMemory(16, memory=memory, clip_time="relative"))
    assert not torch.allclose(aware(features, 4, TIMES), aware(features, 4, reversed_times))
    blind = trained_like(CollaborativeMemory(16, memory=memory, clip_time="none"))
    torch.testing.assert_close(blind(features, 4, TIMES), blind(features, 4, reversed_times))


def test_relative_read_depends_on_time_differences_only() -> None:
    module = trained_like(CollaborativeMemory(16))
    features = torch.randn(2 * 4, 16, 2, 3, 3)
    torch.testing.assert_close(module(features, 4, TIMES), module(features, 4, TIMES + 0.25))
    features_of = relative_time_features(TIMES, TIMES)
    assert features_of.shape[:3] == (2, 4, 4)
    assert torch.all(features_of.diagonal(dim1=1, dim2=2) == 0)  # a clip against itself: no bias


def test_bad_clip_time_and_bad_times_are_refused() -> None:
    with pytest.raises(ValueError, match="clip_time"):
        CollaborativeMemory(16, clip_time="absolute")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times must be"):
        CollaborativeMemory(16)(torch.randn(6, 16, 1, 2, 2), 3, torch.rand(2, 2))


# --- every path of a model ------------------------------------------------------------------------


def small_net() -> torch.nn.Module:
    """A plain clip network (B, 3, T, H, W) -> (B, 3) for ``wrap``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Conv3d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3)),
    )


def paths(model: torch.nn.Module, video: torch.Tensor, times: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Logits (B, N, K) of every way a model runs a video, each given ``times``."""

    def per_clip(run) -> torch.Tensor:  # noqa: ANN001
        return torch.stack([run(i) for i in range(video.shape[1])], dim=1)

    with torch.no_grad():
        memory = model.memory_pass(video, keep_maps=True, times=times)
        banks, maps = memory.banks, memory.maps
        chunked = model.memory_pass(video, chunk=3, times=times).banks
        return {
            "joint": model(video, times=times),
            "two_pass": per_clip(lambda i: model.forward_clip(video[:, i], i, banks, times=times)),
            "from_maps": per_clip(lambda i: model.logits_from_maps(maps[i], i, banks, times)),
            "chunked": per_clip(lambda i: model.forward_clip(video[:, i], i, chunked, times=times)),
            "ddp_style": per_clip(lambda i: model(video[:, i], i, banks, None, times=times)),
        }


@pytest.mark.parametrize("kind", ["video_model", "wrapped"])
def test_times_reach_the_memory_in_every_forward_path(kind: str) -> None:
    if kind == "video_model":
        model, video = tiny_model(), VIDEO
    else:
        video = VIDEO.float() / 255
        model = trained_like(wrap(small_net(), ["0", "1"], example=video[:, 0])).eval()
    timed, even = paths(model, video, TIMES), paths(model, video, None)
    for name, logits in timed.items():
        torch.testing.assert_close(logits, timed["joint"], atol=1e-5, rtol=1e-4, msg=name)
        assert (logits - even[name]).abs().max() > 1e-4, name  # the times changed the read


def test_clips_shuffled_with_their_times_keep_their_logits_in_the_model() -> None:
    model = tiny_model()
    permutation = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        out = model(VIDEO, times=TIMES)
        shuffled = model(VIDEO[:, permutation], times=TIMES[:, permutation])
        shuffled_times = model(VIDEO, times=TIMES[:, permutation])
        blind = tiny_model("none")
        blind_out, blind_shuffled = blind(VIDEO, times=TIMES), blind(VIDEO, times=TIMES[:, permutation])
    torch.testing.assert_close(shuffled, out[:, permutation], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(shuffled_times, out, atol=1e-3)
    torch.testing.assert_close(blind_shuffled, blind_out)


def recording(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every bank time the model's memories read, recorded as they read it."""
    seen: list[torch.Tensor] = []
    for memory in model.modules():
        if isinstance(memory, CollaborativeMemory):
            original = memory._weights

            def spy(queries, bank, query_times, bank_times, original=original):  # noqa: ANN001, ANN202
                seen.append(torch.as_tensor(bank_times).detach().clone())
                return original(queries, bank, query_times, bank_times)

            memory._weights = spy
    return seen


@pytest.mark.parametrize("mode", ["comem", "comem-cross", "comem-video", "joint", "tsn", "single"])
def test_times_reach_the_memory_in_every_training_mode(mode: str) -> None:
    model = tiny_model().train()
    seen = recording(model)
    targets = torch.tensor([0, 2])
    options = {"cross_clip": mode == "comem-cross", "video_loss": mode == "comem-video"}
    torch.manual_seed(0)
    step_module.step(model, VIDEO, targets, mode=mode.split("-")[0], times=TIMES, **options)
    assert seen
    if mode == "tsn":
        expected = {round(t, 4) for t in TIMES.flatten().tolist()}
        assert {round(float(t), 4) for times in seen for t in times.flatten()} == expected
    elif mode == "single":
        assert all(times.shape == (2, 1) for times in seen)
        assert all(
            any(torch.isclose(t, TIMES[row]).any() for t in times[row]) for times in seen for row in (0, 1)
        )
    else:
        assert all(torch.equal(times, TIMES) for times in seen), mode


def test_step_functions_pass_times_to_the_model() -> None:
    """The shared-memory steps read the times; tsn's clips each read a memory of themselves alone,
    where every time difference is 0, so the times cannot change them (the baseline stays blind)."""
    model = tiny_model().train()
    targets = torch.tensor([0, 2])
    for run in (comem_step, joint_step, tsn_step):
        with_times = run(model, VIDEO, targets, contextlib.nullcontext, times=TIMES)
        without = run(model, VIDEO, targets, contextlib.nullcontext)
        model.zero_grad()
        changed = not torch.allclose(with_times.logits, without.logits, atol=1e-4)
        assert changed == (run is not tsn_step), run.__name__


# --- data, inference, checkpoints --------------------------------------------------------------------


def test_clip_times_are_the_clip_centres() -> None:
    span = clip_span(4, 2)  # 7 frames
    starts = eval_clip_starts(70, 3, span)
    times = clip_times(starts, span, 70)
    assert times.dtype == np.float32
    np.testing.assert_allclose(times, [(s + 3.5) / 70 for s in starts])
    assert np.all(np.diff(times) > 0)
    assert clip_times([0], 100, 10)[0] == 1.0  # clamped: a clip longer than the video


def test_dataset_items_and_batches_carry_the_clip_times(tmp_path: Path) -> None:
    splits = load_kinetics_csv_dir(write_dataset(tmp_path / "data", num_train=2, num_val=2))
    options = {"num_clips": 3, "clip_len": 4, "stride": 2, "crop_size": 32}
    train = MultiClipVideoDataset(splits.train, train=True, **options)
    item = train[0]
    assert item["times"].shape == (3,) and torch.all(item["times"].diff() > 0)
    assert torch.all((item["times"] > 0) & (item["times"] < 1))
    evaluation = MultiClipVideoDataset(splits.val, train=False, num_crops=3, **options)
    views = evaluation[0]["times"]
    assert views.shape == (9,)  # clip-major: each clip's 3 crops share its time
    expected = torch.from_numpy(clip_times(eval_clip_starts(24, 3, 7), 7, 24))
    torch.testing.assert_close(views, expected.repeat_interleave(3))
    batch = collate_clips([train[0], train[1]])
    assert batch["times"].shape == (2, 3) and batch["times"].dtype == torch.float32


def test_multi_view_scoring_reads_each_views_own_time() -> None:
    model = tiny_model()
    video = model.prepare(VIDEO[:1])
    shared, _ = score_views(model, video, share_memory=True, times=TIMES[:1])
    with torch.no_grad():
        torch.testing.assert_close(shared, model(video, times=TIMES[:1])[0], atol=1e-4, rtol=1e-4)
    even, _ = score_views(model, video, share_memory=True)
    assert not torch.allclose(shared, even, atol=1e-3)


def test_checkpoints_without_clip_time_load_order_blind() -> None:
    state = {"model_spec": {"backbone": "tiny", "num_classes": 3, "memory_stages": ["all"]}}
    assert spec_from_state(state).clip_time == "none"
    assert ModelSpec().clip_time == "relative"


def test_a_seed_builds_the_same_network_with_and_without_time() -> None:
    torch.manual_seed(0)
    aware = build_model(ModelSpec(num_classes=3, clip_time="relative")).state_dict()
    torch.manual_seed(0)
    blind = build_model(ModelSpec(num_classes=3, clip_time="none")).state_dict()
    assert {k: v for k, v in aware.items() if "time_" not in k}.keys() == blind.keys()
    assert all(torch.equal(aware[key], value) for key, value in blind.items())
    assert all(not value.any() for key, value in aware.items() if "time_" in key)


def test_make_synthetic_order_labels_only_the_order_of_red_and_blue(tmp_path: Path) -> None:
    out = tmp_path / "order"
    argv = ["make-synthetic", str(out), "--task", "order", "--num-train", "12", "--num-val", "2"]
    assert main([*argv, "--size", "32", "--frames", "36", "--distractors", "0", "--clip-len", "4"]) == 0
    assert (out / "classes.txt").read_text().split() == ["red_first", "blue_first"]
    rows = [line.split() for line in (out / "train.csv").read_text().splitlines()]
    assert sorted(int(label) for _, label in rows) == [0] * 6 + [1] * 6
    span = clip_span(4, 2)
    clip_starts = eval_clip_starts(36, 3, span)  # where the sampler puts the clip of each part
    shifts = set()
    for relative, label in rows:
        with av.open(str(out / relative)) as container:
            frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        shown = {
            name: np.flatnonzero(
                (np.abs(frames.astype(int) - PALETTE[name]).sum(-1) < 60).sum(axis=(1, 2)) > 20
            )
            for name in ("red", "blue", "green")
        }
        runs = sorted((frames_shown[0], frames_shown[-1], name) for name, frames_shown in shown.items())
        for first, last, name in runs:  # one unbroken flash per colour
            assert len(shown[name]) == last - first + 1 > 1, (relative, name, shown[name])
        for (_, last, _), (first, _, _) in zip(runs, runs[1:], strict=False):
            assert first - last >= span, (relative, runs)  # no clip sees two events
        order = [name for _, _, name in runs]
        assert (order.index("red") < order.index("blue")) == (label == "0")
        # every event sits at the same place relative to its part's clip: no clip can tell its part
        offsets = {first - start for (first, _, _), start in zip(runs, clip_starts, strict=True)}
        assert len(offsets) == 1, (relative, runs)
        shifts |= offsets
    assert len(shifts) > 1  # the place varies from video to video


def test_make_synthetic_refuses_order_videos_too_short_for_their_clips(tmp_path: Path, capsys) -> None:
    argv = ["make-synthetic", str(tmp_path / "short"), "--task", "order", "--frames", "48"]
    assert main(argv) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "48 frames" in error and "61 frames" in error
    assert not (tmp_path / "short" / "train.csv").exists()


def test_training_on_the_built_in_order_videos_with_other_clips_warns(monkeypatch, caplog) -> None:
    from comem.config import TrainConfig
    from comem.tasks import classification

    asked = []
    monkeypatch.setattr(classification, "ensure_synthetic", lambda home, spec: asked.append(spec) or home)
    with caplog.at_level("WARNING"):
        classification.resolve_data(TrainConfig(synthetic_task="order"))
        classification.resolve_data(TrainConfig(synthetic_task="distinct", clip_len=4))
    assert not caplog.records  # the clips the videos are laid out for, or a task without layout
    with caplog.at_level("WARNING"):
        classification.resolve_data(TrainConfig(synthetic_task="order", clip_len=4))
    assert len(caplog.records) == 1 and "--clip-len 4 --stride 2" in caplog.records[0].getMessage()
    assert [spec.task for spec in asked] == ["order", "distinct", "order"]
