import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blendtalk.render.video import VideoConfig, _PipeWriter, probe, side_by_side, write_video

FPS, SR = 30, 16_000


def _frames(t: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Moving gradient frames (T, H, W, 3) uint8: easy to encode, different every frame."""
    y, x = np.mgrid[:h, :w]
    out = np.stack([(x * 4 + 7 * i) % 256 for i in range(t)]).astype(np.uint8)  # (T, H, W)
    return np.stack([out, np.broadcast_to((y * 4) % 256, out.shape), 255 - out], -1).astype(np.uint8)


def _speech(seconds: float) -> np.ndarray:
    n = int(round(seconds * SR))
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / SR)).astype(np.float32)


def test_mp4_streams_and_lengths(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _frames(45), FPS, _speech(1.5), SR)
    info = probe(path)
    v, a = info["video"], info["audio"]
    assert (v["codec"], v["pix_fmt"], v["width"], v["height"]) == ("h264", "yuv420p", 64, 64)
    assert a["codec"] == "aac" and a["sample_rate"] == SR
    assert v["frames"] == 45
    assert abs(v["duration"] - 1.5) <= 1 / FPS
    assert abs(a["duration"] - 1.5) <= 1 / FPS
    assert abs(a["duration"] - v["duration"]) <= 1 / FPS
    assert info["moov_first"]  # +faststart: browsers can start playing before the download ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left


def test_streamed_batches_are_padded_or_trimmed_to_the_audio(tmp_path):
    frames = _frames(47)
    short = (frames[i : i + 10] for i in range(0, 43, 10))  # 43 frames in batches
    info = probe(write_video(tmp_path / "short.mp4", short, FPS, _speech(1.5), SR))
    assert info["video"]["frames"] == 45  # last frame held
    long = iter(list(frames))  # single (H, W, 3) frames, 47 of them
    info = probe(write_video(tmp_path / "long.mp4", long, FPS, _speech(1.5), SR))
    assert info["video"]["frames"] == 45


def _children_niceness() -> dict[int, list[int]]:
    """The nice value of every thread of each ffmpeg this process started: {pid: [nice, ...]} (Linux)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()  # "pid (comm) state ppid ...": field 19 (index 16 after comm) is the nice value
            if int(text.rsplit(")", 1)[1].split()[1]) != os.getpid() or "ffmpeg" not in text:
                continue
            tasks = stat.parent.glob("task/*/stat")
            out[int(stat.parent.name)] = [int(t.read_text().rsplit(")", 1)[1].split()[16]) for t in tasks]
        except (OSError, ValueError, IndexError):  # a process that ended while we looked
            continue
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread priorities from Linux's /proc")
def test_the_encoder_yields_the_cores_to_the_render(tmp_path):
    seen = {}

    def frames():
        yield _frames(30)
        deadline = time.monotonic() + 30  # ffmpeg has the first frames: wait until it has its encoding threads
        while time.monotonic() < deadline and not any(len(t) >= 2 for t in seen.values()):
            time.sleep(0.05)
            seen.clear()
            seen.update(_children_niceness())
        yield _frames(15)

    write_video(tmp_path / "clip.mp4", frames(), FPS, _speech(1.5), SR)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert len(seen) == 1
    (threads,) = seen.values()
    assert len(threads) >= 2 and set(threads) == {min(ours + 10, 19)}


def test_length_mismatch_beyond_slack_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="frames of audio"):
        write_video(tmp_path / "x.mp4", _frames(20), FPS, _speech(1.5), SR)
    with pytest.raises(ValueError, match="frames of audio"):
        write_video(tmp_path / "x.mp4", _frames(80), FPS, _speech(1.5), SR)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_midway_leaves_no_file(tmp_path, error):
    (tmp_path / "keep.mp4").write_bytes(b"old")  # an earlier video must survive a failed rewrite

    def frames():
        yield _frames(10)
        raise error("renderer died")

    with pytest.raises(error):
        write_video(tmp_path / "new.mp4", frames(), FPS, _speech(1.5), SR)
    with pytest.raises(error):
        write_video(tmp_path / "keep.mp4", frames(), FPS, _speech(1.5), SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_ffmpeg_error_is_reported_and_cleaned_up(tmp_path):
    with pytest.raises(RuntimeError, match="ffmpeg"):
        write_video(tmp_path / "x.mp4", _frames(45), FPS, _speech(1.5), SR, VideoConfig(preset="nosuchpreset"))
    assert list(tmp_path.iterdir()) == []


def test_pipe_writer_keeps_order_and_reports_a_closed_reader():
    """Frames are written by a thread of its own: every byte arrives in order, and once the reader
    (ffmpeg) is gone, the caller's next write or close raises BrokenPipeError; abort then returns."""
    read_end, write_end = os.pipe()
    chunks = [bytes([i]) * (100_000 + i) for i in range(6)]  # larger than a pipe's buffer: writes block
    received = []
    reader = threading.Thread(target=lambda: received.append(b"".join(iter(lambda: os.read(read_end, 1 << 16), b""))))
    reader.start()
    with os.fdopen(write_end, "wb", buffering=0) as stream:
        writer = _PipeWriter(stream)
        for chunk in chunks:
            writer.write(memoryview(chunk))
        writer.close()
    reader.join()
    os.close(read_end)
    assert received == [b"".join(chunks)]

    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb", buffering=0) as stream:
        writer = _PipeWriter(stream)
        with pytest.raises(BrokenPipeError):
            for _ in range(100):  # the first write fails in the thread; a later call raises it
                writer.write(b"frame")
            writer.close()
        writer.abort()


def test_silent_video_and_odd_size(tmp_path):
    info = probe(write_video(tmp_path / "odd.mp4", _frames(12, 33, 65), FPS))
    assert info["audio"] is None
    assert info["video"]["frames"] == 12
    assert (info["video"]["width"], info["video"]["height"]) == (66, 34)  # padded to even sides


def test_input_validation(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", _frames(5).astype(np.float32), FPS)
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "x.avi", _frames(5), FPS)
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((5, 8, 8), np.uint8), FPS)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "x.mp4", iter([]), FPS)
    with pytest.raises(ValueError, match="NaN"):
        write_video(tmp_path / "x.mp4", _frames(45), FPS, np.full(24_000, np.nan, np.float32), SR)
    with pytest.raises(ValueError, match="does not exist"):
        write_video(tmp_path / "missing" / "x.mp4", _frames(5), FPS)
    with pytest.raises(ValueError, match="crf"):
        VideoConfig(crf=80)
    assert list(tmp_path.iterdir()) == []


def test_side_by_side_layout_and_labels():
    a, b = _frames(4, 64, 64), _frames(4, 64, 32)
    plain = side_by_side([a, b])
    assert plain.shape == (4, 64, 96, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain[:, :, 64:], b)
    labelled = side_by_side([a, b], labels=["neutral", "happy"])
    pytest.importorskip("PIL")
    assert (labelled[:, :20, :64] != a[:, :20]).any()  # the label's box changed the top-left corner
    np.testing.assert_array_equal(labelled[:, 40:], plain[:, 40:])  # and nothing below it
    with pytest.raises(ValueError, match="share T and H"):
        side_by_side([a, a[:3]])
    with pytest.raises(ValueError, match="labels"):
        side_by_side([a, b], labels=["one"])


def test_probe_rejects_non_media(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="no audio or video"):
        probe(tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="no such file"):
        probe(tmp_path / "missing.mp4")
