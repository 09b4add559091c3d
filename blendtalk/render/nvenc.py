"""H.264 on the GPU's own video encoder (NVENC) through NVIDIA's PyNvVideoCodec, muxed by ffmpeg.

The ffmpeg that imageio-ffmpeg ships has no h264_nvenc, so on a CUDA host x264 encoded on the CPU
and its tail after the last rendered frame was a fifth of a clip's time. PyNvVideoCodec (MIT; pip
`PyNvVideoCodec`, the `nvenc` extra) drives NVENC from this process: yuv420p frames, the layout
the GPU path already makes (`render.yuv`, NVENC's "YUV420"/IYUV surface), go in a frame at a time
and H.264 packets come out while the clip is still rendering. ffmpeg then only copies that stream
into the MP4 next to the AAC speech (`-c:v copy`), which costs next to nothing.

The package is optional: `open_encoder` returns None where it is not importable (every CPU
machine, CI) or cannot open an encoder here (no NVIDIA driver with NVENC), and the caller keeps
x264. Quality follows `VideoConfig.crf` as constant QP, as ffmpeg's NVENC path did; no B-frames,
so decode order is display order and the raw stream needs no timestamps to be muxed.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

logger = logging.getLogger(__name__)

SURFACE = "YUV420"  # PyNvVideoCodec's name for planar I420 = ffmpeg's yuv420p: Y, then U, then V
PRESETS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")  # NVENC's speed/quality presets, P1 fastest
GOP = 250  # frames between key frames, x264's default keyint: seeking in a browser stays quick


@dataclass(frozen=True)
class NvencOptions:
    """How NVENC encodes (from `VideoConfig`)."""

    qp: int = 23  # constant QP = x264's crf number, the closest NVENC notion of constant quality
    preset: str = "P4"  # NVIDIA's default; 512 px is far below what any preset encodes in real time
    fps: float = 30.0  # written into the stream's timing; ffmpeg's -framerate sets the MP4's

    def __post_init__(self):
        if not 0 <= self.qp <= 51:
            raise ValueError(f"qp must be in [0, 51] (H.264's range), got {self.qp}")
        if self.preset not in PRESETS:
            raise ValueError(f"NVENC preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if not 1 <= self.fps <= 240:
            raise ValueError(f"fps must be in [1, 240], got {self.fps}")

    def encoder_kwargs(self) -> dict:
        """Keyword options of PyNvVideoCodec's CreateEncoder (it passes each as a string)."""
        rate = Fraction(self.fps).limit_denominator(1001)
        return {"codec": "h264", "preset": self.preset, "tuning_info": "high_quality", "rc": "constqp",
                "constqp": self.qp, "fps": rate.numerator if rate.denominator == 1 else round(self.fps),
                "gop": GOP, "idrperiod": GOP, "bf": 0, "repeatspspps": 1}


@functools.lru_cache(maxsize=1)
def pynvvideocodec():
    """The PyNvVideoCodec module, or None where it cannot be imported (not installed, or no NVIDIA
    driver with NVENC: its import checks the driver). Looked up once per process."""
    try:
        import PyNvVideoCodec
    except Exception as err:  # ImportError, or its RuntimeError about the driver: x264 takes over
        logger.debug("PyNvVideoCodec not usable: %s", err)
        return None
    return PyNvVideoCodec


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when this process can open an NVENC session: PyNvVideoCodec importable and a card with an
    NVENC engine (the H100 has none: its driver answers NV_ENC_ERR_NO_ENCODE_DEVICE; the H200 is the
    same GH100 chip). Tries one small session, once per process."""
    return open_encoder(64, 64, NvencOptions()) is not None


class NvencEncoder:
    """One clip's NVENC session: yuv420p frames in (host memory), H.264 Annex B bytes out.

    `encode` takes a batch (B, 3H/2, W) and returns the packets that are ready; `finish` flushes the
    rest. Not thread-safe: one thread feeds it (the video writer's)."""

    def __init__(self, module, width: int, height: int, options: NvencOptions) -> None:
        if width % 2 or height % 2 or min(width, height) < 2:
            raise ValueError(f"NVENC needs even frame sides, got {width}x{height}")
        self.width, self.height = width, height
        self.frame_bytes = width * height * 3 // 2
        self._module = module
        # True: frames come from host memory (the OpenGL path reads them back there anyway).
        self._encoder = module.CreateEncoder(width, height, SURFACE, True, **options.encoder_kwargs())
        self._frames = 0

    def encode(self, frames) -> bytes:
        """uint8 yuv420p frames (B, 3H/2, W) or their raw bytes -> the H.264 bytes ready so far."""
        flat = np.frombuffer(frames, dtype=np.uint8) if not isinstance(frames, np.ndarray) else frames.reshape(-1)
        if flat.size % self.frame_bytes:
            raise ValueError(f"got {flat.size} bytes, not whole {self.width}x{self.height} yuv420p frames")
        out = []
        for frame in flat.reshape(-1, self.frame_bytes):
            out.append(_packet_bytes(self._encoder.Encode(frame)))
            self._frames += 1
        return b"".join(out)

    def finish(self) -> bytes:
        """Flush the encoder: the last packets."""
        return _packet_bytes(self._encoder.EndEncode())

    @property
    def frames(self) -> int:
        """Frames handed to the encoder so far."""
        return self._frames


def _packet_bytes(result) -> bytes:
    """Encode/EndEncode output -> bytes: PyNvVideoCodec 2.1+ returns a list of packets (dicts with
    "data"), earlier releases one array of bytes."""
    if isinstance(result, (list, tuple)):
        return b"".join(bytes(p["data"]) if isinstance(p, dict) else bytes(p) for p in result)
    return bytes(result) if result is not None else b""


def open_encoder(width: int, height: int, options: NvencOptions, module=None) -> NvencEncoder | None:
    """An NvencEncoder for frames of width x height, or None where PyNvVideoCodec is missing or cannot
    open one here (logged once at INFO: the video is then encoded by x264). module: the package to
    use (tests pass a stand-in); None: `pynvvideocodec()`."""
    module = module if module is not None else pynvvideocodec()
    if module is None:
        return None
    try:
        return NvencEncoder(module, width, height, options)
    except ValueError:
        raise
    except Exception as err:  # the driver refused (no NVENC on this card, sessions exhausted, ...)
        logger.info("NVENC could not open an encoder (%s: %s); encoding with x264", type(err).__name__, err)
        return None


def mux_command(ffmpeg: str, fps: float, wav: str | None, audio_bitrate: str, out: str) -> list[str]:
    """ffmpeg's arguments that read a raw H.264 stream on stdin and copy it into the MP4 `out`, with
    the speech `wav` (if any) encoded to AAC: the streams are cut to the audio by the caller."""
    # -r before the input: the frames are timed at fps whatever rate the stream's own header states
    # (the raw demuxer's -framerate yields to one); no B-frames, so that order is the display order.
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "h264", "-r", str(Fraction(fps).limit_denominator(100_000)), "-i", "pipe:0"]
    if wav is not None:
        cmd += ["-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", audio_bitrate]
    return cmd + ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", out]


class NvencError(RuntimeError):
    """NVENC failed after frames were taken: the caller may render again and encode with x264."""


class NvencSink:
    """A writable stream for `video._PipeWriter`: raw yuv420p frame bytes in, H.264 written to
    `stream` (ffmpeg's stdin). `finish` flushes the encoder into the stream."""

    def __init__(self, encoder: NvencEncoder, stream) -> None:
        self._encoder, self._stream = encoder, stream

    def write(self, data) -> None:
        self._send(self._encoder.encode, data)

    def finish(self) -> None:
        self._send(self._encoder.finish)

    def _send(self, fn, *args) -> None:
        try:
            packets = fn(*args)
        except (ValueError, OSError):
            raise
        except Exception as err:  # the driver's error, not ours: say so, so that x264 can take over
            raise NvencError(f"NVENC failed while encoding ({type(err).__name__}: {err})") from err
        if packets:
            self._stream.write(packets)
