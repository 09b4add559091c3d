"""One animation request: everything `Pipeline.run` needs, validated once, before any slow work.

    request = AnimationRequest.create("speech.wav", emotion="happy", intensity=0.8)
    animation = pipe.run(request)

`Pipeline.animate`, the CLI and the app build their requests here, so an input is checked in one
place with one message. The request is frozen: the audio is already loaded (16 kHz float32), the
text stripped, the expression parsed, a reference sequence read onto the rig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .constants import SAMPLE_RATE
from .expression.emotions import check_emotion, check_intensity, check_mix, parse_timeline
from .expression.head_motion import check_seed, check_switch
from .speech.audio import MAX_SECONDS, load_audio

if TYPE_CHECKING:  # the rig (and torch) load only for a reference sequence: the CLI checks its input first
    from .face.rig import FaceRig

# "ours": the DFM takes out of each input what the other domain's blendshapes explain (its leak) and
# keeps the rest, (d_s - B_e w_e^s) + (d_e - B_s w_s^e); "eq13": the paper's B_s w_s^s + B_e w_e^e,
# which redraws both through the learned bases; then the naive sum d_s + d_e, and d_s alone.
METHODS = ("ours", "eq13", "interpolation", "speech_only")
MAX_TEXT_CHARS = 600  # typed text for TTS: about 40 s of speech
MAX_TRANSCRIPT_CHARS = 1000  # about a minute of speech
VIDEO_SIZE_RANGE = (64, 2048)  # px, the renderer's limits


@dataclass
class Expression:
    """What the face should show besides speech.

    emotion: one of EMOTIONS. intensity: 0..1.5 (above 1 exaggerates). mix_with / mix_ratio: a
    second emotion blended in (ratio 0 = only `emotion`, 1 = only `mix_with`). timeline: e.g.
    "neutral@0 happy@1.5 sad@4.0:0.7" (overrides emotion/mix). reference: a file with an expression
    sequence (overrides the rest): .npy/.npz of ARKit weights (T', 52) or rig vertices (T', V, 3)
    in metres; it is looped or cut to the speech length. blinks: natural blinks on top.
    """

    emotion: str = "neutral"
    intensity: float = 1.0
    mix_with: str | None = None
    mix_ratio: float = 0.5
    timeline: str | None = None
    reference: str | Path | None = None
    blinks: bool = True
    seed: int = 0  # blink timing (and, in Pipeline.animate, head and eye motion)

    def __post_init__(self):
        self.seed = check_seed(self.seed)
        self.blinks = check_switch(self.blinks, "blinks")
        self.emotion = check_emotion(self.emotion)
        self.intensity = check_intensity(self.intensity)
        if self.mix_with is not None:
            self.mix_with, self.mix_ratio = check_mix(self.mix_with, self.mix_ratio)
        if self.timeline is not None and not str(self.timeline).strip():
            self.timeline = None
        if self.timeline is not None:
            # Each entry is scaled by the global intensity; check the products now, not after the slow work.
            for key in parse_timeline(self.timeline):
                check_intensity(self.intensity * key.intensity,
                                f"intensity {self.intensity:g} x the intensity of timeline entry {key.emotion}@{key.start:g}")

    def describe(self) -> str:
        if self.reference is not None:
            return f"reference {Path(self.reference).name}"
        if self.timeline:
            return f"timeline '{self.timeline}' x{self.intensity:g}"
        if self.mix_with:
            return f"{self.emotion} + {self.mix_with} ({self.mix_ratio:g}) x{self.intensity:g}"
        return f"{self.emotion} x{self.intensity:g}"


def read_reference(path: str | Path, rig: FaceRig) -> np.ndarray:
    """A reference expression sequence file (.npy/.npz of ARKit weights (T', 52) or rig vertices
    (T', V, 3) in metres) -> validated displacements (T', V, 3) float32 on the rig."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference expression file {str(path)!r} does not exist")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"reference expression must be a .npy or .npz file, got {path.name!r}")
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                files = list(z.files)
                data = z[files[0]] if len(files) == 1 else None
    # numpy raises ValueError for pickled/garbled files, OSError/EOFError for unreadable/truncated ones.
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"cannot read the reference expression {path.name} as a numpy {path.suffix} file: {err}") from None
    if data is None:
        raise ValueError(f"{path.name} holds {len(files)} arrays {files}; give one array")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"reference expression {path.name} holds {data.dtype} values; expected real numbers")
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 2 and data.shape[1] == rig.num_blendshapes:
        disp = rig.displacement(data)
    elif data.ndim == 3 and data.shape[1:] == (rig.num_vertices, 3):
        disp = data - rig.vertices[None]
    else:
        raise ValueError(f"reference expression {path.name} has shape {data.shape}; expected ARKit weights "
                         f"(T, {rig.num_blendshapes}) or rig vertices (T, {rig.num_vertices}, 3) in metres")
    if len(disp) == 0 or not np.isfinite(disp).all():
        raise ValueError(f"reference expression {path.name} is empty or has NaN/inf values")
    if np.abs(disp).max() > 0.05:  # 5 cm: not a face expression on this rig (wrong units or another mesh)
        raise ValueError(f"reference expression {path.name} moves vertices by up to {np.abs(disp).max():.3g} m; "
                         "expected metres on the shipped rig (motions of a few mm)")
    return disp.astype(np.float32)


@dataclass(frozen=True)
class AnimationRequest:
    """What one animation needs, validated (build it with `create`).

    audio: (S,) float32 at 16 kHz, or None when `text` is spoken instead. transcript: the words of
    the audio (better lip sync), or None. reference: (T', V, 3) displacements of
    `expression.reference` on the rig, or None. size: video frame size in px.
    """

    audio: np.ndarray | None
    text: str | None
    transcript: str | None
    expression: Expression
    reference: np.ndarray | None = field(default=None, repr=False)
    method: str = "ours"
    head_motion: bool = True
    size: int = 512

    @property
    def seed(self) -> int:
        return self.expression.seed

    @classmethod
    def create(
        cls, audio=None, *, text: str | None = None, transcript: str | None = None, emotion: str = "neutral",
        intensity: float = 1.0, mix_with: str | None = None, mix_ratio: float = 0.5, timeline: str | None = None,
        reference: str | Path | None = None, blinks: bool = True, method: str = "ours", head_motion: bool = True,
        seed: int = 0, size: int = 512, rig: FaceRig | None = None, max_audio_seconds: float = MAX_SECONDS,
    ) -> AnimationRequest:
        """Check every input and load the audio; raises ValueError (AudioError for audio) with what to change.

        audio: a path or a (S,) array at 16 kHz. Blank strings count as not given. rig: the face a
        reference sequence must fit (the shipped rig when None).
        """
        timeline, mix_with = _blank_is_none(timeline), _blank_is_none(mix_with)
        check_speech(audio, text, transcript, load=False)  # the cheap checks first; the audio is read last
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        head_motion = check_switch(head_motion)
        lo, hi = VIDEO_SIZE_RANGE
        if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
            raise ValueError(f"video size must be an integer number of pixels in [{lo}, {hi}], got {size!r}")
        expression = Expression(emotion, intensity, mix_with, mix_ratio, timeline, reference, blinks, seed)
        if reference is not None and rig is None:
            from .face.rig import load_rig

            rig = load_rig()
        ref = read_reference(reference, rig) if reference is not None else None  # (T', V, 3)
        audio, text, transcript = check_speech(audio, text, transcript, max_audio_seconds)
        if audio is not None and expression.timeline is not None and expression.reference is None:
            seconds = len(audio) / SAMPLE_RATE  # typed text's length is known only once it is spoken
            late = [key for key in parse_timeline(expression.timeline) if key.start >= seconds]
            if late:
                raise ValueError(f"timeline entry {late[0].emotion}@{late[0].start:g} starts after the speech ends "
                                 f"({seconds:.1f} s) and would never show; give times within the speech")
        return cls(audio, text, transcript, expression, ref, method, head_motion, size)


def check_speech(audio=None, text: str | None = None, transcript: str | None = None,
                 max_audio_seconds: float = MAX_SECONDS, load: bool = True):
    """The speech of a request -> (audio (S,) float32 at 16 kHz or None, text or None, transcript or None).

    Exactly one of audio (a path or a 16 kHz array) and text; blank strings count as not given;
    text and transcript within their limits. load=False: only the checks that read no file.
    """
    text, transcript = _blank_is_none(text), _blank_is_none(transcript)
    if audio is not None and text is not None:
        raise ValueError("give either speech audio or text to speak, not both")
    if audio is None and text is None:
        raise ValueError("no speech: give speech audio or text to speak (the text to speak is empty)")
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"the text to speak has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    if transcript is not None and len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise ValueError(f"the transcript has {len(transcript)} characters; the limit is {MAX_TRANSCRIPT_CHARS}")
    if audio is not None and load:  # arrays are validated like files (length, NaN, silence, clipping): they are a boundary too
        audio = (load_audio(audio, sample_rate=SAMPLE_RATE, max_seconds=max_audio_seconds) if isinstance(audio, np.ndarray)
                 else load_audio(audio, max_seconds=max_audio_seconds))
    return audio, text, transcript


def _blank_is_none(value):
    """A text input: stripped, and None when nothing is left (an empty text box is no input)."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None
