from pathlib import Path

import av
import numpy as np
import pytest
from conftest import HEIGHT, NUM_FRAMES, WIDTH
from videos import frame_index_of, write_audio_only, write_test_video, write_vfr_video

from comem.data.decode import VideoDecodeError, VideoReader, open_video, read_clips


def decoded_indices(frames: np.ndarray) -> np.ndarray:
    flat = frames.reshape(-1, *frames.shape[-3:])
    return np.array([frame_index_of(f) for f in flat]).reshape(frames.shape[:-3])


def truncated_copy(source: Path, target: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def test_metadata(index_video: Path) -> None:
    with VideoReader(index_video) as reader:
        assert (reader.num_frames, reader.height, reader.width, reader.fps) == (
            NUM_FRAMES,
            HEIGHT,
            WIDTH,
            24.0,
        )


def test_read_returns_requested_frames_for_unsorted_repeated_indices(index_video: Path) -> None:
    indices = np.array([[5, 3, 3, 30], [35, 0, 7, 7]])
    with VideoReader(index_video) as reader:
        frames = reader.read(indices)
        assert frames.shape == (2, 4, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(decoded_indices(frames), indices)
        again = reader.read(np.array([2, 1]))
    np.testing.assert_array_equal(decoded_indices(again), [2, 1])


def test_read_decodes_once_and_stops_after_the_largest_index(index_video: Path, monkeypatch) -> None:
    reader = VideoReader(index_video)
    segments, converted = [], []
    decode_segment, to_rgb = reader._decode_segment, reader._to_rgb

    def counting_segment(keyframe, wanted, frames, keep):
        segments.append((keyframe, wanted.tolist()))
        return decode_segment(keyframe, wanted, frames, keep)

    def counting_to_rgb(frame):
        converted.append(frame.pts)
        return to_rgb(frame)

    monkeypatch.setattr(reader, "_decode_segment", counting_segment)
    monkeypatch.setattr(reader, "_to_rgb", counting_to_rgb)
    frames = reader.read(np.array([[12, 2, 4], [4, 2, 2]]))
    reader.close()
    np.testing.assert_array_equal(decoded_indices(frames), [[12, 2, 4], [4, 2, 2]])
    assert segments == [(0, [2, 4, 12])] and len(converted) == 3  # one pass, only wanted frames converted


def test_read_seeks_over_gaps_between_keyframes(video_dir: Path) -> None:
    video = write_test_video(video_dir / "gop10.mp4", 50, 32, 32, keyint=10)
    with VideoReader(video) as reader:
        assert reader._keyframes.tolist() == [0, 10, 20, 30, 40]
        plan = [(k, g.tolist()) for k, g in reader.plan_segments(np.array([2, 4, 12, 13, 45]))]
        assert plan == [(0, [2, 4]), (10, [12, 13]), (40, [45])]
        indices = np.array([[45, 2, 13], [12, 4, 4], [49, 0, 30]])
        np.testing.assert_array_equal(decoded_indices(reader.read(indices)), indices)


def test_skipped_non_reference_frames_leave_wanted_frames_exact(video_dir: Path) -> None:
    # B-frames on: frames between the wanted ones are skipped unless referenced; outputs must be
    # bit-identical to a plain decode of every frame.
    video = write_test_video(video_dir / "bframes.mp4", 40, 32, 48, pattern="gradient", bframes=3)
    with av.open(str(video)) as container:
        everything = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    indices = np.array([3, 17, 18, 38, 0])
    with VideoReader(video) as reader:
        frames = reader.read(indices)
    for frame, index in zip(frames, indices, strict=True):
        np.testing.assert_array_equal(frame, everything[index])


def test_variable_frame_rate_counts_and_times_every_frame(tmp_path: Path) -> None:
    video = write_vfr_video(tmp_path / "vfr.mp4", [0.0, 0.07, 0.09, 0.16, 0.18, 0.25], 32)
    with VideoReader(video) as reader:
        assert reader.num_frames == 6
        np.testing.assert_allclose(reader.frame_times(), [0.0, 0.07, 0.09, 0.16, 0.18, 0.25], atol=1e-3)
        np.testing.assert_array_equal(decoded_indices(reader.read(np.array([5, 1, 2]))), [5, 1, 2])


def test_rotated_video_comes_out_upright(tmp_path: Path) -> None:
    video = write_test_video(tmp_path / "rot.mp4", 3, 32, 48, pattern="gradient", rotation=90)
    with VideoReader(video) as reader:
        frame = reader.read(np.array([0]))[0]
    # 90 degrees counter-clockwise: the ramp that rose left to right now rises bottom to top.
    assert frame.shape == (48, 32, 3)
    assert frame[:4].mean() > frame[-4:].mean() + 100


def test_stream_shorter_than_header_counts_the_frames_present(video_dir: Path, tmp_path: Path) -> None:
    # Matroska stores no frame count; the header's duration survives truncation while frames are
    # missing. The packet index counts what is there; header_frames keeps what the header claims.
    webm = write_test_video(video_dir / "index.webm", NUM_FRAMES, HEIGHT, WIDTH, codec="libvpx-vp9")
    short = truncated_copy(webm, tmp_path / "short.webm")
    with VideoReader(short) as reader:
        assert reader.header_frames == NUM_FRAMES
        assert 3 <= reader.num_frames < NUM_FRAMES
        last = reader.num_frames - 1
        assert decoded_indices(reader.read(np.array([0, 3, last]))).tolist() == [0, 3, last]


def test_read_clips_plans_from_frame_count(index_video: Path) -> None:
    frames = read_clips(index_video, lambda n: np.array([[0, n - 1]]))
    np.testing.assert_array_equal(decoded_indices(frames), [[0, NUM_FRAMES - 1]])


def test_read_rejects_out_of_range_indices(index_video: Path) -> None:
    with VideoReader(index_video) as reader, pytest.raises(ValueError, match=r"\[0, 35\]"):
        reader.read(np.array([NUM_FRAMES]))


def assert_decode_error(path: Path, problem: str) -> None:
    with pytest.raises(VideoDecodeError) as caught:
        read_clips(path, lambda n: np.arange(n))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert caught.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    assert_decode_error(tmp_path / "missing.mp4", "file not found")


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert_decode_error(empty, "empty file (0 bytes)")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    assert_decode_error(text, "cannot open (Invalid data found when processing input)")


def test_truncated_mp4_with_moov_at_end_fails_to_open(index_video: Path, tmp_path: Path) -> None:
    assert_decode_error(truncated_copy(index_video, tmp_path / "cut.mp4"), "cannot open")


def test_truncated_faststart_mp4_keeps_the_frames_before_the_cut(
    faststart_video: Path, tmp_path: Path
) -> None:
    cut = truncated_copy(faststart_video, tmp_path / "cut_faststart.mp4")
    with VideoReader(cut) as reader:
        assert reader.header_frames == NUM_FRAMES and 1 <= reader.num_frames < NUM_FRAMES
        last = reader.num_frames - 1
        np.testing.assert_array_equal(decoded_indices(reader.read(np.array([last, 0]))), [last, 0])


@pytest.mark.parametrize("name,codec", [("audio.mp4", "aac"), ("audio.mka", "mp2")])
def test_audio_only_file(tmp_path: Path, name: str, codec: str) -> None:
    assert_decode_error(write_audio_only(tmp_path / name, codec=codec), "no video stream")


def test_error_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(VideoDecodeError("a.mp4", "file not found")))
    assert (str(error), error.reason) == ("a.mp4: file not found", "file not found")


def test_torchcodec_gives_the_same_frames_as_pyav(index_video: Path) -> None:
    pytest.importorskip("torchcodec")
    indices = np.array([[5, 3, 3, 30], [35, 0, 7, 7]])
    with open_video(index_video, decoder="torchcodec") as codec, VideoReader(index_video) as pyav:
        assert codec.num_frames == pyav.num_frames
        np.testing.assert_array_equal(codec.read(indices), pyav.read(indices))


def test_frames_decoder_refuses_a_file(index_video: Path) -> None:
    with pytest.raises(VideoDecodeError, match="not a folder of frames"):
        open_video(index_video, decoder="frames")


def test_read_applies_a_per_frame_transform_once_per_distinct_frame(index_video: Path) -> None:
    calls = []

    def corner(rgb: np.ndarray) -> np.ndarray:
        calls.append(rgb.shape)
        return rgb[:8, :4].copy()

    indices = np.array([[5, 1, 5], [9, 1, 1]])
    with VideoReader(index_video) as reader:
        full = reader.read(indices)
        kept = reader.read(indices, corner)
    assert kept.shape == (2, 3, 8, 4, 3)
    np.testing.assert_array_equal(kept, full[:, :, :8, :4])
    assert calls == [(HEIGHT, WIDTH, 3)] * 3  # frames 1, 5, 9: once each


def test_rgb_frames_equal_pyav_conversion_for_every_frame(tmp_path: Path) -> None:
    """The reused conversion context returns exactly PyAV's per-frame ``to_ndarray`` pixels,
    also when the frame size changes mid-way (the context is rebuilt)."""
    from videos import write_textured_video

    from comem.data.decode import RgbFrames

    sizes = (32, 48)
    files = [write_textured_video(tmp_path / f"{size}.mp4", 12, size, size + 16, seed=size) for size in sizes]
    rgb = RgbFrames()
    count = 0
    for file in files:
        with av.open(str(file)) as container:
            for frame in container.decode(video=0):
                expected = frame.to_ndarray(format="rgb24")
                got = rgb(frame)
                assert got.shape == expected.shape and got.dtype == np.uint8
                np.testing.assert_array_equal(got, expected)
                count += 1
    assert count == 24
