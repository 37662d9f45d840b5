from pathlib import Path

import numpy as np
import pytest
from conftest import HEIGHT, NUM_FRAMES, WIDTH
from videos import frame_index_of, write_audio_only, write_test_video

from comem.data.decode import VideoDecodeError, VideoReader, read_clips


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
    passes, decoded, converted = [], [], []
    frames_method, to_rgb = reader._frames, reader._to_rgb

    def counting_frames():
        passes.append(1)
        for frame in frames_method():
            decoded.append(1)
            yield frame

    def counting_to_rgb(frame):
        converted.append(1)
        return to_rgb(frame)

    monkeypatch.setattr(reader, "_frames", counting_frames)
    monkeypatch.setattr(reader, "_to_rgb", counting_to_rgb)
    reader.read(np.array([[12, 2, 4], [4, 2, 2]]))
    reader.close()
    assert (len(passes), len(decoded), len(converted)) == (1, 13, 3)


def test_stream_shorter_than_metadata_clamps_to_last_frame(video_dir: Path, tmp_path: Path) -> None:
    # Matroska stores no frame count; the estimate comes from the duration in the header, which a
    # truncated file keeps while frames are missing, so the stream ends early without an error.
    webm = write_test_video(video_dir / "index.webm", NUM_FRAMES, HEIGHT, WIDTH, codec="libvpx-vp9")
    short = truncated_copy(webm, tmp_path / "short.webm")
    with VideoReader(short) as reader:
        assert reader.num_frames == NUM_FRAMES
        indices = decoded_indices(reader.read(np.array([0, 3, NUM_FRAMES - 1])))
    assert indices[0] == 0 and indices[1] == 3
    assert 3 <= indices[2] < NUM_FRAMES - 1


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


def test_truncated_faststart_mp4_fails_mid_decode(faststart_video: Path, tmp_path: Path) -> None:
    cut = truncated_copy(faststart_video, tmp_path / "cut_faststart.mp4")
    assert_decode_error(cut, "truncated or corrupt at frame")
    with VideoReader(cut) as reader:
        assert reader.num_frames == NUM_FRAMES
        # Frames before the cut still decode: the pass stops at index 2, before reaching the damage.
        np.testing.assert_array_equal(decoded_indices(reader.read(np.array([2, 0]))), [2, 0])


@pytest.mark.parametrize("name,codec", [("audio.mp4", "aac"), ("audio.mka", "mp2")])
def test_audio_only_file(tmp_path: Path, name: str, codec: str) -> None:
    assert_decode_error(write_audio_only(tmp_path / name, codec=codec), "no video stream")


def test_error_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(VideoDecodeError("a.mp4", "file not found")))
    assert (str(error), error.reason) == ("a.mp4: file not found", "file not found")


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
