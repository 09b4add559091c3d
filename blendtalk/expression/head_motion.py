"""Head and eye motion from speech: nods, turns and tilts of a few degrees, saccades and gaze shifts.

A face that talks with a still head and fixed eyes reads as a mask. This module makes the motion
that people add without thinking, from the speech audio (S,) at 16 kHz and a seed, for T frames:

    pros = prosody(audio, T)                      # energy, F0, speech activity, stressed syllables
    head, gaze = head_and_gaze(pros, seed=0)      # (T, 3) and (T, 2) radians
    head, gaze = add_posture(head, gaze, posture)  # the emotion's bowed or lifted head, (T, 5) degrees
    posed = rotate_head(vertices, head, head_pivot(template))

What drives what (see HeadMotionConfig for the amplitudes):

* Slow drift: low-pass noise (below ~0.5 Hz) on pitch, yaw and roll, as in every recording of
  a speaker; stronger while speaking, smaller in pauses (the head settles).
* Prosody: head motion follows F0 and energy (Yehia, Kuratate & Vatikiotis-Bateson 2002; Busso
  et al. 2007; Munhall et al. 2004). The head rises a little with pitch (a smoothed F0 contour in
  semitones), and makes a small nod (a beat, Hadar et al. 1983) at each prominent syllable
  (energy peaks, weighted up when the pitch is high) and at the end of each phrase (before a
  pause). Beats carry a random small share of yaw and roll so that they do not all look alike.
* Pauses: everything is scaled by speech activity (smoothed over `settle_seconds`), so that in a
  long pause the head comes to rest near its neutral pose and stays there.
* Gaze: fixations of 0.3-1.5 s (gamma distributed; shorter while speaking: ~2.5 saccades/s, about
  one per second at rest), mostly on the listener (the camera) with small re-fixations over their
  face, and aversions of several degrees while speaking (Argyle & Cook 1976; Kendon 1967).
  Saccades follow the main sequence: 21 + 2.2 ms per degree (Carpenter 1988), 30-60 ms here, with
  a minimum-jerk profile. The head takes a share of each aversion, 100 ms after the eyes
  (eye-head coordination); the eyes counter-rotate the head's motion to keep their target
  (the vestibulo-ocular reflex), so `gaze` is the eyes' rotation in the head.

Conventions (the rig's axes: +x the face's left, +y up, +z out of the face; angles in radians):
head_rotation (T, 3) = [pitch (+ nods down, chin toward the chest), yaw (+ turns toward the face's
left, +x), roll (+ tilts toward the face's left)], applied as R = R_yaw @ R_pitch @ R_roll about a
pivot in the upper neck. gaze (T, 2) = [yaw (+ toward the face's left), pitch (+ up)] of both eyes
in the head; (0, 0) looks down +z.

Everything is pure numpy, deterministic for a seed, and about a few ms for 10 s of audio: F0 comes
from a normalised autocorrelation per 10 ms hop (one batched FFT), not a probabilistic tracker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..constants import FPS, SAMPLE_RATE

HOP_SECONDS = 0.010  # s between prosody analysis frames
PITCH_WINDOW = 512  # samples, 32 ms: over two periods of the lowest F0 below
F0_MIN = 70.0  # Hz, the lowest speaking F0 (a low male voice)
F0_MAX = 400.0  # Hz, the highest (a child's or an excited voice)
OCTAVE_TOLERANCE = 0.9  # a shorter-lag peak this close to the best one is the true period
VOICING_THRESHOLD = 0.45  # normalised autocorrelation peak above which a hop counts as voiced
MAX_SEMITONES = 9.0  # F0 this far from the clip's median is an octave error, not intonation
SPEECH_RANGE_DB = 30.0  # dB below the clip's loud level (95th percentile) that still counts as speech
SILENCE_FLOOR_DBFS = -55.0  # dBFS: quieter hops are never speech, however quiet the clip
MIN_PAUSE_SECONDS = 0.25  # s: shorter gaps (stop closures, breaths between words) do not end a phrase
BEAT_SPACING_SECONDS = 0.35  # s: at most about three stressed syllables per second get a beat
PIVOT_HEIGHT = 0.12  # share of the head's height above its lowest point: the upper neck (C1-C2), below the jaw line
PIVOT_DEPTH = 0.30  # share of the head's depth from its back: the spine is behind the jaw
MAX_SEED = 2**32 - 1  # seeds are unsigned 32-bit integers


@dataclass(frozen=True)
class HeadMotionConfig:
    """How much and how the head and eyes move. Angles in degrees, times in seconds.

    Bounds are checked (one ValueError line): the max_* angles in (0, 15] (head) and (0, 30]
    (eyes), shares and probabilities in [0, 1], times positive with min <= max.
    """

    # Hard bounds (soft-limited with tanh, so the curves stay smooth): recorded conversational
    # head motion rarely leaves +-5 deg in pitch/yaw and +-3 deg in roll while seated.
    max_pitch_deg: float = 4.0  # nods
    max_yaw_deg: float = 5.0  # turns
    max_roll_deg: float = 2.5  # tilts
    # Slow drift, standard deviation while speaking, per axis (pitch, yaw, roll).
    drift_deg: tuple[float, float, float] = (1.2, 1.8, 0.8)
    drift_cutoff_hz: float = 0.4  # drift lives below this (~0.2-0.5 Hz sway)
    rest_share: float = 0.3  # share of the drift left in pauses: breathing-level sway, not a statue
    settle_seconds: float = 0.5  # s for the head to settle after speech stops (and to wake before it)
    pitch_follow_deg: float = 0.8  # head rises this much per standard deviation of F0 (in semitones)
    beat_deg: float = 1.6  # nod at the most prominent syllable; weaker syllables nod less
    beat_seconds: float = 0.45  # duration of one nod, down and back
    beat_threshold: float = 0.35  # prominence in [0, 1] a syllable needs to get a beat
    # Gaze.
    max_gaze_deg: float = 15.0  # eye-in-head bound: larger shifts are made with the head
    fixation_speech_s: float = 0.4  # mean fixation while speaking: ~2.5 saccades per second
    fixation_rest_s: float = 0.9  # mean fixation in pauses: fewer saccades
    fixation_min_s: float = 0.3  # s, shortest fixation
    fixation_max_s: float = 1.5  # s, longest fixation
    face_scan_deg: float = 1.2  # spread of re-fixations over the listener's face (eyes, mouth)
    aversion_speech: float = 0.3  # chance a fixation while speaking looks away from the listener
    aversion_rest: float = 0.1  # ... and in a pause, where the speaker mostly looks at the listener
    aversion_min_deg: float = 4.0  # size of a look away
    aversion_max_deg: float = 10.0
    head_follow: float = 0.3  # share of a look away that the head takes (eye-head coordination)
    head_lag_seconds: float = 0.1  # s the head starts after the eyes

    def __post_init__(self):
        for name, hi in (("max_pitch_deg", 15.0), ("max_yaw_deg", 15.0), ("max_roll_deg", 15.0), ("max_gaze_deg", 30.0)):
            _check_range(self, name, 0.0, hi, low_open=True)
        if not (isinstance(self.drift_deg, (tuple, list)) and len(self.drift_deg) == 3
                and all(_is_number(d) and 0 <= d <= 10 for d in self.drift_deg)):
            raise ValueError(f"drift_deg must be three numbers in [0, 10] deg (pitch, yaw, roll), got {self.drift_deg!r}")
        for name in ("rest_share", "beat_threshold", "aversion_speech", "aversion_rest", "head_follow"):
            _check_range(self, name, 0.0, 1.0)
        for name, hi in (("pitch_follow_deg", 5.0), ("beat_deg", 5.0), ("face_scan_deg", 5.0), ("aversion_min_deg", 30.0),
                         ("aversion_max_deg", 30.0), ("head_lag_seconds", 1.0)):
            _check_range(self, name, 0.0, hi)
        for name in ("drift_cutoff_hz", "settle_seconds", "beat_seconds", "fixation_speech_s", "fixation_rest_s",
                     "fixation_min_s", "fixation_max_s"):
            _check_range(self, name, 0.0, 10.0, low_open=True)
        if self.fixation_min_s > self.fixation_max_s or self.aversion_min_deg > self.aversion_max_deg:
            raise ValueError("fixation_min_s must be <= fixation_max_s and aversion_min_deg <= aversion_max_deg")

    @property
    def max_angles(self) -> np.ndarray:
        """(3,) radians: the largest |pitch|, |yaw|, |roll| the head can reach."""
        return np.radians([self.max_pitch_deg, self.max_yaw_deg, self.max_roll_deg])


def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number)) and math.isfinite(x)


def _check_range(config, name: str, lo: float, hi: float, low_open: bool = False) -> None:
    value = getattr(config, name)
    if not (_is_number(value) and (value > lo if low_open else value >= lo) and value <= hi):
        raise ValueError(f"HeadMotionConfig.{name} must be a number in {'(' if low_open else '['}{lo:g}, {hi:g}], got {value!r}")


def check_seed(seed) -> int:
    """A seed as an int in [0, MAX_SEED]; anything else raises one ValueError line."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


def check_switch(value, name: str = "head_motion") -> bool:
    """An on/off switch must be a real bool (not 'false', not 0): raises one ValueError line."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


# ---------------------------------------------------------------------------------------------
# Prosody


class Prosody(NamedTuple):
    """Speech features on the motion frames, each (T,): energy_db (dBFS), semitones (F0 relative to
    the clip's median voiced F0; 0 where unvoiced), voiced (0/1), activity (speech presence
    smoothed to [0, 1]), prominence (stress in [0, 1], peaks at prominent syllables), and fps."""

    energy_db: np.ndarray
    semitones: np.ndarray
    voiced: np.ndarray
    activity: np.ndarray
    prominence: np.ndarray
    fps: float = FPS


def prosody(audio: np.ndarray, num_frames: int, fps: float = FPS, sample_rate: int = SAMPLE_RATE,
            settle_seconds: float = HeadMotionConfig.settle_seconds) -> Prosody:
    """Audio (S,) float in [-1, 1] -> Prosody on T = `num_frames` frames at `fps`.

    F0: the normalised autocorrelation of a Hann-windowed 32 ms frame every 10 ms (one batched
    FFT); a hop is voiced where its peak in [1/F0_MAX, 1/F0_MIN] exceeds VOICING_THRESHOLD and it
    is speech. Speech: hops within SPEECH_RANGE_DB of the clip's loud level, gaps shorter than
    MIN_PAUSE_SECONDS closed.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"audio must be finite samples of shape (S,) with S > 0, got shape {x.shape}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    hop = int(round(HOP_SECONDS * sample_rate))
    n_hops = -(-len(x) // hop)
    padded = np.pad(x, (PITCH_WINDOW // 2, PITCH_WINDOW + n_hops * hop - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, PITCH_WINDOW)[::hop][:n_hops]  # (H, W)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)  # (H,) dBFS
    centred = (frames - frames.mean(1, keepdims=True)) * np.hanning(PITCH_WINDOW)
    spec = np.fft.rfft(centred, 2 * PITCH_WINDOW)  # zero-padded: a linear, not circular, autocorrelation
    ac = np.fft.irfft(spec.real**2 + spec.imag**2)[:, :PITCH_WINDOW]  # (H, W)
    lag_lo, lag_hi = int(sample_rate / F0_MAX), min(int(math.ceil(sample_rate / F0_MIN)), PITCH_WINDOW - 1)
    window_ac = np.correlate(np.hanning(PITCH_WINDOW), np.hanning(PITCH_WINDOW), "full")[PITCH_WINDOW - 1:]
    norm = ac[:, lag_lo:lag_hi] / window_ac[lag_lo:lag_hi] / np.maximum(ac[:, :1] / window_ac[0], 1e-12)  # (H, L)
    # The shortest lag within OCTAVE_TOLERANCE of the best peak: multiples of the period score
    # almost as high, and picking them would halve F0.
    top = norm.max(1, keepdims=True)
    best = np.argmax(norm >= OCTAVE_TOLERANCE * top, axis=1)
    while True:  # climb to the local maximum of that peak
        step = (best + 1 < norm.shape[1]) & (norm[np.arange(n_hops), np.minimum(best + 1, norm.shape[1] - 1)] > norm[np.arange(n_hops), best])
        if not step.any():
            break
        best = best + step
    peak = norm[np.arange(n_hops), best]
    f0 = sample_rate / (best + lag_lo)  # (H,) Hz

    loud = np.percentile(energy, 95)
    speech = energy > max(loud - SPEECH_RANGE_DB, SILENCE_FLOOR_DBFS)
    speech = _close_gaps(speech, int(MIN_PAUSE_SECONDS / HOP_SECONDS))
    voiced = (peak > VOICING_THRESHOLD) & speech
    semis = np.zeros(n_hops)
    if voiced.any():
        semis[voiced] = 12 * np.log2(f0[voiced] / np.median(f0[voiced]))
        # Autocorrelation picks a multiple or a half of the period now and then (octave errors):
        # such hops are dropped rather than allowed to jerk the head.
        voiced &= np.abs(semis) < MAX_SEMITONES
        semis[~voiced] = 0.0

    # Hops -> motion frames: each frame averages the hops that start inside it.
    hop_frame = np.minimum((np.arange(n_hops) * HOP_SECONDS * fps).astype(np.int64), num_frames - 1)
    counts = np.maximum(np.bincount(hop_frame, minlength=num_frames), 1)

    def pool(values):
        return np.bincount(hop_frame, weights=values, minlength=num_frames) / counts

    energy_f = pool(energy)
    voiced_f = pool(voiced.astype(float))
    semis_f = pool(semis) / np.maximum(voiced_f, 1e-9) * (voiced_f > 0)
    speech_f = pool(speech.astype(float)) > 0.5
    activity = np.clip(_gaussian(speech_f.astype(float), settle_seconds / 2 * fps), 0, 1)
    # Prominence: energy above the speech level plus a bonus for high pitch, on syllable-scale smoothing.
    level = (_gaussian(energy_f, 0.04 * fps) - (loud - 15.0)) / 15.0
    pitch_up = np.maximum(_gaussian(semis_f, 0.04 * fps), 0) / 6.0
    prominence = np.clip(level + pitch_up, 0, 1) * speech_f
    return Prosody(energy_f, semis_f, (voiced_f > 0.5).astype(float), activity, prominence, float(fps))


def _close_gaps(mask: np.ndarray, width: int) -> np.ndarray:
    """Boolean (N,) with runs of False shorter than `width` inside True filled (a morphological closing)."""
    if width < 1 or not mask.any():
        return mask
    kernel = np.ones(2 * (width // 2) + 1)
    grown = np.convolve(mask.astype(float), kernel, "same") > 0
    return ~(np.convolve((~grown).astype(float), kernel, "same") > 0)


def _gaussian(x: np.ndarray, sigma: float, axis: int = 0) -> np.ndarray:
    """Gaussian smoothing of `x` along `axis` (sigma in samples), edges held: a C-infinity low-pass."""
    if sigma <= 0:
        return np.asarray(x, dtype=float)
    radius = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.moveaxis(np.asarray(x, dtype=float), axis, 0)
    padded = np.pad(x, [(radius, radius)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    out = np.apply_along_axis(lambda c: np.convolve(c, k, "valid"), 0, padded)
    return np.moveaxis(out, 0, axis)


# ---------------------------------------------------------------------------------------------
# Head and gaze


def head_and_gaze(pros: Prosody, seed: int = 0, config: HeadMotionConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prosody on T frames -> head_rotation (T, 3) [pitch, yaw, roll] and gaze (T, 2) [yaw, pitch], radians.

    Deterministic for `seed`; |head| < config.max_*_deg and |gaze| < config.max_gaze_deg per axis.
    """
    config = config or HeadMotionConfig()
    seed = check_seed(seed)
    rng_head, rng_gaze = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    world_gaze = _world_gaze(pros, rng_gaze, config)  # (T, 2) deg, where the eyes look (0 = the listener)
    head = _head_deg(pros, rng_head, config, world_gaze)  # (T, 3) deg
    # Vestibulo-ocular reflex: the eyes keep their target however the head moves. Eye pitch (+ up)
    # rises when the head nods down (+ pitch); eye yaw goes against head yaw.
    eyes = np.stack([world_gaze[:, 0] - head[:, 1], world_gaze[:, 1] + head[:, 0]], -1)
    eyes = config.max_gaze_deg * np.tanh(eyes / config.max_gaze_deg)
    return np.radians(head).astype(np.float32), np.radians(eyes).astype(np.float32)


def speech_head_motion(audio: np.ndarray, num_frames: int, seed: int = 0, config: HeadMotionConfig | None = None,
                       fps: float = FPS, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Audio (S,) at `sample_rate` -> head_rotation (T, 3) and gaze (T, 2) radians for T = num_frames."""
    config = config or HeadMotionConfig()
    return head_and_gaze(prosody(audio, num_frames, fps, sample_rate, config.settle_seconds), seed, config)


def add_posture(head: np.ndarray, gaze: np.ndarray, posture: np.ndarray,
                config: HeadMotionConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The emotion's posture on top of the speech's motion: head (T, 3) and gaze (T, 2) radians plus
    posture (T, 5) degrees [head pitch, yaw, roll, gaze yaw, gaze pitch] (`emotions.EMOTION_POSTURE`)
    -> (head, gaze) float32 radians. The posture's gaze is where the eyes look, so the eyes also turn
    against the posture's head turn; they stay within config.max_gaze_deg. A zero posture returns
    the motion unchanged (neutral is byte-identical to the motion alone)."""
    posture = np.asarray(posture, np.float64)
    if posture.shape != (len(head), 5) or gaze.shape != (len(head), 2):
        raise ValueError(f"posture must be (T, 5) and gaze (T, 2) for head (T, 3), got {posture.shape}, {gaze.shape}, {head.shape}")
    if not posture.any():
        return head, gaze
    config = config or HeadMotionConfig()
    head = np.degrees(head.astype(np.float64)) + posture[:, :3]
    # Eye pitch (+ up) rises as the head bows (+ pitch); eye yaw goes against the head's yaw.
    eyes = np.degrees(gaze.astype(np.float64)) + np.stack([posture[:, 3] - posture[:, 1], posture[:, 4] + posture[:, 0]], -1)
    eyes = config.max_gaze_deg * np.tanh(eyes / config.max_gaze_deg)
    return np.radians(head).astype(np.float32), np.radians(eyes).astype(np.float32)


def _head_deg(pros: Prosody, rng: np.random.Generator, cfg: HeadMotionConfig, world_gaze: np.ndarray) -> np.ndarray:
    """Head angles (T, 3) in degrees: drift + pitch following + beats + gaze following, soft-bounded."""
    fps, n = pros.fps, len(pros.activity)
    gain = cfg.rest_share + (1 - cfg.rest_share) * pros.activity  # (T,)
    # Gaussian low-pass of white noise, sigma = 1 / (2 pi f_c) s; rescaled to unit std.
    drift = _gaussian(rng.standard_normal((n + int(4 * fps), 3)), fps / (2 * np.pi * cfg.drift_cutoff_hz))[: n]
    drift /= max(float(drift.std()), 1e-9)  # one scale for all axes keeps their ratio set by drift_deg
    head = drift * np.asarray(cfg.drift_deg) * gain[:, None]

    contour = _gaussian(pros.semitones, 0.15 * fps)
    spread = float(np.std(pros.semitones[pros.voiced > 0])) if (pros.voiced > 0).sum() > 2 else 0.0
    if spread > 1e-6:
        head[:, 0] -= cfg.pitch_follow_deg * contour / spread * pros.activity  # higher pitch, head up (- pitch)

    impulses = np.zeros((n, 3))
    for frame, strength in _beats(pros, cfg):
        side = rng.uniform(-0.4, 0.4, 2)  # a nod with a little turn and tilt
        impulses[frame] += strength * cfg.beat_deg * np.array([1.0, side[0], side[1]])
    width = max(2, int(round(cfg.beat_seconds * fps)))
    bump = np.sin(np.pi * np.arange(width + 1) / width) ** 2  # zero value and slope at both ends: C1 nods
    head += np.stack([np.convolve(impulses[:, a], bump)[:n] for a in range(3)], -1)

    # The head takes a share of large gaze shifts, after the eyes. Gaze pitch + up is head pitch -.
    follow = np.zeros((n, 3))
    follow[:, 1] = world_gaze[:, 0]
    follow[:, 0] = -world_gaze[:, 1]
    follow = _gaussian(follow * cfg.head_follow, 0.12 * fps)
    lag = int(round(cfg.head_lag_seconds * fps))
    follow = np.concatenate([np.repeat(follow[:1], lag, 0), follow])[:n]
    head += follow
    bound = np.array([cfg.max_pitch_deg, cfg.max_yaw_deg, cfg.max_roll_deg])
    return bound * np.tanh(head / bound)


def _beats(pros: Prosody, cfg: HeadMotionConfig) -> list[tuple[int, float]]:
    """(frame, strength in [0, 1]) of nods: prominent syllables (local peaks of prominence, at
    least BEAT_SPACING_SECONDS apart, strongest first) and phrase ends (the last speech frame before a pause)."""
    fps, p = pros.fps, pros.prominence
    n = len(p)
    peaks = np.flatnonzero((p[1:-1] >= p[:-2]) & (p[1:-1] > p[2:]) & (p[1:-1] >= cfg.beat_threshold)) + 1
    spacing = BEAT_SPACING_SECONDS * fps
    chosen: list[int] = []
    for i in peaks[np.argsort(-p[peaks], kind="stable")]:
        if all(abs(i - j) >= spacing for j in chosen):
            chosen.append(int(i))
    beats = [(i, float(p[i])) for i in chosen]
    speaking = pros.activity > 0.5
    ends = np.flatnonzero(speaking[:-1] & ~speaking[1:])
    beats += [(max(int(e - 0.15 * fps), 0), 0.7) for e in ends if e + 1 < n]
    return beats


def _world_gaze(pros: Prosody, rng: np.random.Generator, cfg: HeadMotionConfig) -> np.ndarray:
    """Where the eyes look (T, 2) [yaw, pitch] in degrees, 0 = the listener: fixations joined by saccades."""
    fps, n = pros.fps, len(pros.activity)
    duration = n / fps
    starts, targets = [0.0], [np.zeros(2)]
    t, averted = 0.0, False
    while True:
        speaking = pros.activity[min(int(t * fps), n - 1)] > 0.5
        mean = cfg.fixation_speech_s if speaking else cfg.fixation_rest_s
        t += float(np.clip(rng.gamma(4.0, mean / 4.0), cfg.fixation_min_s, cfg.fixation_max_s))
        if t >= duration:
            break
        look_away = not averted and rng.random() < (cfg.aversion_speech if speaking else cfg.aversion_rest)
        if look_away:  # mostly sideways and up: the common directions of thinking gaze
            angle = rng.uniform(-0.35 * np.pi, 1.35 * np.pi)
            size = rng.uniform(cfg.aversion_min_deg, cfg.aversion_max_deg)
            target = size * np.array([np.cos(angle), 0.6 * np.sin(angle)])
        else:  # back to the listener, a re-fixation somewhere on their face
            target = np.clip(rng.normal(0.0, cfg.face_scan_deg, 2), -2.5 * cfg.face_scan_deg, 2.5 * cfg.face_scan_deg)
        averted = look_away
        starts.append(t)
        targets.append(target)
    starts, targets = np.asarray(starts), np.asarray(targets)  # (K,), (K, 2)
    steps = np.diff(targets, axis=0)  # (K-1, 2)
    amplitude = np.linalg.norm(steps, axis=1)
    length = np.clip(0.021 + 0.0022 * amplitude, 0.03, 0.06)  # s: the main sequence
    time = (np.arange(n) + 0.5) / fps  # (T,) frame centres
    s = np.clip((time[:, None] - starts[None, 1:]) / length[None], 0, 1)  # (T, K-1)
    profile = s**3 * (10 - 15 * s + 6 * s**2)  # minimum jerk
    return targets[0] + profile @ steps


# ---------------------------------------------------------------------------------------------
# Geometry


def head_pivot(template) -> np.ndarray:
    """The point (3,) the head turns about: the upper neck, centred left-right, PIVOT_HEIGHT of the
    head's height above its lowest point and PIVOT_DEPTH of its depth from the back. template: (V, 3)."""
    v = np.asarray(template, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"template must have shape (V, 3), got {v.shape}")
    lo, hi = v.min(0), v.max(0)
    return np.array([(lo[0] + hi[0]) / 2, lo[1] + PIVOT_HEIGHT * (hi[1] - lo[1]), lo[2] + PIVOT_DEPTH * (hi[2] - lo[2])])


def rotation_matrix(rotation):
    """Head angles (..., 3) [pitch, yaw, roll] radians -> rotation matrices (..., 3, 3), numpy or torch.

    R = R_yaw @ R_pitch @ R_roll with pitch about +x (+ moves the chin down and back), yaw about +y
    (+ turns the nose toward +x) and roll about -z (+ tilts the top of the head toward +x).
    """
    xp = _namespace(rotation)
    if rotation.shape[-1:] != (3,):
        raise ValueError(f"rotation must have shape (..., 3) [pitch, yaw, roll], got {tuple(rotation.shape)}")
    cp, sp = xp.cos(rotation[..., 0]), xp.sin(rotation[..., 0])
    cy, sy = xp.cos(rotation[..., 1]), xp.sin(rotation[..., 1])
    cr, sr = xp.cos(rotation[..., 2]), xp.sin(rotation[..., 2])
    one, zero = xp.ones_like(cp), xp.zeros_like(cp)

    def matrix(*rows):
        return xp.stack([xp.stack(r, -1) for r in rows], -2)

    pitch = matrix((one, zero, zero), (zero, cp, -sp), (zero, sp, cp))
    yaw = matrix((cy, zero, sy), (zero, one, zero), (-sy, zero, cy))
    roll = matrix((cr, sr, zero), (-sr, cr, zero), (zero, zero, one))
    return yaw @ pitch @ roll


def rotate_head(vertices, rotation, pivot):
    """Vertices (..., N, 3) turned by head angles (..., 3) [pitch, yaw, roll] radians about pivot (3,).

    numpy or torch (all three of the same kind); the leading dimensions broadcast. A rigid motion:
    distances between vertices are kept and the pivot stays where it is.
    """
    xp = _namespace(vertices)
    if vertices.shape[-1:] != (3,) or vertices.ndim < 2:
        raise ValueError(f"vertices must have shape (..., N, 3), got {tuple(vertices.shape)}")
    if tuple(pivot.shape) != (3,):
        raise ValueError(f"pivot must have shape (3,), got {tuple(pivot.shape)}")
    rot = rotation_matrix(rotation)  # (..., 3, 3)
    local = vertices - pivot  # (..., N, 3)
    return xp.einsum("...ij,...nj->...ni", rot, local) + pivot


def _namespace(x):
    if hasattr(x, "detach"):
        import torch

        return torch
    return np
