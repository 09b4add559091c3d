"""Video out: stream rendered frames and the speech into a browser-ready MP4 (H.264 + AAC).

Frames go to the ffmpeg binary that imageio-ffmpeg ships (no system ffmpeg) through its stdin, a
batch at a time, so a long clip is never held twice in memory. A thread of its own writes them, so
that the caller goes on rendering the next batch while ffmpeg takes this one in. The speech goes through a temporary
wav. The audio defines the length: the video is padded (last frame held) or trimmed to
`num_frames(len(audio))` frames and the audio to exactly that many frames' worth of samples, so the
two streams end together. The MP4 is written under a temporary name in the target folder and moved
into place only when ffmpeg succeeded; on any failure (including Ctrl-C) nothing is left behind.

Frames come as RGB, or already in the encoder's yuv420p (`render.yuv`, converted on a GPU), which
spares ffmpeg its one-core RGB conversion. The encoder is x264, or NVIDIA's NVENC where asked for
("auto"): yuv420p frames go to NVENC in this process through PyNvVideoCodec where it is installed
and opens an encoder (`render.nvenc`; ffmpeg then only copies the H.264 into the MP4), else to
ffmpeg's own h264_nvenc where this ffmpeg and the driver have it (`nvenc_available`), else x264.
Either way the file is H.264 yuv420p that browsers play.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..speech.audio import num_frames
from ..constants import FPS, SAMPLE_RATE
from .files import atomic_path
from .nvenc import NvencOptions, NvencSink, mux_command, open_encoder
from .nvenc import available as nvenc_engine

FRAME_BATCH = 32  # frames per write to ffmpeg when given one array: a few MB per pipe write
MAX_LENGTH_MISMATCH = 0.25  # s; frames and audio further apart than this are a caller bug, not rounding
WRITE_AHEAD = 1  # batches queued for ffmpeg beyond the one being written: the render runs a batch ahead
ENCODER_NICENESS = 10  # how far the encoder's priority is below the render's (`_yield_to_the_render`)
PIXEL_FORMATS = ("rgb24", "yuv420p")  # frames as RGB (T, H, W, 3), or planar YUV 4:2:0 (T, 3H/2, W), `render.yuv`
# "pynvvideocodec": NVENC in this process (yuv420p frames only); "auto": that, else ffmpeg's h264_nvenc, else x264
ENCODERS = ("libx264", "h264_nvenc", "pynvvideocodec", "auto")


@dataclass(frozen=True)
class VideoConfig:
    """How the MP4 is encoded."""

    # x264 constant quality and speed/size trade-off. superfast at 23 matches veryfast at 20 in PSNR
    # (40.7 against 40.2 dB on a 10 s 512 px clip) for a third less encoder CPU (0.85 against 1.26 s),
    # which the render shares two cores with; the file is 1.6x larger (0.8 MB for 10 s).
    crf: int = 23
    preset: str = "superfast"
    audio_bitrate: str = "96k"  # AAC bit rate: plenty for 16 kHz mono speech
    # Who encodes: x264 on the CPU by default (the CPU path's probe would cost a process start);
    # a GPU pipeline asks for "auto". NVENC (either way) runs at constant QP = crf, its closest equivalent.
    encoder: str = "libx264"

    def __post_init__(self):
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51] (x264's range), got {self.crf}")
        if not re.fullmatch(r"[a-z]+", self.preset):
            raise ValueError(f"preset must be an x264 preset name such as 'veryfast', got {self.preset!r}")
        if not re.fullmatch(r"\d+k?", self.audio_bitrate):
            raise ValueError(f"audio_bitrate must look like '96k', got {self.audio_bitrate!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")


@functools.lru_cache(maxsize=None)
def nvenc_available(ffmpeg: str) -> bool:
    """True when the ffmpeg binary `ffmpeg` has h264_nvenc and can open it here (an NVIDIA GPU and its
    encode library): it lists the encoder, then encodes two black frames to nowhere. Once per binary."""
    try:
        listed = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-encoders"], capture_output=True, text=True, timeout=20)
        if not re.search(r"^\s*V\S*\s+h264_nvenc\b", listed.stdout, re.M):
            return False
        trial = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                                "color=black:s=256x256:d=0.1", "-frames:v", "2", "-c:v", "h264_nvenc", "-f", "null", "-"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return trial.returncode == 0


def video_codec_args(config: VideoConfig, ffmpeg: str) -> list[str]:
    """ffmpeg's video encoder options for `config`: x264 at its crf and preset, or NVENC at constant QP
    (ffmpeg's h264_nvenc; "pynvvideocodec" never reaches ffmpeg's encoders)."""
    nvenc = config.encoder == "h264_nvenc" or (config.encoder == "auto" and nvenc_available(ffmpeg))
    if nvenc:  # options every nvenc ffmpeg knows (presets p1-p7 came later than "fast")
        return ["-c:v", "h264_nvenc", "-preset", "fast", "-profile:v", "high", "-rc", "constqp", "-qp", str(config.crf)]
    return ["-c:v", "libx264", "-preset", config.preset, "-crf", str(config.crf)]


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    config: VideoConfig | None = None,
    pixel_format: str = "rgb24",
    report: dict | None = None,
) -> Path:
    """Encode frames (+ speech) to an MP4 that browsers play: H.264 yuv420p, AAC, +faststart.

    frames: uint8 RGB (T, H, W, 3), or an iterable of batches (B, H, W, 3) or single frames
    (H, W, 3), consumed once, batch by batch. With pixel_format="yuv420p" each frame is instead a
    (3H/2, W) uint8 yuv420p image (`render.yuv.rgb_to_yuv420`), H and W even. audio: optional float32 mono (S,) in [-1, 1] at
    `sample_rate` Hz. With audio, the video has exactly `num_frames(S)` frames: up to
    MAX_LENGTH_MISMATCH seconds of missing frames are filled by holding the last one, extra ones
    are dropped, and a larger difference raises a ValueError. Odd frame sizes are padded by one
    pixel (yuv420p needs even sides). report: a dict that gets "encoder", the one that encoded
    ("pynvvideocodec", "h264_nvenc" or "libx264"). Returns the path written. Raises
    `nvenc.NvencError` when NVENC fails after taking frames (the caller may encode again with x264).
    """
    path = Path(path)
    config = config or VideoConfig()
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"video path must end in .mp4, got {path.name!r}")
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist; create it first")
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {', '.join(PIXEL_FORMATS)}, got {pixel_format!r}")
    if not (isinstance(fps, (int, float)) and 1 <= fps <= 240):
        raise ValueError(f"fps must be a number in [1, 240], got {fps!r}")
    if config.encoder == "pynvvideocodec" and pixel_format != "yuv420p":
        raise ValueError("encoder 'pynvvideocodec' takes yuv420p frames (render.yuv); pass pixel_format='yuv420p' or use encoder='auto'")
    target = None  # frames the video must have; None: as many as given
    if audio is not None:
        audio = _check_audio(audio, sample_rate)
        target = num_frames(len(audio), fps, sample_rate)
        if target == 0:
            raise ValueError(f"audio of {len(audio)} samples is shorter than half a frame at {fps} fps")
        # Exactly `target` frames' worth of samples: the streams end together (< 1 sample apart).
        audio = _fit_length(audio, round(target * sample_rate / fps))
    yuv = pixel_format == "yuv420p"
    batches = _batches(frames, yuv)
    first = next(batches, None)
    if first is None:
        raise ValueError("no frames to write")
    rows, width = first.shape[1:3]
    height = rows * 2 // 3 if yuv else rows
    nvenc = None  # an open NVENC session: frames are encoded here and ffmpeg only muxes
    # "auto" asks the card once per process: a card without NVENC would refuse every clip.
    if yuv and (config.encoder == "pynvvideocodec" or (config.encoder == "auto" and nvenc_engine())):
        nvenc = open_encoder(width, height, NvencOptions(qp=config.crf, fps=float(fps)))
        if nvenc is None and config.encoder == "pynvvideocodec":
            raise RuntimeError("PyNvVideoCodec cannot encode here (not installed, or no NVIDIA driver with NVENC); "
                               "install blendtalk's 'nvenc' extra on an NVIDIA host, or use encoder='auto'")

    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(prefix="blendtalk-video-") as scratch:
        wav = None
        if audio is not None:
            wav = os.path.join(scratch, "speech.wav")
            _write_wav(wav, audio, sample_rate)
        if nvenc is not None:
            cmd, encoder = mux_command(ffmpeg, fps, wav, config.audio_bitrate, str(tmp)), "pynvvideocodec"
        else:
            cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", pixel_format, "-s", f"{width}x{height}",
                   "-framerate", str(Fraction(fps).limit_denominator(100_000)), "-i", "pipe:0"]
            if wav is not None:
                cmd += ["-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", config.audio_bitrate]
            if width % 2 or height % 2:
                cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
            codec = video_codec_args(config, ffmpeg)
            encoder = codec[1]
            cmd += [*codec, "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        if report is not None:
            report["encoder"] = encoder
        with tempfile.TemporaryFile() as log:
            # stderr to a file, not a pipe: a chatty ffmpeg can then never block on a full pipe.
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
            _yield_to_the_render(proc.pid)
            # With NVENC the writer thread encodes too, so that the next batch renders meanwhile.
            sink = NvencSink(nvenc, proc.stdin) if nvenc is not None else None
            writer = _PipeWriter(sink if sink is not None else proc.stdin)
            try:
                _feed(writer.write, first, batches, (rows, width), target, fps)
                writer.close()
                if sink is not None:
                    sink.finish()
                proc.stdin.close()
                if proc.wait() != 0:
                    raise _ffmpeg_error(path, "failed to encode", _tail(log))
            except BrokenPipeError:
                proc.wait()
                raise _ffmpeg_error(path, "stopped while encoding", _tail(log)) from None
            finally:
                if proc.poll() is None:  # an error or Ctrl-C on our side: stop ffmpeg before cleanup
                    proc.kill()
                    proc.wait()
                writer.abort()  # after the kill, so that a write blocked on the pipe returns
                if proc.stdin and not proc.stdin.closed:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
    return path


def _yield_to_the_render(pid: int) -> None:
    """Lower the encoder's CPU priority (10 nice levels below ours) where the system allows it. On a CPU the render and
    x264 share the cores; llvmpipe's threads wait for each other at every frame, so the encoder
    taking a core from one of them stalls the frame, while the encoder itself only needs to keep up.
    Given the cores second, it fills the render's serial moments instead (0.2 s less for a 10 s
    clip on two cores, docs/speed.md). Linux keeps a priority per thread: this runs right after the
    start, before ffmpeg makes its encoding threads, which inherit it."""
    if hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):  # gone already, or a system that refuses: it runs as it is
            os.setpriority(os.PRIO_PROCESS, pid, min(os.getpriority(os.PRIO_PROCESS, 0) + ENCODER_NICENESS, 19))


class _PipeWriter:
    """Writes to a pipe on a thread of its own, at most WRITE_AHEAD writes behind the caller.

    A write to ffmpeg's stdin returns only once ffmpeg has taken the data in, which it does as fast
    as it encodes; written from the rendering thread, the render waited for the encoder batch by batch.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self._queue: queue.Queue = queue.Queue(maxsize=WRITE_AHEAD)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="ffmpeg-writer", daemon=True)
        self._thread.start()

    def write(self, data) -> None:
        """Queue data (kept as it is until written: the caller must not change it); raises what an
        earlier write raised (BrokenPipeError: ffmpeg stopped)."""
        while self._error is None:
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:  # look again whether the writer failed
                continue
        raise self._error

    def close(self) -> None:
        """Wait until everything queued is written; raises what a write raised."""
        self.write(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what is queued and stop the thread (after a failure; nothing if closed)."""
        if not self._thread.is_alive():
            return
        self._error = self._error or BrokenPipeError("the video was abandoned")
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:  # after a failure, only drain: the caller's next write raises it
                try:
                    self._stream.write(data)
                except Exception as err:
                    self._error = err


def _feed(write, first, batches, size, target, fps) -> None:
    """Write batches with `write`; hold the last frame or trim to reach `target` frames."""
    slack = max(1, round(MAX_LENGTH_MISMATCH * fps))
    given = written = 0
    last = first[-1]
    batch = first
    while batch is not None:
        if batch.shape[1:3] != size:
            raise ValueError(f"all frames must be {size[0]}x{size[1]}, got a batch of shape {batch.shape}")
        given += len(batch)
        if target is not None and given > target + slack:
            raise ValueError(f"got {given}+ frames for {target} frames of audio at {fps} fps")
        keep = batch if target is None else batch[: max(0, target - written)]
        if len(keep):
            write(memoryview(np.ascontiguousarray(keep)))
            written += len(keep)
        last = batch[-1]
        batch = next(batches, None)
    if target is not None and written < target:
        if target - written > slack:
            raise ValueError(f"got {written} frames for {target} frames of audio at {fps} fps")
        hold = memoryview(np.ascontiguousarray(last))
        for _ in range(target - written):
            write(hold)


def _batches(frames, yuv: bool = False) -> Iterable[np.ndarray]:
    """Yield uint8 (B, H, W, 3) batches from an array (T, H, W, 3) or an iterable of batches/frames;
    with yuv, (B, 3H/2, W) batches from (T, 3H/2, W) or batches/frames of that kind."""
    check = _check_yuv_frames if yuv else _check_frames
    whole = 3 if yuv else 4  # ndim of a whole clip or batch; one less for a single frame
    if isinstance(frames, np.ndarray) and frames.ndim == whole:
        check(frames)
        for start in range(0, len(frames), FRAME_BATCH):
            yield frames[start : start + FRAME_BATCH]
        return
    if isinstance(frames, np.ndarray):
        raise ValueError(f"frames must have shape {'(T, 3H/2, W)' if yuv else '(T, H, W, 3)'}, got {frames.shape}")
    for batch in frames:
        batch = np.asarray(batch)
        batch = batch[None] if batch.ndim == whole - 1 else batch
        check(batch)
        if len(batch):
            yield batch


def _check_yuv_frames(frames: np.ndarray) -> None:
    if frames.ndim != 3 or frames.shape[1] % 3 or frames.shape[1] * 2 // 3 % 2 or frames.shape[2] % 2 or frames.shape[2] < 2:
        raise ValueError(f"yuv420p frames must have shape (T, 3H/2, W) with H, W even, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"yuv420p frames must be uint8, got {frames.dtype}")


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3], default=0) < 2:
        raise ValueError(f"frames must have shape (T, H, W, 3) or (H, W, 3) with H, W >= 2, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}; convert with (x * 255).round().astype(np.uint8)")


def _check_audio(audio, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float mono with shape (S,), got {audio.dtype} {audio.shape}")
    if not isinstance(sample_rate, (int, np.integer)) or not 1000 <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate must be an integer number of Hz in [1000, 192000], got {sample_rate!r}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Pad with silence or trim to `length` samples."""
    if len(audio) >= length:
        return audio[:length]
    return np.concatenate([audio, np.zeros(length - len(audio), np.float32)])


def _write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile

    # 32-bit float wav: no requantisation before the AAC encoder; clip so it stays in range.
    soundfile.write(path, np.clip(audio, -1.0, 1.0), sample_rate, subtype="FLOAT")


def _ffmpeg_error(path: Path, what: str, tail: str) -> Exception:
    """OSError(ENOSPC) when ffmpeg ran out of disk space (the user can act on it), else RuntimeError."""
    if "No space left on device" in tail:
        return OSError(errno.ENOSPC, f"no space left on the device of {str(path.parent)!r} while encoding {path.name}")
    return RuntimeError(f"ffmpeg {what} {path.name}: {tail}")


def _tail(log, lines: int = 5) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "no message"


def side_by_side(clips: Sequence[np.ndarray], labels: Sequence[str] | None = None) -> np.ndarray:
    """Place clips next to each other: list of uint8 (T, H, W_i, 3) -> (T, H, sum W_i, 3).

    labels: optional text per clip, drawn in its top-left corner on a dark box (needs Pillow;
    without it the labels are skipped). For long videos call it on slices of the clips and pass
    the resulting batches to `write_video` as a generator, so the whole layout is never in memory.
    """
    if len(clips) == 0:
        raise ValueError("side_by_side needs at least one clip")
    clips = [np.asarray(c) for c in clips]
    for c in clips:
        _check_frames(c)
    lengths = {c.shape[:2] for c in clips}
    if len(lengths) != 1:
        raise ValueError(f"clips must share T and H, got shapes {[c.shape for c in clips]}")
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"got {len(labels)} labels for {len(clips)} clips")
    out = np.concatenate(clips, axis=2)  # (T, H, sum W, 3)
    if labels is not None:
        x = 0
        for clip, label in zip(clips, labels):
            if label:
                _draw_label(out, str(label), x, clip.shape[2])
            x += clip.shape[2]
    return out


def _draw_label(frames: np.ndarray, text: str, x0: int, width: int) -> None:
    """Blend `text` on a translucent dark box into the top-left of frames[:, :, x0:x0+width], in place."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # labels are a nicety; the video is still right without them
        return
    height = frames.shape[1]
    size = max(10, height // 24)  # px: readable at 256-1024 px frames without covering the face
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # old Pillow or no FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    pad = max(2, size // 4)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    x0, y0 = x0 + pad, pad  # a small inset from the corner
    w, h = min(right + 2 * pad, width - 2 * pad), min(bottom + 2 * pad, height - 2 * pad)
    if w <= 0 or h <= 0:
        return
    patch = Image.new("RGBA", (w, h), (0, 0, 0, 150))
    ImageDraw.Draw(patch).text((pad, pad - top // 2), text, fill=(255, 255, 255, 255), font=font)
    rgba = np.asarray(patch, dtype=np.float32) / 255  # (h, w, 4)
    alpha = rgba[..., 3:]
    region = frames[:, y0 : y0 + h, x0 : x0 + w].astype(np.float32)  # (T, h, w, 3)
    blended = region * (1 - alpha) + rgba[..., :3] * 255 * alpha + 0.5
    frames[:, y0 : y0 + h, x0 : x0 + w] = blended.astype(np.uint8)


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """The decoded video of a media file as uint8 RGB frames (T, H, W, 3), by ffmpeg (BT.601, as
    written): for comparing what encoders made, on short clips (the whole clip is held in memory)."""
    import imageio_ffmpeg

    info = probe(path)
    if info["video"] is None:
        raise ValueError(f"{Path(path).name} has no video stream")
    w, h = info["video"]["width"], info["video"]["height"]
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
                          "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


_STREAM_RE = re.compile(r"Stream #\d+:\d+\S*: (Video|Audio): (.*)")


def probe(path: str | os.PathLike) -> dict:
    """Stream facts of a media file, from `ffmpeg -i` and a packet listing (no ffprobe needed).

    Returns {'duration': container seconds or None, 'moov_first': bool (MP4 index before the
    data, i.e. +faststart), 'video': {'codec', 'profile', 'pix_fmt', 'width', 'height', 'fps',
    'frames', 'duration'} or None, 'audio': {'codec', 'sample_rate', 'channels', 'samples',
    'duration'} or None}. Stream durations are exact: from packet timestamps for video and from
    the decoded samples (priming removed) for audio.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    header = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True).stderr
    info: dict = {"duration": None, "moov_first": _moov_first(path), "video": None, "audio": None}
    match = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d*)?)", header)
    if match:
        h, m, s = match.groups()
        info["duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    for kind, rest in _STREAM_RE.findall(header):
        key = kind.lower()
        if info[key] is not None:
            continue  # the first stream of each kind
        parts = _split_top_level(rest)
        codec = parts[0].split()[0]
        if key == "video":
            dims = next((re.match(r"(\d+)x(\d+)", p) for p in parts if re.match(r"\d+x\d+", p)), None)
            fps = next((float(p.split()[0]) for p in parts if p.endswith(" fps")), None)
            profile = re.search(r"\(([^)/]+)\)", parts[0])
            info["video"] = {
                "codec": codec, "profile": profile.group(1) if profile else None,
                "pix_fmt": re.match(r"\w+", parts[1]).group(0) if len(parts) > 1 else None,
                "width": int(dims.group(1)) if dims else None, "height": int(dims.group(2)) if dims else None,
                "fps": fps,
            }
        else:
            rate = next((int(p.split()[0]) for p in parts if p.endswith(" Hz")), None)
            info["audio"] = {"codec": codec, "sample_rate": rate, "channels": parts[2] if len(parts) > 2 else None}
    if info["video"] is None and info["audio"] is None:
        raise ValueError(f"ffmpeg finds no audio or video stream in {path.name}")
    # Packet listing: video packets copied (cheap), audio decoded so the encoder's priming and
    # padding are removed and the sample count is the one a player plays.
    listing = subprocess.run(
        [exe, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0?", "-map", "0:a:0?",
         "-c:v", "copy", "-f", "framecrc", "-"],
        capture_output=True, text=True,
    ).stdout
    for key, (count, ticks, tb) in _packet_spans(listing).items():
        if info.get(key):
            info[key]["duration"] = float(ticks * tb)
            info[key]["frames" if key == "video" else "samples"] = count if key == "video" else ticks
    return info


def _packet_spans(listing: str) -> dict:
    """framecrc text -> {'video'|'audio': (packets, end - start in time-base ticks, time base)}."""
    time_base, kinds, spans = {}, {}, {}
    for line in listing.splitlines():
        if m := re.match(r"#tb (\d+): (\d+)/(\d+)", line):
            time_base[int(m.group(1))] = Fraction(int(m.group(2)), int(m.group(3)))
        elif m := re.match(r"#media_type (\d+): (\w+)", line):
            kinds[int(m.group(1))] = m.group(2)
        elif line and not line.startswith("#"):
            stream, _dts, pts, dur = (int(v) for v in line.split(",")[:4])
            lo, hi, n = spans.get(stream, (pts, pts + dur, 0))
            spans[stream] = (min(lo, pts), max(hi, pts + dur), n + 1)
    # For audio the time base is 1/sample_rate, so ticks are samples.
    return {kinds[s]: (n, hi - lo, time_base[s]) for s, (lo, hi, n) in spans.items() if s in kinds}


def _split_top_level(text: str) -> list[str]:
    """Split on ', ' outside parentheses: 'yuv420p(tv, progressive)' stays one part."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def _moov_first(path: Path) -> bool:
    """True when an MP4's top-level 'moov' box precedes 'mdat' (playback can start while loading)."""
    order = []
    with open(path, "rb") as f:
        while len(order) < 16:
            head = f.read(8)
            if len(head) < 8:
                break
            size, kind = int.from_bytes(head[:4], "big"), head[4:]
            if size == 1:
                size = int.from_bytes(f.read(8), "big") - 8
            elif size == 0:
                break
            order.append(kind)
            f.seek(size - 8, os.SEEK_CUR)
    return b"moov" in order and (b"mdat" not in order or order.index(b"moov") < order.index(b"mdat"))
