"""What live mode adds to the speech frame by frame: the expression (eased in on every change),
blinks, and head and eye motion, each with a state of a few numbers.

* `ExpressionStream`: ARKit weights (52,) per frame, and the emotion's head posture and gaze (5,).
  A change of emotion, intensity or mix eases from the current weights to the new target over
  ONSET_SECONDS with the file path's raised cosine; the first emotion is held from frame 0, so a
  held emotion equals `pipeline.expression_weights` (and `pipeline.expression_posture`).
* Blinks: the draws of `emotions.blinks` in the same order, made as time reaches them, so a
  stream's blinks are the file path's for the same seed.
* `HeadStream`: a causal version of `head_motion` (which smooths over the whole clip): drift is
  noise through a two-pole low-pass, speech activity a one-pole follower of frame energy against a
  running loud level, nods at peaks of that energy, gaze fixations and saccades drawn as time
  reaches them, the same amplitudes and bounds (`HeadMotionConfig`).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..constants import FPS
from ..expression.emotions import (BLINK_RATE, POSTURE_DIMS, _ease, add_blinks, check_emotion, check_intensity, check_mix,
                                   mix, mix_posture)
from ..expression.head_motion import SILENCE_FLOOR_DBFS, SPEECH_RANGE_DB, HeadMotionConfig, check_seed

ONSET_SECONDS = 0.4  # s: a change of expression eases in over this long (the file path's timeline transition)


class ExpressionStream:
    """Expression weights (52,) per frame, with blinks; `set` changes the target at any frame."""

    def __init__(self, names, emotion: str = "neutral", intensity: float = 1.0, mix_with: str | None = None,
                 mix_ratio: float = 0.5, blinks: bool = True, seed: int = 0):
        self.names = tuple(names)
        self.current = np.zeros(len(self.names))
        self.posture = np.zeros(POSTURE_DIMS)  # (5,) degrees of frame t's head and gaze offsets (`emotions.EMOTION_POSTURE`)
        self.start_value, self.change_frame = self.current.copy(), 0
        self.target = self.current
        self.blinks = bool(blinks)
        self.rng = np.random.default_rng(check_seed(seed))
        self.next_blink = float(self.rng.uniform(0.0, 60.0 / BLINK_RATE))
        self.blink = None  # (when, close, hold, reopen, depth) of the blink in progress
        self.blink_cols = [self.names.index(f"eyeBlink{s}") for s in ("Left", "Right")]
        self.set(emotion, intensity, mix_with, mix_ratio, frame=0)
        self.current = self.start_value = self.target  # the first emotion is held from frame 0, as in the file path
        self.posture = self.posture_start = self.posture_target

    def set(self, emotion: str, intensity: float = 1.0, mix_with: str | None = None, mix_ratio: float = 0.5,
            frame: int = 0) -> None:
        """New target from frame `frame` on (validated: a bad name or intensity raises ValueError)."""
        emotion, intensity = check_emotion(emotion), check_intensity(intensity)
        if mix_with is not None:
            mix_with, mix_ratio = check_mix(mix_with, mix_ratio)
        ratio = mix_ratio if mix_with else 0.0
        target = mix(emotion, mix_with or emotion, ratio, intensity, names=self.names)
        self.start_value, self.change_frame, self.target = self.current.copy(), frame, target.astype(np.float64)
        # The head's posture and the gaze (5,) degrees ease with the face, as the file path's timeline.
        self.posture_start, self.posture_target = self.posture.copy(), mix_posture(emotion, mix_with or emotion, ratio, intensity)
        self.describe = f"{emotion}" + (f" + {mix_with} ({mix_ratio:g})" if mix_with else "") + f" x{intensity:g}"

    def frame(self, t: int) -> np.ndarray:
        """Weights (52,) float32 of frame t (frames must come in order)."""
        k = _ease((t - self.change_frame) / (ONSET_SECONDS * FPS))
        self.current = self.start_value + k * (self.target - self.start_value)
        self.posture = self.posture_start + k * (self.posture_target - self.posture_start)
        w = self.current.astype(np.float32)
        if self.blinks:
            b = self._blink(t / FPS)
            if b > 0:
                blink = np.zeros((1, len(w)), np.float32)
                blink[0, self.blink_cols] = b
                w = add_blinks(w[None], blink, self.names)[0]
        return w

    def _blink(self, time: float) -> float:
        """Lid closure in [0, 1] at `time` s; the random draws as `emotions.blinks` makes them."""
        if self.blink is None and self.next_blink <= time + 1.0 / FPS:
            when = self.next_blink
            close, hold, reopen = self.rng.uniform(0.05, 0.08), self.rng.uniform(0.015, 0.04), self.rng.uniform(0.09, 0.14)
            depth = self.rng.uniform(0.85, 1.0)
            self.blink = (when, close, hold, reopen, depth)
            refractory, mean_wait = 0.5, max(60.0 / BLINK_RATE - 0.5, 0.05)
            self.next_blink = when + close + hold + reopen + refractory + float(self.rng.exponential(mean_wait))
        if self.blink is None:
            return 0.0
        when, close, hold, reopen, depth = self.blink
        if time >= when + close + hold + reopen:
            self.blink = None
            return self._blink(time) if self.next_blink <= time else 0.0
        shape = min(_ease((time - when) / close), 1.0 - _ease((time - when - close - hold) / reopen))
        return float(depth * shape)


class HeadStream:
    """Head rotation (3,) [pitch, yaw, roll] and gaze (2,) [yaw, pitch] in radians per frame, from
    each frame's audio energy; causal and O(1) per frame (see the module docstring)."""

    def __init__(self, seed: int = 0, config: HeadMotionConfig | None = None):
        self.cfg = config or HeadMotionConfig()
        seed = check_seed(seed)
        self.rng_head, self.rng_gaze = (np.random.default_rng([seed, stream, 7]) for stream in (0, 1))
        self.loud = -30.0  # dBFS: running loud level (a fast-rising, slowly falling peak follower)
        self.activity = 0.0
        self.drift = np.zeros((2, 3))  # two one-pole stages of the low-pass noise
        cutoff = self.cfg.drift_cutoff_hz
        self.alpha = 1.0 - math.exp(-2 * math.pi * cutoff / FPS)
        # Standard deviation of two cascaded one-pole low-passes of unit white noise, to rescale to 1.
        a = self.alpha
        self.drift_std = math.sqrt(a**4 * (1 + (1 - a) ** 2) / (1 - (1 - a) ** 2) ** 3) or 1.0
        self.energy = deque([-100.0] * 3, maxlen=3)
        self.last_beat = -10**9
        self.nods: deque = deque()  # (start frame, strength, (3,) direction)
        self.fix_end, self.target, self.prev_target, self.saccade = 0.0, np.zeros(2), np.zeros(2), (0.0, 0.05)
        self.averted = False
        self.follow = np.zeros(3)
        self.follow_lag: deque = deque([np.zeros(3)] * max(1, int(round(self.cfg.head_lag_seconds * FPS))),
                                      maxlen=max(1, int(round(self.cfg.head_lag_seconds * FPS))))

    def frame(self, t: int, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame t's audio samples (about 533) -> (head (3,), gaze (2,)) float32 radians."""
        cfg = self.cfg
        db = 10 * math.log10(float(np.mean(np.square(samples, dtype=np.float64))) + 1e-10) if len(samples) else -100.0
        self.loud = max(db, self.loud - 3.0 / FPS)  # falls 3 dB a second
        speech = db > max(self.loud - SPEECH_RANGE_DB, SILENCE_FLOOR_DBFS)
        tau = cfg.settle_seconds * FPS / 2
        self.activity += (float(speech) - self.activity) / max(tau, 1.0)
        gain = cfg.rest_share + (1 - cfg.rest_share) * self.activity
        self.drift[0] += self.alpha * (self.rng_head.standard_normal(3) - self.drift[0])
        self.drift[1] += self.alpha * (self.drift[0] - self.drift[1])
        head = self.drift[1] / self.drift_std * np.asarray(cfg.drift_deg) * gain

        # Nods: a peak of frame energy (decided one frame late) loud enough and far enough from the last.
        self.energy.append(db)
        e = list(self.energy)
        prominence = float(np.clip((e[1] - (self.loud - 15.0)) / 15.0, 0, 1)) if speech else 0.0
        spacing = 0.35 * FPS
        if e[1] >= e[0] and e[1] > e[2] and prominence >= cfg.beat_threshold and t - 1 - self.last_beat >= spacing:
            self.last_beat = t - 1
            side = self.rng_head.uniform(-0.4, 0.4, 2)
            self.nods.append((t - 1, prominence, np.array([1.0, side[0], side[1]])))
        width = max(2, int(round(cfg.beat_seconds * FPS)))
        while self.nods and t - self.nods[0][0] > width:
            self.nods.popleft()
        for start, strength, direction in self.nods:
            head = head + strength * cfg.beat_deg * direction * math.sin(math.pi * (t - start) / width) ** 2

        world = self._gaze((t + 0.5) / FPS)
        self.follow += (np.array([-world[1], world[0], 0.0]) * cfg.head_follow - self.follow) * min(1.0, 1.0 / (0.12 * FPS))
        self.follow_lag.append(self.follow.copy())
        head = head + self.follow_lag[0]
        bound = np.array([cfg.max_pitch_deg, cfg.max_yaw_deg, cfg.max_roll_deg])
        head = bound * np.tanh(head / bound)
        eyes = np.array([world[0] - head[1], world[1] + head[0]])  # the eyes keep their target (VOR)
        eyes = cfg.max_gaze_deg * np.tanh(eyes / cfg.max_gaze_deg)
        return np.radians(head).astype(np.float32), np.radians(eyes).astype(np.float32)

    def _gaze(self, time: float) -> np.ndarray:
        """Where the eyes look (2,) degrees at `time`: fixations and minimum-jerk saccades (head_motion._world_gaze)."""
        cfg = self.cfg
        if time >= self.fix_end:
            speaking = self.activity > 0.5
            mean = cfg.fixation_speech_s if speaking else cfg.fixation_rest_s
            look_away = not self.averted and self.rng_gaze.random() < (cfg.aversion_speech if speaking else cfg.aversion_rest)
            if look_away:
                angle = self.rng_gaze.uniform(-0.35 * np.pi, 1.35 * np.pi)
                size = self.rng_gaze.uniform(cfg.aversion_min_deg, cfg.aversion_max_deg)
                target = size * np.array([np.cos(angle), 0.6 * np.sin(angle)])
            else:
                target = np.clip(self.rng_gaze.normal(0.0, cfg.face_scan_deg, 2), -2.5 * cfg.face_scan_deg, 2.5 * cfg.face_scan_deg)
            self.averted = look_away
            self.prev_target, self.target = self._position(time), target
            length = float(np.clip(0.021 + 0.0022 * np.linalg.norm(target - self.prev_target), 0.03, 0.06))
            self.saccade = (self.fix_end if self.fix_end > 0 else time, length)
            self.fix_end = time + float(np.clip(self.rng_gaze.gamma(4.0, mean / 4.0), cfg.fixation_min_s, cfg.fixation_max_s))
        return self._position(time)

    def _position(self, time: float) -> np.ndarray:
        start, length = self.saccade
        s = float(np.clip((time - start) / length, 0, 1))
        return self.prev_target + s**3 * (10 - 15 * s + 6 * s**2) * (self.target - self.prev_target)
