"""Procedural speech animation: phones -> visemes -> coarticulated ARKit weight curves on the rig.

A phone segment maps to a viseme (a mouth shape, `PHONE_TO_VISEME`) whose target is a set of ARKit
weights (`VISEME_TARGETS`). Coarticulation follows Cohen & Massaro (1993): each segment's
dominance peaks over the middle of the segment and decays exponentially away from it, faster after
the segment (carry-over) than before it (anticipation); the weight at time t is the
dominance-weighted average of all targets. Lip closure is then enforced exactly: on every frame
inside a /p b m/ segment, and in silence once the mouth has had time to settle, the lip-opening
units are scaled down (and mouthClose raised to cancel jawOpen) until every lip-seam pair of the
rig is closed, with a short raised-cosine ramp so the curves stay smooth.

Frame f is sampled at time f / fps seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..constants import FPS
from .phones import ARPABET, BILABIAL_IDS, BILABIALS, Phone
from ..face.rig import FaceRig

VISEMES = ("sil", "PP", "FF", "TH", "DD", "KK", "CH", "SS", "RR", "aa", "E", "I", "O", "U")

# Every ARPABET symbol -> viseme. Diphthongs glide to a second viseme (DIPHTHONG_GLIDES).
PHONE_TO_VISEME = {
    "sil": "sil",
    "p": "PP", "b": "PP", "m": "PP",                          # lips closed
    "f": "FF", "v": "FF",                                     # lower lip to upper teeth
    "th": "TH", "dh": "TH",                                   # tongue between the teeth
    "t": "DD", "d": "DD", "n": "DD", "l": "DD",               # tongue tip on the ridge, jaw nearly closed
    "k": "KK", "g": "KK", "ng": "KK", "hh": "KK",             # back of the tongue; hh just lets the jaw drift
    "ch": "CH", "jh": "CH", "sh": "CH", "zh": "CH",           # protruded, squared lips
    "s": "SS", "z": "SS",                                     # teeth together, lips spread
    "r": "RR", "er": "RR",                                    # slightly rounded
    "aa": "aa", "ae": "aa", "ah": "aa", "ay": "aa", "aw": "aa",  # open jaw
    "eh": "E", "ey": "E",                                     # mid-open, spread
    "ih": "I", "iy": "I", "y": "I",                           # close, spread
    "ao": "O", "ow": "O", "oy": "O",                          # mid-open, rounded
    "uh": "U", "uw": "U", "w": "U",                           # close, rounded
}
DIPHTHONG_GLIDES = {"ay": "I", "aw": "U", "ey": "I", "oy": "I", "ow": "U"}
GLIDE_START = 0.6  # fraction of a diphthong spent on its first viseme

# Per-viseme target ARKit weights on the default rig (lip gap per unit, measured at the lip seam:
# jawOpen +27 mm, mouthClose -27 mm, mouthFunnel +5 mm, mouthUpperUp +2.5 mm and
# mouthLowerDown +2 mm per side, mouthRollLower -2.3 mm). "Left"/"Right" pairs are symmetric here.
VISEME_TARGETS: dict[str, dict[str, float]] = {
    "sil": {},
    "PP": {"jawOpen": 0.04, "mouthClose": 0.04, "mouthPressLeft": 0.3, "mouthPressRight": 0.3,
           "mouthRollLower": 0.15, "mouthRollUpper": 0.1},
    "FF": {"jawOpen": 0.06, "mouthRollLower": 0.6, "mouthUpperUpLeft": 0.15, "mouthUpperUpRight": 0.15,
           "mouthShrugUpper": 0.1},
    "TH": {"jawOpen": 0.12, "mouthStretchLeft": 0.1, "mouthStretchRight": 0.1,
           "mouthUpperUpLeft": 0.1, "mouthUpperUpRight": 0.1},
    "DD": {"jawOpen": 0.14, "mouthStretchLeft": 0.12, "mouthStretchRight": 0.12},
    "KK": {"jawOpen": 0.2, "mouthStretchLeft": 0.1, "mouthStretchRight": 0.1},
    "CH": {"jawOpen": 0.1, "mouthFunnel": 0.45, "mouthPucker": 0.25,
           "mouthUpperUpLeft": 0.15, "mouthUpperUpRight": 0.15},
    "SS": {"jawOpen": 0.05, "mouthStretchLeft": 0.35, "mouthStretchRight": 0.35,
           "mouthSmileLeft": 0.1, "mouthSmileRight": 0.1, "mouthUpperUpLeft": 0.1, "mouthUpperUpRight": 0.1},
    "RR": {"jawOpen": 0.12, "mouthPucker": 0.35, "mouthFunnel": 0.25},
    "aa": {"jawOpen": 0.6, "mouthLowerDownLeft": 0.2, "mouthLowerDownRight": 0.2,
           "mouthStretchLeft": 0.1, "mouthStretchRight": 0.1},
    "E": {"jawOpen": 0.3, "mouthStretchLeft": 0.35, "mouthStretchRight": 0.35,
          "mouthSmileLeft": 0.1, "mouthSmileRight": 0.1, "mouthUpperUpLeft": 0.1, "mouthUpperUpRight": 0.1},
    "I": {"jawOpen": 0.16, "mouthStretchLeft": 0.45, "mouthStretchRight": 0.45,
          "mouthSmileLeft": 0.2, "mouthSmileRight": 0.2, "mouthUpperUpLeft": 0.15, "mouthUpperUpRight": 0.15},
    "O": {"jawOpen": 0.4, "mouthFunnel": 0.55, "mouthPucker": 0.2},
    "U": {"jawOpen": 0.12, "mouthPucker": 0.65, "mouthFunnel": 0.35},
}

# Dominance magnitude per viseme: bilabials and f/v must win over their neighbours (closure is
# visible and is reached even in fast speech); tongue consonants barely constrain the lips, so
# they take the shape of the surrounding vowels; rounding spreads far (anticipatory rounding).
VISEME_DOMINANCE = {
    "sil": 1.0, "PP": 3.0, "FF": 2.0, "TH": 0.8, "DD": 0.5, "KK": 0.5, "CH": 1.5, "SS": 1.2,
    "RR": 1.2, "aa": 1.0, "E": 0.9, "I": 0.9, "O": 1.3, "U": 1.5,
}
PHONE_DOMINANCE = {"hh": 0.2, "ah": 0.6}  # per-phone overrides: glottal hh and schwa are weak
# Decay-rate multipliers: a lip closure is strong but brief (it must not flatten the next vowel);
# rounding spreads far, anticipating the rounded vowel by a syllable.
VISEME_DECAY = {"PP": 1.5, "FF": 1.3, "CH": 0.7, "RR": 0.7, "O": 0.6, "U": 0.6}

JAW_UNITS = ("jawOpen", "mouthClose")  # scaled together so closures stay closed
ROUNDING_UNITS = ("mouthPucker", "mouthFunnel")
CHUNK_FRAMES = 1024  # frames coarticulated at once (bounds memory on long inputs)
DOMINANCE_REACH = 3.0  # s; beyond this a dominance is below exp(-0.6 * 20 * 3) ~ 2e-16 of its peak
STRETCH_UNITS = ("mouthStretchLeft", "mouthStretchRight", "mouthSmileLeft", "mouthSmileRight")


@dataclass(frozen=True)
class CoarticulationConfig:
    """Dominance-function coarticulation and closure enforcement."""

    theta_anticipation: float = 20.0  # 1/s, decay of a dominance before its segment (~50 ms reach)
    theta_carryover: float = 28.0  # 1/s, decay after the segment: carry-over is shorter than anticipation
    exponent: float = 1.0  # c in exp(-theta |tau|^c); 1 is Cohen-Massaro's usual choice
    plateau: float = 0.5  # fraction of the half-duration held at full dominance (long vowels hold their shape)
    rest_dominance: float = 1e-3  # a faint silence everywhere so frames far from any phone rest closed
    closure_ramp: float = 0.05  # s, raised-cosine ramp of enforced closure around a /p b m/ segment
    silence_settle: float = 0.12  # s, after this long away from speech the mouth is fully closed
    closure_margin: float = 0.0  # m, largest allowed lip-seam gap on enforced frames (0 = touching)


@dataclass(frozen=True)
class SpeakerStyle:
    """Per-speaker articulation style for synthetic speakers (all gains multiply viseme targets)."""

    amplitude: float = 1.0  # overall articulation size
    jaw: float = 1.0  # jaw use (jawOpen, and mouthClose with it)
    rounding: float = 1.0  # lip rounding (mouthPucker, mouthFunnel)
    stretch: float = 1.0  # lip spreading (mouthStretch*, mouthSmile*)
    timing_offset: float = 0.0  # s added to phone times; negative = mouth leads the audio
    smoothing: float = 0.0  # Gaussian sigma in frames applied before closure (sluggish articulators)
    asymmetry: float = 0.0  # left units x (1 + a), right units x (1 - a)

    def __post_init__(self):
        for name in ("amplitude", "jaw", "rounding", "stretch", "smoothing"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 5.0):
                raise ValueError(f"SpeakerStyle.{name} must be finite in [0, 5], got {value}")
        if not (math.isfinite(self.timing_offset) and abs(self.timing_offset) <= 0.2):
            raise ValueError(f"SpeakerStyle.timing_offset must be within +-0.2 s, got {self.timing_offset}")
        if not (math.isfinite(self.asymmetry) and abs(self.asymmetry) < 1.0):
            raise ValueError(f"SpeakerStyle.asymmetry must be in (-1, 1), got {self.asymmetry}")

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "SpeakerStyle":
        """A plausible random speaker: gains around 1, lead of 0-40 ms, mild asymmetry."""
        return cls(
            amplitude=float(rng.uniform(0.8, 1.2)),
            jaw=float(rng.uniform(0.8, 1.25)),
            rounding=float(rng.uniform(0.7, 1.3)),
            stretch=float(rng.uniform(0.7, 1.3)),
            timing_offset=float(rng.uniform(-0.04, 0.0)),
            smoothing=float(rng.uniform(0.0, 1.0)),
            asymmetry=float(rng.uniform(-0.15, 0.15)),
        )

    @classmethod
    def random(cls, seed: int) -> "SpeakerStyle":
        """`sample` from a seeded generator."""
        return cls.sample(np.random.default_rng(seed))


def viseme_of(symbol: str) -> str:
    """Viseme class of an ARPAbet phone; unknown symbols raise a ValueError listing valid ones."""
    if symbol not in PHONE_TO_VISEME:
        raise ValueError(f"unknown phone {symbol!r}; valid ARPAbet symbols: {', '.join(ARPABET)}")
    return PHONE_TO_VISEME[symbol]


def viseme_targets(rig: FaceRig, style: SpeakerStyle | None = None) -> np.ndarray:
    """Target weights of every viseme on `rig`, styled: (len(VISEMES), K) float32 in [0, 1]."""
    style = style or SpeakerStyle()
    targets = np.stack([rig.weights(VISEME_TARGETS[v]) for v in VISEMES])  # (14, K)
    gain = np.full(rig.num_blendshapes, style.amplitude, dtype=np.float32)
    for names, g in ((JAW_UNITS, style.jaw), (ROUNDING_UNITS, style.rounding), (STRETCH_UNITS, style.stretch)):
        for name in names:
            gain[rig.index(name)] *= g
    for k, name in enumerate(rig.blendshape_names):
        if name.endswith("Left"):
            gain[k] *= 1.0 + style.asymmetry
        elif name.endswith("Right"):
            gain[k] *= 1.0 - style.asymmetry
    return np.clip(targets * gain, 0.0, 1.0).astype(np.float32)


def check_phones(phones: Sequence[Phone]) -> None:
    """Raise a ValueError unless phones are known, finite, non-negative, of positive length, in order."""
    prev_start = -math.inf
    for i, p in enumerate(phones):
        viseme_of(p.symbol)
        if not (math.isfinite(p.start) and math.isfinite(p.end) and 0.0 <= p.start < p.end):
            raise ValueError(f"phone {i} {p}: need finite times with 0 <= start < end (seconds)")
        if p.start < prev_start:
            raise ValueError(f"phone {i} {p} starts before phone {i - 1}; phones must be sorted by start")
        prev_start = p.start


def _keys(phones: Sequence[Phone], offset: float) -> tuple[np.ndarray, ...]:
    """Coarticulation keys (one per phone, two per diphthong): centres, half-durations, viseme ids,
    dominance magnitudes and decay multipliers, each (N,)."""
    centres, halves, ids, alpha = [], [], [], []
    for p in phones:
        start, dur = p.start + offset, p.end - p.start
        parts = [(viseme_of(p.symbol), 0.0, 1.0)]
        if p.symbol in DIPHTHONG_GLIDES:
            parts = [(parts[0][0], 0.0, GLIDE_START), (DIPHTHONG_GLIDES[p.symbol], GLIDE_START, 1.0)]
        for vis, a, b in parts:
            centres.append(start + dur * (a + b) / 2)
            halves.append(dur * (b - a) / 2)
            ids.append(VISEMES.index(vis))
            alpha.append(PHONE_DOMINANCE.get(p.symbol, VISEME_DOMINANCE[vis]))
    decay = [VISEME_DECAY.get(VISEMES[i], 1.0) for i in ids]
    return (np.asarray(centres, dtype=np.float64), np.asarray(halves, dtype=np.float64),
            np.asarray(ids, dtype=np.int64), np.asarray(alpha, dtype=np.float64), np.asarray(decay, dtype=np.float64))


def _dominance_at(times: np.ndarray, keys: tuple[np.ndarray, ...], config: CoarticulationConfig) -> np.ndarray:
    """(T,) times x N keys -> (T, N) dominance."""
    centres, halves, _, alpha, decay = keys
    tau = times[:, None] - centres[None, :]  # (T, N)
    d = np.maximum(np.abs(tau) - config.plateau * halves[None, :], 0.0)
    theta = np.where(tau < 0, config.theta_anticipation, config.theta_carryover) * decay[None, :]
    return alpha[None, :] * np.exp(-theta * d**config.exponent)


def dominance(
    phones: Sequence[Phone], times: np.ndarray, config: CoarticulationConfig = CoarticulationConfig(),
    offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cohen-Massaro dominance of every key at `times` (T,): returns (T, N) dominance and (N,) viseme ids.

    D(t) = alpha * exp(-theta * d^c), d = max(0, |t - centre| - plateau * half_duration),
    theta = theta_anticipation before the centre and theta_carryover after it (times VISEME_DECAY).
    """
    keys = _keys(phones, offset)
    return _dominance_at(np.asarray(times, dtype=np.float64), keys, config), keys[2]


def _coarticulate(times: np.ndarray, keys: tuple[np.ndarray, ...], targets: np.ndarray,
                  config: CoarticulationConfig) -> np.ndarray:
    """Dominance-weighted average of targets (14, K) at times (T,) -> (T, K), in chunks of frames so
    that long inputs never build a full (T, N) matrix (keys further than DOMINANCE_REACH are negligible)."""
    sil = VISEMES.index("sil")
    out = np.empty((len(times), targets.shape[1]))
    for lo in range(0, len(times), CHUNK_FRAMES):
        t = times[lo:lo + CHUNK_FRAMES]
        near = np.abs(keys[0] - (t[0] + t[-1]) / 2) <= (t[-1] - t[0]) / 2 + keys[1] + DOMINANCE_REACH
        chunk = tuple(k[near] for k in keys)
        dom = np.concatenate([_dominance_at(t, chunk, config), np.full((len(t), 1), config.rest_dominance)], 1)
        ids = np.concatenate([chunk[2], [sil]])  # a faint silence everywhere
        out[lo:lo + CHUNK_FRAMES] = (dom @ targets[ids]) / dom.sum(1, keepdims=True)  # (t, K)
    return out


def _raised_cosine_falloff(distance: np.ndarray, width: float) -> np.ndarray:
    """1 at distance 0, smoothly down to 0 at `width` (raised cosine); 0 beyond."""
    if width <= 0:
        return (distance <= 0).astype(np.float64)
    x = np.clip(distance / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def _distance_to_intervals(times: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    """Distance in seconds from each time (T,) to the nearest interval (0 inside); inf when there are none."""
    dist = np.full(times.shape, np.inf)
    for a, b in intervals:
        dist = np.minimum(dist, np.maximum(np.maximum(a - times, times - b), 0.0))
    return dist


def closure_factor(
    phones: Sequence[Phone], times: np.ndarray, config: CoarticulationConfig = CoarticulationConfig(),
    offset: float = 0.0, fps: float = FPS,
) -> np.ndarray:
    """How strongly lip closure is enforced at each time: (T,) in [0, 1].

    1 inside every /p b m/ segment (both at its audio time and shifted by the style's `offset`,
    widened to at least one frame so short stops still close on a frame), with a raised-cosine ramp
    of `closure_ramp` outside it; and in silence (anything that is not a speech phone) rising to 1
    once `silence_settle` seconds away from speech.
    """
    bilabial, speech = [], []
    for p in phones:
        if p.symbol in BILABIALS:
            a, b = min(p.start, p.start + offset), max(p.end, p.end + offset)
            mid, half = (a + b) / 2, max((b - a) / 2, 0.5 / fps)
            bilabial.append((mid - half, mid + half))
        if p.symbol != "sil":
            speech.append((p.start + offset, p.end + offset))
    closing = _raised_cosine_falloff(_distance_to_intervals(times, bilabial), config.closure_ramp)
    settled = 1.0 - _raised_cosine_falloff(_distance_to_intervals(times, speech), config.silence_settle)
    return np.maximum(closing, settled)


def lip_seam_gaps(rig: FaceRig) -> np.ndarray:
    """Per-unit lip-seam opening of the rig: (P, K) metres per unit weight, upper minus lower y."""
    if rig.lip_pairs is None:
        raise ValueError(f"rig {rig.name!r} has no lip pairs; visemes need them to enforce closure")
    up, lo = rig.lip_pairs[:, 0], rig.lip_pairs[:, 1]
    return (rig.deltas[:, up, 1] - rig.deltas[:, lo, 1]).T.astype(np.float64)  # (P, K)


def close_lips(weights: np.ndarray, rig: FaceRig, margin: float = 0.0) -> np.ndarray:
    """The nearest closed-lip version of each frame: (T, K) -> (T, K), every lip-seam pair gap <= margin.

    mouthClose is raised to match jawOpen (ARKit's way of closing the lips with the jaw open), then
    the remaining lip-opening units are scaled down only as far as needed to close every pair;
    if that is not enough (lips opened by jawOpen alone), mouthClose is raised further.
    """
    gaps = lip_seam_gaps(rig)  # (P, K)
    jaw, close = rig.index("jawOpen"), rig.index("mouthClose")
    w = weights.astype(np.float64).copy()
    w[:, close] = np.maximum(w[:, close], w[:, jaw])
    opening = (gaps.max(0) > 0) & ~np.isin(np.arange(w.shape[1]), [jaw, close])  # (K,)
    b = w[:, opening] @ gaps[:, opening].T  # (T, P) gap from the scalable units
    a = w @ gaps.T - b  # (T, P) gap from the rest
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(b > 0, (margin - a) / b, np.inf)  # (T, P) largest scale keeping pair p closed
    scale = np.clip(limit.min(1), 0.0, 1.0)  # (T,)
    w[:, opening] *= scale[:, None]
    residual = (w @ gaps.T - margin).max(1)  # (T,)
    need = np.maximum(residual, 0.0) / np.maximum(-gaps[:, close].max(), 1e-9)
    w[:, close] = np.minimum(w[:, close] + need, 1.0)
    return w


def visemes_to_weights(
    phones: Sequence[Phone], num_frames: int, rig: FaceRig, style: SpeakerStyle | None = None,
    config: CoarticulationConfig = CoarticulationConfig(), fps: float = FPS,
) -> np.ndarray:
    """Coarticulated ARKit weight curves for a timed phone sequence: (T, K) float32 in [0, 1].

    Columns follow `rig.blendshape_names`; frame f is at time f / fps.
    """
    if not (isinstance(num_frames, (int, np.integer)) and num_frames > 0):
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    check_phones(phones)
    style = style or SpeakerStyle()
    times = np.arange(num_frames) / fps
    targets = viseme_targets(rig, style).astype(np.float64)  # (14, K)
    w = _coarticulate(times, _keys(phones, style.timing_offset), targets, config)  # (T, K)
    if style.smoothing > 0:
        from scipy.ndimage import gaussian_filter1d  # here: importing scipy.ndimage costs the CLI 0.15-0.3 s

        w = gaussian_filter1d(w, style.smoothing, axis=0, mode="nearest")
    w = np.clip(w, 0.0, 1.0)
    c = closure_factor(phones, times, config, style.timing_offset, fps)[:, None]  # (T, 1)
    w = w + c * (close_lips(w, rig, config.closure_margin) - w)
    return np.clip(w, 0.0, 1.0).astype(np.float32)


def random_phone_stream(
    duration: float, rng: np.random.Generator, rate: float = 1.0, pause_prob: float = 0.08,
) -> list[Phone]:
    """A random, roughly syllabic phone stream of `duration` seconds (silence at both ends).

    For articulation that is uncorrelated with anything else (e.g. the speech-like leak in an
    expression corpus). `rate` > 1 speaks faster. Durations are log-normal: consonants ~70 ms,
    vowels ~110 ms; pauses 150-500 ms.
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be positive, got {rate}")
    vowels = [s for s in ARPABET if PHONE_TO_VISEME[s] in ("aa", "E", "I", "O", "U") and s not in ("w", "y")]
    consonants = [s for s in ARPABET if s != "sil" and s not in vowels]
    symbols: list[tuple[str, float]] = [("sil", float(rng.uniform(0.1, 0.3)))]
    speech_end = duration - float(rng.uniform(0.1, 0.3))
    total = symbols[0][1]
    while total < speech_end:
        if rng.random() < pause_prob:
            syllable = [("sil", float(rng.uniform(0.15, 0.5)))]
        else:
            onset = rng.choice(consonants, size=rng.integers(0, 3))
            coda = rng.choice(consonants, size=rng.integers(0, 2))
            syllable = [(str(c), rng.lognormal(math.log(0.07), 0.3) / rate) for c in onset]
            syllable.append((str(rng.choice(vowels)), rng.lognormal(math.log(0.11), 0.3) / rate))
            syllable += [(str(c), rng.lognormal(math.log(0.07), 0.3) / rate) for c in coda]
        symbols += syllable
        total += sum(d for _, d in syllable)
    phones, t = [], 0.0
    for symbol, dur in symbols:
        if t + dur > speech_end or t >= duration:
            break
        if symbol == "sil" and phones and phones[-1].symbol == "sil":
            phones[-1] = replace(phones[-1], end=t + float(dur))  # one pause, not two
        else:
            phones.append(Phone(symbol, t, t + float(dur)))
        t = phones[-1].end
    if phones and phones[-1].symbol == "sil":
        phones[-1] = replace(phones[-1], end=duration)
    else:
        phones.append(Phone("sil", t, duration))
    return phones


@dataclass
class VisemeDriver:
    """The procedural speech driver (a baseline): phones -> ARKit weights (T, K) and displacement (T, V, 3)."""

    rig: FaceRig
    style: SpeakerStyle = field(default_factory=SpeakerStyle)
    config: CoarticulationConfig = field(default_factory=CoarticulationConfig)
    fps: float = FPS

    def num_frames(self, phones: Sequence[Phone]) -> int:
        """Frames needed to cover the phones (at least one)."""
        end = max((p.end for p in phones), default=0.0)
        return max(1, math.ceil(end * self.fps))

    def __call__(self, phones: Sequence[Phone], num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weights (T, K) float32 and per-vertex displacement (T, V, 3) float32 from the neutral rig."""
        num_frames = self.num_frames(phones) if num_frames is None else num_frames
        weights = visemes_to_weights(phones, num_frames, self.rig, self.style, self.config, self.fps)
        return weights, self.rig.displacement(weights).astype(np.float32)


SEAL_GAP = 3e-4  # m: the lip gap a bilabial frame is brought down to (eval/lipsync.py counts < 1 mm as closed)


def seal_bilabials(d_s: np.ndarray, frame_phones: np.ndarray, rig: FaceRig, gap: float = SEAL_GAP) -> np.ndarray:
    """Speech displacements (T, V, 3) with the lips brought together at every /p b m/ frame where they
    are still apart: frame_phones (T,) phone ids per frame (`phones_to_frames`); such a frame's
    displacement is scaled down until the lip gap is `gap`, and the frames either side half as far.
    The rig's rest pose has the lips touching and the gap is linear in the displacement, so one
    scale per frame is exact.

    Why: a speech model trained to close at bilabials undershoots where the speech is fast (a /b/ of
    40-60 ms, 1-2 frames), and a lip that misses a /p/ is the error viewers see first. The phones are
    the ones the model read, so a frame is sealed only where the recogniser heard a bilabial."""
    frames = np.flatnonzero(np.isin(frame_phones, BILABIAL_IDS))
    if not len(frames):
        return d_s
    gaps = rig.lip_gap(rig.vertices + d_s[frames])  # (n,) m
    apart = gaps > gap
    if not apart.any():
        return d_s
    scale = np.ones(len(d_s))
    scale[frames[apart]] = gap / gaps[apart]
    for step in (-1, 1):  # the frames either side go half way: the lips meet and part over three frames, not one
        side = frames[apart] + step
        keep = (side >= 0) & (side < len(d_s))
        scale[side[keep]] = np.minimum(scale[side[keep]], (1 + scale[frames[apart][keep]]) / 2)
    return d_s * scale.astype(d_s.dtype)[:, None, None]
