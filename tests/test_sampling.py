import numpy as np
import pytest

from comem.data.sampling import (
    clip_frame_indices,
    clip_span,
    eval_clip_starts,
    memory_groups,
    train_clip_starts,
)


def test_clip_span() -> None:
    assert clip_span(8, 8) == 57
    assert clip_span(1, 4) == 1


@pytest.mark.parametrize("num_frames,num_clips,span", [(300, 8, 57), (100, 3, 32), (57, 4, 57), (60, 7, 1)])
def test_train_starts_fall_in_their_segments_and_are_sorted(
    num_frames: int, num_clips: int, span: int
) -> None:
    segment = (num_frames - span + 1) / num_clips
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        starts = train_clip_starts(num_frames, num_clips, span, rng)
        assert starts == sorted(starts)
        assert len(starts) == num_clips
        for i, start in enumerate(starts):
            assert i * segment - 1 < start < (i + 1) * segment
            assert 0 <= start <= num_frames - span
        seen.add(tuple(starts))
    assert len(seen) > 1 or num_frames == span


def test_train_starts_of_a_short_video_are_zero() -> None:
    assert train_clip_starts(10, 4, 57, np.random.default_rng(0)) == [0, 0, 0, 0]


def test_eval_starts_are_deterministic_and_uniform() -> None:
    starts = eval_clip_starts(300, 10, 61)
    assert starts == eval_clip_starts(300, 10, 61)
    assert starts == [12, 36, 60, 84, 108, 132, 156, 180, 204, 228]
    assert eval_clip_starts(101, 1, 1) == [50]
    assert eval_clip_starts(20, 3, 57) == [0, 0, 0]


def test_clip_frame_indices_and_short_video_repeats_last_frame() -> None:
    indices = clip_frame_indices([0, 10], clip_len=4, stride=2, num_frames=14)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, [[0, 2, 4, 6], [10, 12, 13, 13]])


@pytest.mark.parametrize(
    "call",
    [
        lambda: clip_span(0, 1),
        lambda: clip_span(4, 0),
        lambda: train_clip_starts(0, 1, 1, np.random.default_rng(0)),
        lambda: train_clip_starts(10, 0, 1, np.random.default_rng(0)),
        lambda: eval_clip_starts(10, 0, 1),
        lambda: clip_frame_indices([0], clip_len=0, stride=1, num_frames=5),
        lambda: clip_frame_indices([0], clip_len=2, stride=1, num_frames=0),
        lambda: clip_frame_indices([-1], clip_len=2, stride=1, num_frames=5),
        lambda: clip_frame_indices([], clip_len=2, stride=1, num_frames=5),
    ],
)
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_memory_groups_spread_each_memory_over_the_video_as_training_did() -> None:
    assert memory_groups(3, 1, 3) == [[0, 1, 2]]  # training's clip count: one memory
    assert memory_groups(2, 1, 3) == [[0, 1]]
    assert memory_groups(5, 1, 3) == [[0, 2, 4], [1, 3]]
    assert memory_groups(8, 1, 3) == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert memory_groups(3, 3, 3) == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # a memory per crop position
    assert memory_groups(8, 3, None) == [list(range(24))]
    for clips in range(1, 20):
        for crops in (1, 3):
            for per_memory in (1, 2, 3, 4, 8):
                groups = memory_groups(clips, crops, per_memory)
                assert sorted(view for group in groups for view in group) == list(range(clips * crops))
                assert all(len(group) <= per_memory for group in groups)
                for group in groups:  # one crop position, clips evenly strided from the start
                    assert len({view % crops for view in group}) == 1
                    steps = {b // crops - a // crops for a, b in zip(group, group[1:], strict=False)}
                    assert len(steps) <= 1 and group[0] // crops < -(-clips // per_memory)
