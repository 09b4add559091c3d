"""The result of animating a face: vertices over time, the audio they go with, and the weights behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .constants import FPS, SAMPLE_RATE


@dataclass
class Animation:
    """An animated mesh with its speech.

    vertices: (T, V, 3) float32, metres. triangles: (F, 3) int. fps: frames per second.
    audio: (N,) float32 mono in [-1, 1] at `sample_rate`; its length is the animation's length
    (T = ceil(N / sample_rate * fps)). speech_weights: (T, K_s) and expression_weights: (T, K_e),
    the DFM's blendshape weights (None when no DFM was used). arkit_weights: (T, 52) ARKit curves
    on the shipped rig, named by `arkit_names` (None when no mapping is available).
    head_rotation: (T, 3) radians [pitch (+ nods down), yaw (+ toward the face's left, +x), roll (+
    tilts toward the face's left)] about `head_motion.head_pivot` of the template; gaze: (T, 2)
    radians [yaw (+ toward the face's left), pitch (+ up)] of the eyes in the head. None: the head
    holds still / the eyes look ahead. `vertices` stay head-local; the rotation is applied when
    rendering, viewing and in the glb export (`blendtalk.expression.head_motion.rotate_head`).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    audio: np.ndarray
    fps: float = FPS
    sample_rate: int = SAMPLE_RATE
    speech_weights: np.ndarray | None = None
    expression_weights: np.ndarray | None = None
    arkit_weights: np.ndarray | None = None
    arkit_names: tuple[str, ...] = ()
    head_rotation: np.ndarray | None = None
    gaze: np.ndarray | None = None
    flame_params: dict[str, np.ndarray] | None = None  # per frame: 'expr' (T, n), 'jaw_pose' (T, 3), ...
    meta: dict = field(default_factory=dict)  # what made it: emotion, intensity, checkpoints, timings

    def __post_init__(self):
        v = np.asarray(self.vertices)
        if v.ndim != 3 or v.shape[-1] != 3 or v.shape[0] == 0:
            raise ValueError(f"vertices must have shape (T, V, 3) with T > 0, got {v.shape}")
        self.vertices = v.astype(np.float32, copy=False)
        self.triangles = np.asarray(self.triangles, dtype=np.int64)
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"triangles must have shape (F, 3), got {self.triangles.shape}")
        self.audio = np.asarray(self.audio, dtype=np.float32).reshape(-1)
        for name in ("speech_weights", "expression_weights", "arkit_weights"):
            w = getattr(self, name)
            if w is not None and (np.ndim(w) != 2 or len(w) != len(v)):
                raise ValueError(f"{name} must have shape (T, K) with T = {len(v)}, got {np.shape(w)}")
        for name, width in (("head_rotation", 3), ("gaze", 2)):
            a = getattr(self, name)
            if a is None:
                continue
            a = np.asarray(a, dtype=np.float32)
            if a.shape != (len(v), width) or not np.isfinite(a).all():
                raise ValueError(f"{name} must be finite radians of shape (T, {width}) with T = {len(v)}, got {a.shape}")
            setattr(self, name, a)
        if self.arkit_weights is not None and len(self.arkit_names) != self.arkit_weights.shape[1]:
            raise ValueError(f"arkit_names has {len(self.arkit_names)} names for {self.arkit_weights.shape[1]} curves")

    @property
    def num_frames(self) -> int:
        return len(self.vertices)

    @property
    def duration(self) -> float:
        """Seconds, from the audio (the frames cover it)."""
        return len(self.audio) / self.sample_rate if len(self.audio) else self.num_frames / self.fps
