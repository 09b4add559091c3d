"""NVENC through PyNvVideoCodec (`render.nvenc`): the options, the mux command, the choice between it
and x264, and the MP4 it makes. On the CPU a stand-in module plays PyNvVideoCodec (it encodes with
ffmpeg's x264 into a raw H.264 stream, as NVENC would hand it over); the GPU test needs CUDA and
the real package."""

import logging
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from blendtalk.render import nvenc
from blendtalk.render.nvenc import NvencError, NvencOptions, mux_command, open_encoder
from blendtalk.render.video import VideoConfig, probe, read_frames, write_video
from blendtalk.render.yuv import rgb_to_yuv420

FPS, SR = 30, 16_000


def _frames(t: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Moving gradient RGB frames (T, H, W, 3) uint8."""
    y, x = np.mgrid[:h, :w]
    out = np.stack([(x * 4 + 7 * i) % 256 for i in range(t)]).astype(np.uint8)  # (T, H, W)
    return np.stack([out, np.broadcast_to((y * 4) % 256, out.shape), 255 - out], -1).astype(np.uint8)


def _yuv(t: int, h: int = 64, w: int = 64) -> np.ndarray:
    return rgb_to_yuv420(torch.from_numpy(_frames(t, h, w))).numpy()  # (T, 3H/2, W)


def _speech(seconds: float) -> np.ndarray:
    n = int(round(seconds * SR))
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / SR)).astype(np.float32)


class _StandInEncoder:
    """Plays PyNvEncoder: keeps the frames; EndEncode returns them as one raw H.264 packet made by x264."""

    def __init__(self, width, height, fmt, cpu_input, kwargs, fail_at=None):
        assert fmt == "YUV420" and cpu_input is True
        self.size, self.kwargs, self.fail_at, self.frames = (width, height), kwargs, fail_at, []

    def Encode(self, frame):
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise RuntimeError("NV_ENC_ERR_ENCODER_BUSY")
        assert frame.dtype == np.uint8 and frame.ndim == 1
        self.frames.append(frame.copy())
        return []  # NVENC hands packets back a few frames late; here all at the end

    def EndEncode(self):
        import imageio_ffmpeg

        w, h = self.size
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}",
               "-i", "pipe:0", "-c:v", "libx264", "-bf", "0", "-f", "h264", "pipe:1"]  # its header says 25 fps
        out = subprocess.run(cmd, input=b"".join(f.tobytes() for f in self.frames), capture_output=True, check=True).stdout
        return [{"data": np.frombuffer(out, np.uint8), "picture_type": 0, "timestamp": 0}]


def _stand_in(fail_at=None, refuse=False):
    made = []

    def create(width, height, fmt, cpu_input, **kwargs):
        if refuse:
            raise RuntimeError("no NVENC on this card")
        made.append(_StandInEncoder(width, height, fmt, cpu_input, kwargs, fail_at))
        return made[-1]

    return SimpleNamespace(CreateEncoder=create, made=made)


def test_options_map_crf_to_constant_qp_without_b_frames():
    kw = NvencOptions(qp=23, fps=30.0).encoder_kwargs()
    assert (kw["codec"], kw["rc"], kw["constqp"], kw["bf"], kw["fps"]) == ("h264", "constqp", 23, 0, 30)
    assert kw["gop"] == nvenc.GOP
    for bad in ({"qp": 52}, {"qp": -1}, {"preset": "fast"}, {"fps": 0.5}):
        with pytest.raises(ValueError):
            NvencOptions(**bad)


def test_mux_command_copies_the_stream():
    cmd = mux_command("ffmpeg", 30, "/tmp/s.wav", "96k", "/tmp/o.mp4")
    assert cmd[cmd.index("-f") + 1] == "h264" and cmd[cmd.index("-r") + 1] == "30"
    assert cmd[cmd.index("-c:v") + 1] == "copy" and cmd[cmd.index("-c:a") + 1] == "aac"
    assert cmd[cmd.index("-b:a") + 1] == "96k" and cmd[-1] == "/tmp/o.mp4"
    assert "libx264" not in cmd and "-pix_fmt" not in cmd  # nothing is encoded again
    silent = mux_command("ffmpeg", 29.97, None, "96k", "/tmp/o.mp4")
    assert "-c:a" not in silent and silent[silent.index("-r") + 1] == "2997/100"


def test_open_encoder_is_none_without_the_package_or_the_driver(monkeypatch, caplog):
    monkeypatch.setattr(nvenc, "pynvvideocodec", lambda: None)
    assert open_encoder(64, 64, NvencOptions()) is None
    with caplog.at_level(logging.INFO, logger="blendtalk.render.nvenc"):
        assert open_encoder(64, 64, NvencOptions(), module=_stand_in(refuse=True)) is None
    assert "x264" in caplog.text
    with pytest.raises(ValueError, match="even"):
        open_encoder(63, 64, NvencOptions(), module=_stand_in())


def test_auto_falls_back_to_x264_where_pynvvideocodec_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(nvenc, "pynvvideocodec", lambda: None)
    monkeypatch.setattr("blendtalk.render.video.open_encoder", lambda *a, **k: open_encoder(*a, **k, module=None))
    report = {}
    path = write_video(tmp_path / "a.mp4", _yuv(45), FPS, _speech(1.5), SR, VideoConfig(encoder="auto"), "yuv420p", report)
    assert report["encoder"] in ("libx264", "h264_nvenc")  # imageio's ffmpeg has no h264_nvenc: x264
    assert probe(path)["video"]["frames"] == 45


def test_explicit_pynvvideocodec_needs_yuv_and_the_package(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="yuv420p"):
        write_video(tmp_path / "a.mp4", _frames(45), FPS, _speech(1.5), SR, VideoConfig(encoder="pynvvideocodec"))
    monkeypatch.setattr("blendtalk.render.video.open_encoder", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="nvenc"):
        write_video(tmp_path / "a.mp4", _yuv(45), FPS, _speech(1.5), SR, VideoConfig(encoder="pynvvideocodec"), "yuv420p")
    assert list(tmp_path.iterdir()) == []


def test_stand_in_stream_is_muxed_with_the_speech(tmp_path, monkeypatch):
    """The NVENC path end to end with a stand-in encoder: frames padded to the audio, the raw H.264
    copied into an MP4 with AAC, faststart, both streams of the audio's length."""
    module = _stand_in()
    monkeypatch.setattr("blendtalk.render.video.open_encoder", lambda w, h, o: open_encoder(w, h, o, module=module))
    monkeypatch.setattr("blendtalk.render.video.nvenc_engine", lambda: True)  # "auto" asks the card first
    report = {}
    frames = _yuv(43)
    path = write_video(tmp_path / "n.mp4", (frames[i:i + 10] for i in range(0, 43, 10)), FPS, _speech(1.5), SR,
                       VideoConfig(encoder="auto", crf=30), "yuv420p", report)
    assert report["encoder"] == "pynvvideocodec"
    assert module.made[0].kwargs["constqp"] == 30 and len(module.made[0].frames) == 45  # last frame held twice
    info = probe(path)
    assert (info["video"]["codec"], info["video"]["width"], info["video"]["height"]) == ("h264", 64, 64)
    assert info["video"]["frames"] == 45 and abs(info["video"]["duration"] - 1.5) <= 1 / FPS
    assert info["audio"]["codec"] == "aac" and abs(info["audio"]["duration"] - 1.5) <= 1 / FPS
    assert info["moov_first"]
    decoded = read_frames(path)
    assert decoded.shape == (45, 64, 64, 3)
    assert np.abs(decoded[:43].astype(int) - _frames(43).astype(int)).mean() < 6  # the picture, not noise
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.mp4"]


def test_nvenc_failure_midway_raises_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "keep.mp4").write_bytes(b"old")
    module = _stand_in(fail_at=12)
    monkeypatch.setattr("blendtalk.render.video.open_encoder", lambda w, h, o: open_encoder(w, h, o, module=module))
    monkeypatch.setattr("blendtalk.render.video.nvenc_engine", lambda: True)  # "auto" asks the card first
    with pytest.raises(NvencError, match="ENCODER_BUSY"):
        write_video(tmp_path / "keep.mp4", _yuv(45), FPS, _speech(1.5), SR, VideoConfig(encoder="auto"), "yuv420p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_save_video_encodes_again_with_x264_when_nvenc_fails(tmp_path, monkeypatch):
    from blendtalk.pipeline import Pipeline

    calls = []

    def fake_write_video(path, frames, fps, audio, sample_rate, config, pixel_format, report):
        calls.append(config.encoder)
        if config.encoder == "auto":
            raise NvencError("NVENC failed while encoding (RuntimeError: busy)")
        report["encoder"] = config.encoder
        return path

    monkeypatch.setattr("blendtalk.render.video.write_video", fake_write_video)
    anim = SimpleNamespace(fps=FPS, audio=_speech(1.0), sample_rate=SR, meta={})
    out = Pipeline(rig=None).save_video(anim, tmp_path / "x.mp4", video=VideoConfig(encoder="auto"))
    assert out == tmp_path / "x.mp4" and calls == ["auto", "libx264"]
    assert anim.meta["encoder"] == "libx264" and {"render", "encode"} <= set(anim.meta["timings"])


def _nvenc_here() -> bool:
    return torch.cuda.is_available() and nvenc.available()


@pytest.mark.gpu
@pytest.mark.skipif(not _nvenc_here(), reason="needs CUDA, PyNvVideoCodec and a card with an NVENC engine")
def test_gpu_nvenc_mp4_matches_x264(tmp_path):
    """On an NVIDIA GPU: the NVENC mp4 has the audio's length and decodes to x264's picture within 2 levels."""
    rgb = _frames(90, 128, 128)
    yuv = rgb_to_yuv420(torch.from_numpy(rgb)).numpy()
    report = {}
    a = write_video(tmp_path / "nv.mp4", yuv, FPS, _speech(3.0), SR, VideoConfig(encoder="pynvvideocodec"), "yuv420p", report)
    b = write_video(tmp_path / "x264.mp4", yuv, FPS, _speech(3.0), SR, VideoConfig(), "yuv420p")
    assert report["encoder"] == "pynvvideocodec"
    info = probe(a)
    assert info["video"]["frames"] == 90 and abs(info["video"]["duration"] - 3.0) <= 1 / FPS
    assert info["audio"]["codec"] == "aac" and info["moov_first"]
    fa, fb = read_frames(a), read_frames(b)
    assert fa.shape == fb.shape == rgb.shape
    assert np.abs(fa.astype(int) - fb.astype(int)).mean() < 2.0
    torch.ones(4, device="cuda").sum().item()  # torch's CUDA context is untouched by the encoder's


def test_pynvvideocodec_is_an_extra_not_a_requirement():
    """CPU machines and CI must install without it: only pyproject's `nvenc` extra names it."""
    from pathlib import Path
    import tomllib

    root = Path(__file__).resolve().parents[1]
    assert "pynvvideocodec" not in (root / "requirements.txt").read_text().lower()
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.lower().startswith("pynvvideocodec") for d in extras["nvenc"])
