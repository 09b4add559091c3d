"""render/yuv.py against ffmpeg's own conversion, and yuv420p frames through write_video (and the
NVENC choice, with a stand-in ffmpeg: CI has no GPU)."""

import os
import stat
import subprocess

import numpy as np
import pytest
import torch

from blendtalk.render import video
from blendtalk.render.video import VideoConfig, nvenc_available, probe, video_codec_args, write_video
from blendtalk.render.yuv import rgb_to_yuv420

FPS = 30


def face_like(t: int = 4, h: int = 64, w: int = 96) -> np.ndarray:
    """Smooth colour gradients with a hard-edged patch, moving per frame: (T, H, W, 3) uint8."""
    y, x = np.mgrid[:h, :w].astype(np.float32)
    frames = []
    for i in range(t):
        rgb = np.stack([200 * x / w + 20, 150 * y / h + 40 + 5 * i, 120 + 60 * np.sin((x + y + 3 * i) / 9)], -1)
        rgb[10 + i : 30 + i, 20:50] = (230, 40, 60)
        frames.append(rgb)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def ffmpeg_yuv(frames: np.ndarray) -> np.ndarray:
    """ffmpeg's (swscale's) conversion of rgb24 frames (T, H, W, 3) to yuv420p (T, 3H/2, W)."""
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-i", "-", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
                         input=frames.tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(t, 3 * h // 2, w)


def test_conversion_is_ffmpegs():
    frames = face_like()
    ours, theirs = rgb_to_yuv420(torch.from_numpy(frames)).numpy(), ffmpeg_yuv(frames)
    h = frames.shape[1]
    luma = np.abs(ours[:, :h].astype(int) - theirs[:, :h].astype(int))
    chroma = np.abs(ours[:, h:].astype(int) - theirs[:, h:].astype(int))
    assert luma.max() <= 1 and luma.mean() < 0.5  # same matrix; rounding at most one level apart
    assert chroma.mean() < 1.0  # swscale filters chroma a little differently at the patch's edges
    assert ours[:, :h].min() >= 16 and ours[:, :h].max() <= 235  # limited range


def test_conversion_checks_its_input():
    with pytest.raises(ValueError, match="even"):
        rgb_to_yuv420(torch.zeros(1, 63, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_yuv420(torch.zeros(1, 64, 64, 3))


def test_yuv_frames_make_the_same_video(tmp_path):
    frames = face_like(t=30)
    yuv = rgb_to_yuv420(torch.from_numpy(frames)).numpy()
    a = write_video(tmp_path / "rgb.mp4", frames, FPS)
    b = write_video(tmp_path / "yuv.mp4", (yuv[i : i + 7] for i in range(0, 30, 7)), FPS, pixel_format="yuv420p")
    for path in (a, b):
        v = probe(path)["video"]
        assert (v["codec"], v["pix_fmt"], v["width"], v["height"], v["frames"]) == ("h264", "yuv420p", 96, 64, 30)
    error = {p: np.abs(decode(p, 64, 96).astype(int) - frames.astype(int)).mean() for p in (a, b)}  # lossy, both
    assert error[b] < 4.0 and abs(error[b] - error[a]) < 0.5, error
    with pytest.raises(ValueError, match="3H/2"):
        write_video(tmp_path / "bad.mp4", frames, FPS, pixel_format="yuv420p")
    with pytest.raises(ValueError, match="pixel_format"):
        write_video(tmp_path / "bad.mp4", frames, FPS, pixel_format="nv12")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.mp4", "yuv.mp4"]


def decode(path, h: int, w: int) -> np.ndarray:
    import imageio_ffmpeg

    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def fake_ffmpeg(tmp_path, encoders: str, trial_ok: bool) -> str:
    """A stand-in ffmpeg that lists `encoders` and fails or passes the NVENC trial encode."""
    path = tmp_path / f"ffmpeg-{abs(hash((encoders, trial_ok)))}"
    path.write_text("#!/bin/sh\ncase \"$*\" in *-encoders*) printf '%b\\n' " + repr(encoders) + ";; *) exit "
                    + ("0" if trial_ok else "1") + ";; esac\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.skipif(os.name != "posix", reason="the stand-in ffmpeg is a shell script")
@pytest.mark.parametrize("listing, trial_ok, expected", [
    (" V....D libx264   libx264 H.264\n V....D h264_nvenc   NVIDIA NVENC H.264 encoder", True, True),
    (" V....D libx264   libx264 H.264\n V....D h264_nvenc   NVIDIA NVENC H.264 encoder", False, False),  # no GPU
    (" V....D libx264   libx264 H.264\n V....D hevc_nvenc   NVIDIA NVENC hevc encoder", True, False),
])
def test_nvenc_is_used_only_where_it_opens(tmp_path, listing, trial_ok, expected):
    ffmpeg = fake_ffmpeg(tmp_path, listing, trial_ok)
    assert nvenc_available(ffmpeg) is expected
    args = video_codec_args(VideoConfig(encoder="auto", crf=21), ffmpeg)
    assert args[1] == ("h264_nvenc" if expected else "libx264") and "21" in args
    assert video_codec_args(VideoConfig(crf=21), ffmpeg)[:2] == ["-c:v", "libx264"]  # the default never probes


def test_encoder_is_checked():
    with pytest.raises(ValueError, match="encoder"):
        VideoConfig(encoder="nvenc")


def test_auto_without_nvenc_encodes_with_x264(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "nvenc_available", lambda ffmpeg: False)
    path = write_video(tmp_path / "a.mp4", face_like(t=10), FPS, config=VideoConfig(encoder="auto"))
    assert probe(path)["video"]["pix_fmt"] == "yuv420p"
