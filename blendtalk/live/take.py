"""A live take kept for saving: the audio heard and the frames sent, written as an mp4 on request.

    take = Take(names=session.arkit_names)
    for chunk in microphone():
        take.add_audio(chunk)
        take.add_frames(session.push(chunk))
    take.add_frames(session.finish())
    take.write_mp4(pipe, "take.mp4")             # audio + the rendered face, H.264 + AAC

The video shows the face a client of the stream draws: the rig driven by the 52 ARKit weights of
each frame (what the browser page and an engine get), turned by the frame's head rotation, eyes
by its gaze; rendered and encoded by the file path's renderer and ffmpeg (`Pipeline.save_video`).
Memory is bounded: a take keeps at most `max_seconds` (int16 audio and 57 floats per frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..animation import Animation
from ..constants import FPS, SAMPLE_RATE
from ..speech.audio import num_frames

MAX_TAKE_SECONDS = 300.0  # s: the live server's per-session cap; longer takes keep their first 300 s
MP4_SIZES = (128, 256, 512)  # px: the file path's video sizes


class Take:
    """Audio (int16, 16 kHz) and per-frame ARKit weights (52,), head (3,) and gaze (2,) of a stream."""

    def __init__(self, names, max_seconds: float = MAX_TAKE_SECONDS):
        if not (isinstance(max_seconds, (int, float)) and 0 < max_seconds <= 4 * 3600):
            raise ValueError(f"max_seconds must be a number of seconds in (0, 14400], got {max_seconds!r}")
        self.names = tuple(names)
        if not self.names:
            raise ValueError("a take needs the ARKit names of the stream (this pipeline has no ARKit mapping)")
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.max_frames = int(np.ceil(max_seconds * FPS))
        self._audio: list[np.ndarray] = []
        self.samples = 0
        self.arkit: list[np.ndarray] = []
        self.head: list[np.ndarray] = []
        self.gaze: list[np.ndarray] = []

    def add_audio(self, chunk) -> None:
        """A chunk (S,) float32 in [-1, 1] or int16, as given to `LiveSession.push`; past the cap it is ignored."""
        x = np.asarray(chunk)
        if x.dtype != np.int16:
            x = np.round(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
        x = x[: max(self.max_samples - self.samples, 0)]
        if len(x):
            self._audio.append(x.copy())
            self.samples += len(x)

    def add_frames(self, frames) -> None:
        """`LiveFrame`s in order; those past the cap are ignored. A frame a busy session skipped
        (`LiveSession.skipped`) is filled by holding the one before, as a client's face holds it."""
        for frame in frames:
            index = getattr(frame, "index", len(self.arkit))
            while self.arkit and len(self.arkit) < min(index, self.max_frames):
                self.arkit.append(self.arkit[-1])
                self.head.append(self.head[-1])
                self.gaze.append(self.gaze[-1])
            if len(self.arkit) >= self.max_frames:
                return
            self.arkit.append(np.asarray(frame.arkit, dtype=np.float32))
            self.head.append(np.asarray(frame.head_rotation, dtype=np.float32))
            self.gaze.append(np.asarray(frame.gaze, dtype=np.float32))

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def animation(self, rig) -> Animation:
        """The take as an Animation on `rig` (whose blendshapes are the take's ARKit names), one
        frame per 1/30 s of its audio: a take cut mid-stream holds its last frame to the audio's end."""
        if not self.arkit:
            return take_animation(rig, self.names, self.audio(), np.zeros((0, len(self.names))))
        frames = max(num_frames(self.samples), 1)
        keep = np.minimum(np.arange(frames), len(self.arkit) - 1)  # (T,) index of the frame shown
        return take_animation(rig, self.names, self.audio(), np.stack(self.arkit)[keep], np.stack(self.head)[keep],
                              np.stack(self.gaze)[keep])

    def audio(self) -> np.ndarray:
        """(S,) float32 in [-1, 1]."""
        pcm = np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0

    def write_mp4(self, pipe, path: str | Path, size: int = 256) -> Path:
        """Render the take with `pipe`'s renderer and encode it with its audio; returns the path."""
        path = check_mp4_path(path)
        check_size(size)
        return pipe.save_video(self.animation(pipe.rig), path, size)


def take_animation(rig, names, audio: np.ndarray, arkit: np.ndarray, head: np.ndarray | None = None,
                   gaze: np.ndarray | None = None) -> Animation:
    """Audio (S,) float32 at 16 kHz and ARKit weights (T, 52) [+ head (T, 3), gaze (T, 2) radians]
    -> the Animation of the rig driven by those weights. ValueError names what is wrong."""
    if tuple(names) != tuple(rig.blendshape_names):
        raise ValueError("the take's ARKit names are not this rig's blendshapes; record it with a session on the same pipeline")
    arkit = np.asarray(arkit, dtype=np.float32)
    if arkit.ndim != 2 or arkit.shape[1] != len(names) or len(arkit) == 0:
        raise ValueError(f"the take has no frames (ARKit weights {arkit.shape}); stream some speech before saving it")
    if len(audio) < SAMPLE_RATE // FPS:
        raise ValueError("the take has no audio; stream some speech before saving it")
    if not np.isfinite(arkit).all():
        raise ValueError("the take's ARKit weights contain NaN or infinite values")
    for name, x, width in (("head", head, 3), ("gaze", gaze, 2)):
        if x is not None and (np.shape(x) != (len(arkit), width) or not np.isfinite(x).all()):
            raise ValueError(f"the take's {name} angles must be finite, ({len(arkit)}, {width}); got {np.shape(x)}")
    # The video lasts as long as the audio (write_video fills or drops up to a few frames); a take
    # cut at its cap can have a frame or two more or fewer than its audio.
    vertices = rig.vertices[None].astype(np.float32) + rig.displacement(np.clip(arkit, 0.0, 1.0)).astype(np.float32)
    return Animation(vertices=vertices, triangles=rig.triangles, audio=np.asarray(audio, dtype=np.float32), fps=FPS,
                     sample_rate=SAMPLE_RATE, arkit_weights=arkit, arkit_names=tuple(names),
                     head_rotation=None if head is None else np.asarray(head, np.float32),
                     gaze=None if gaze is None else np.asarray(gaze, np.float32), meta={"source": "live take"})


def check_mp4_path(path: str | Path) -> Path:
    """A new .mp4 path in an existing folder (an existing file is never overwritten)."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"the take's video path must end in .mp4, got {path.name!r}")
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist; create it first")
    if path.exists():
        raise ValueError(f"{str(path)!r} exists already; give a new file name (earlier takes are kept)")
    return path


def check_size(size) -> int:
    if size not in MP4_SIZES:
        raise ValueError(f"the take's video size must be one of {', '.join(map(str, MP4_SIZES))} px, got {size!r}")
    return size
