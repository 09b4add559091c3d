"""The emotion library: FACS/EMFACS prototypes on ARKit units, intensity, mixing, dynamics, blinks, timelines,
and the head posture and gaze that go with each emotion (`EMOTION_POSTURE`).

Each emotion is a set of FACS action units (EMFACS prototypes, `EMOTION_AUS`); each action unit maps
to ARKit blendshapes (`AU_TO_ARKIT`). Everything returns ARKit weights in the rig's column order
(`ARKIT_NAMES`, the order of `rig.blendshape_names`; pass `names=rig.blendshape_names` for another
rig); vertices come from `rig(weights)`. Frame f is at time f / fps seconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from ..constants import FPS

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted", "contempt")
ALIASES = {"happiness": "happy", "sadness": "sad", "anger": "angry", "surprise": "surprised",
           "fear": "fearful", "disgust": "disgusted"}
MAX_INTENSITY = 1.5  # above 1 exaggerates; weights are clipped to [0, 1] per unit
INTENSITY_BEND = 1.7  # `activation`: 0.5 switches on 0.675 of the apex; the slope at 1 is 0.3
BLINK_RATE = 17.0  # blinks per minute, a typical resting rate
# Share of a blink's lid travel that a full cheek raise (cheekSquint) closes from below. A blink on a
# smile or a sneer stops there; at full travel the upper lid and its lashes sank through the raised
# lower lid, and the lower lashes showed as a grey band above the closed eye. On the default rig the
# cheek raise lifts the lower lid by 0.06-0.21 of the upper lid's 12.6 mm travel along the eye;
# 0.25 closes the eye without that band (docs/experiments.md).
CHEEK_LID_CLOSURE = 0.25
FPS_RANGE = (1.0, 1000.0)  # frames per second accepted; outside it a curve has no usable time axis (0 divides)

# The 52 ARKit units in the default rig's column order (rig.blendshape_names).
ARKIT_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)

# FACS action unit -> ARKit units (weight per unit of AU intensity). "{side}" expands to Left and
# Right for a bilateral AU, to one side for a unilateral one ("L12"/"R12" in EMOTION_AUS; Left/Right
# are the face's own sides, as in ARKit); midline units get half weight in a unilateral AU.
AU_TO_ARKIT: dict[int, dict[str, float]] = {
    1: {"browInnerUp": 1.0},                                     # inner brow raiser
    2: {"browOuterUp{side}": 1.0},                               # outer brow raiser
    4: {"browDown{side}": 1.0},                                  # brow lowerer
    5: {"eyeWide{side}": 1.0},                                   # upper lid raiser
    6: {"cheekSquint{side}": 1.0, "eyeSquint{side}": 0.3},       # cheek raiser (narrows the eye from below)
    7: {"eyeSquint{side}": 1.0},                                 # lid tightener
    9: {"noseSneer{side}": 1.0, "mouthUpperUp{side}": 0.2, "cheekSquint{side}": 0.3},  # nose wrinkler
    10: {"mouthUpperUp{side}": 1.0},                             # upper lip raiser
    12: {"mouthSmile{side}": 1.0},                               # lip corner puller
    14: {"mouthDimple{side}": 1.0},                              # dimpler
    15: {"mouthFrown{side}": 1.0},                               # lip corner depressor
    16: {"mouthLowerDown{side}": 1.0},                           # lower lip depressor
    17: {"mouthShrugLower": 1.0},                                # chin raiser
    18: {"mouthPucker": 1.0},                                    # lip pucker
    20: {"mouthStretch{side}": 1.0},                             # lip stretcher
    22: {"mouthFunnel": 1.0},                                    # lip funneler
    23: {"mouthPress{side}": 1.0, "mouthRollLower": 0.2, "mouthRollUpper": 0.2},  # lip tightener
    24: {"mouthPress{side}": 1.0},                               # lip pressor
    25: {"mouthLowerDown{side}": 0.3, "mouthUpperUp{side}": 0.2},  # lips part (without the jaw)
    26: {"jawOpen": 1.0},                                        # jaw drop
    41: {"eyeBlink{side}": 1.0},                                 # lid droop (a partial close)
    43: {"eyeBlink{side}": 1.0},                                 # eyes closed
}

# EMFACS prototypes at their apex: AU -> intensity in [0, 1] ("AU12" bilateral, "R12"/"L12" one
# side), FACS's A-E intensity scale read as 0.2 (trace) to 1.0 (maximum). The defining AUs sit at
# D-E, as in posed sets such as JACFEE (Matsumoto & Ekman 1988) and the prototype tables of the
# FACS Investigator's Guide (Ekman, Friesen & Hager 2002). Where EMFACS lists an open-mouthed
# variant we take it, because these faces talk: a speaking face's mouth is open half the time, and
# a closed-mouth prototype (anger's pressed lips) fights the speech instead of riding on it. So:
# happy is the open-mouthed Duchenne smile (6+12+25 with the upper teeth shown), anger the
# open-mouthed glare (4+5+7+10+16+25+26, a shout), fear 1+2+4+5+20+25+26 with the lower lip drawn
# down, surprise 1+2+5+25+26, disgust 6+7+9+10+15+16+17+25. The units
# that hold the lips apart (jaw drop, lips part, raised upper lip, lowered lower lip) yield to the
# speech's bilabial closures (`yield_to_closure`): corners, presses, brows and lids stay. In a pause
# the speaker is silent and the whole prototype, open mouth included, comes back (`pause_share`).
EMOTION_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"AU6": 1.0, "AU12": 1.0, "AU14": 0.3, "AU10": 0.4, "AU25": 1.0, "AU26": 0.2},  # Duchenne, teeth shown
    # Sadness is 1+4+15, with the chin raised (17) and the lids drooping (41) (Ekman & Friesen 1975;
    # EMFACS's 1+4+15+17). The inner brow's raise stays under the lowerer (1 at 0.6, 4 at 1.0): with
    # 1 at 1.0 and 4 at 0.6, a second recogniser read the raised brow over open eyes as fear in 62% of
    # frames and sad in 3%; with these, sad in 52% (fer: 99-100% either way). A chin raise of 1.0
    # helped no further and kept a speaking mouth nearly shut.
    "sad": {"AU1": 0.6, "AU4": 1.0, "AU15": 1.0, "AU17": 0.6, "AU41": 0.35},  # knit brows, corners down, lids droop
    "angry": {"AU4": 1.0, "AU5": 0.5, "AU7": 1.0, "AU9": 0.5, "AU10": 0.8, "AU16": 0.6, "AU25": 0.8, "AU26": 0.3},
    # brows high, eyes wide, jaw dropped; the rig's jaw drop spreads the lips wide, so some AU22
    # keeps them in the slack oval of a dropped jaw ("oh") instead of the stretched mouth of fear.
    # The dropped jaw is surprise's mouth (26/27, "the jaw drops open ... without tension or
    # stretching of the mouth", Ekman & Friesen 1975, Unmasking the Face): 0.7 parts the lips about
    # 2 cm, half an adult's widest opening (0.9 on this rig gapes like a scream). The funnel at 0.4
    # (0.25 before) rounds the oval, which keeps half intensity from reading as fear's stretched mouth.
    "surprised": {"AU1": 1.0, "AU2": 1.0, "AU5": 1.0, "AU22": 0.4, "AU25": 0.8, "AU26": 0.7},
    # Brows raised and drawn together (1+2+4: "the brows are raised and drawn together", Ekman &
    # Friesen 1975), eyes wide (5), lips stretched back (20) over a dropped jaw. The knit (4 at 0.6)
    # and a lower outer brow (2 at 0.4) are what set fear's brow apart from surprise's arch: with a
    # trace of 4 (0.25) and 2 at 0.6, a second recogniser read surprise in 55-63% of frames, fear in 8-18%.
    "fearful": {"AU1": 1.0, "AU2": 0.4, "AU4": 0.6, "AU5": 0.8, "AU16": 0.6, "AU20": 1.0, "AU25": 1.0, "AU26": 0.4},
    # Disgust is carried by the nose and the upper lip (Ekman & Friesen 1975, Unmasking the Face: the
    # upper lip raised, the nose wrinkled, the cheeks and lower lids pushed up, the lower lip raised
    # against the upper or lowered and pushed out; EMFACS's disgust is 9 and/or 10 with 15/16/17 and
    # 25/26). So: the full nose wrinkle (9) and upper-lip raise (10), the eyes narrowed from below by the
    # cheek raise and lid tightener (6, 7) instead of anger's glare (5), the lower lip lowered (16) and
    # pushed out by the chin raiser (17), the corners turned down a little (15). No brow lowerer (4):
    # the nose wrinkle already pulls the inner brows down, and more reads as anger's frown. No jaw drop
    # (26): the speech opens the jaw, and a held drop pulls the cheeks down, flattening the nasolabial
    # fold that the raised lip and cheeks deepen (`render.wrinkles`).
    "disgusted": {"AU6": 1.0, "AU7": 0.6, "AU9": 1.0, "AU10": 1.0, "AU15": 0.2, "AU16": 0.8, "AU17": 0.6, "AU25": 1.0},
    # Contempt is one-sided: the lip corner tightened and slightly raised on one side (R14 with R12,
    # Ekman & Friesen 1986, "A new pan-cultural facial expression of emotion"), with a trace of the
    # same side's upper lip raised (R10), the sneer that goes with it; the corner's pull must clearly
    # outweigh the speech's symmetric mouth, so both corner units sit near their apex.
    "contempt": {"R10": 0.3, "R12": 0.9, "R14": 1.0},
}

# Units that hold the lips apart, and the speech lip gaps between which they give way to a closure.
LIP_PARTING_UNITS = ("mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft", "mouthLowerDownRight",
                     "mouthShrugUpper", "mouthFunnel", "jawOpen")
CLOSED_GAP = 0.5e-3  # m: speech lips this close are closing; the expression's parting gives way fully
PARTED_GAP = 2.0e-3  # m: from here on the speech has its lips apart; the expression keeps all of it
# In a pause the speaker is silent, not articulating: the emotion's own mouth (surprise's dropped jaw,
# anger's bared teeth) comes back once the silence has lasted longer than any closure inside speech
# (a /p/ or /b/ hold is under 0.15 s), and gives way again before the next phone.
PAUSE_SETTLE = 0.2  # s of silence after the last phone before the expression's mouth starts to return
PAUSE_RAMP = 0.25  # s over which it returns
PAUSE_LEAD = 0.2  # s before the next phone by which it has given way again (or the look-ahead, if shorter)
ONSET_HOLD = 0.1  # s into a phrase that does not open with /p b m/ over which it gives way, as the speech opens the lips

_AU_KEY = re.compile(r"^(AU|L|R)(\d+)$")
_TOKEN = re.compile(r"^([A-Za-z_]+)@([^:@]+)(?::([^:@]+))?$")


def check_emotion(name: str, what: str = "emotion") -> str:
    """Canonical emotion name (case-insensitive, common aliases); unknown names raise a ValueError
    that calls the input `what` ("second emotion" for a mix)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in EMOTIONS:
        raise ValueError(f"unknown {what} {name!r:.60}; valid emotions: {', '.join(EMOTIONS)}")
    return key


def check_mix(mix_with: str, mix_ratio: float) -> tuple[str, float]:
    """A second emotion and its share in [0, 1] (0: only the first emotion), each checked."""
    mix_with = check_emotion(mix_with, "second emotion (to mix in)")
    if isinstance(mix_ratio, bool) or not (isinstance(mix_ratio, (int, float)) and 0.0 <= mix_ratio <= 1.0):
        raise ValueError(f"mix ratio (the share of the second emotion) must be a number in [0, 1], got {mix_ratio!r:.40}")
    return mix_with, float(mix_ratio)


def check_intensity(intensity: float, what: str = "intensity") -> float:
    """A finite intensity in [0, MAX_INTENSITY]; anything else raises a ValueError."""
    value = _number(intensity)
    if not (math.isfinite(value) and 0.0 <= value <= MAX_INTENSITY):
        raise ValueError(f"{what} must be a finite number in [0, {MAX_INTENSITY}], got {intensity!r:.40}")
    return value


def _column(names: Sequence[str], unit: str) -> int:
    try:
        return list(names).index(unit)
    except ValueError:
        raise ValueError(f"blendshape {unit!r} is not among the {len(names)} names given") from None


def au_weights(aus: dict[str, float], names: Sequence[str] = ARKIT_NAMES) -> np.ndarray:
    """ARKit weights (K,) of a set of action units {"AU12": 0.8, "R14": 0.5, ...}, unclipped."""
    w = np.zeros(len(names), dtype=np.float32)
    for key, amount in aus.items():
        match = _AU_KEY.match(key)
        if match is None or int(match[2]) not in AU_TO_ARKIT:
            raise ValueError(f"unknown action unit {key!r}; use AU<n>, L<n> or R<n> with n in {sorted(AU_TO_ARKIT)}")
        sides = ("Left", "Right") if match[1] == "AU" else ({"L": "Left", "R": "Right"}[match[1]],)
        for unit, gain in AU_TO_ARKIT[int(match[2])].items():
            if "{side}" in unit:
                for side in sides:
                    w[_column(names, unit.format(side=side))] += amount * gain
            else:
                w[_column(names, unit)] += amount * gain * (1.0 if len(sides) == 2 else 0.5)
    return w


def activation(intensity: float) -> float:
    """Share of the apex (0..1) that a chosen intensity in [0, 1] switches on: intensity * (A - (A - 1) *
    intensity), A = INTENSITY_BEND. Concave, so a "half" expression sits at about two thirds of the
    apex: half the muscle activation reads as barely there on a face without skin texture or
    wrinkles, while 0.5 should look moderate but plain. Slope at 1: 2 - A."""
    return intensity * (INTENSITY_BEND - (INTENSITY_BEND - 1.0) * intensity)


def saturate(apex: np.ndarray, intensity: float) -> np.ndarray:
    """Unit weights (K,) at `intensity` from apex weights (K,) in [0, 1]: apex * activation(intensity)
    up to 1, then each unit eases toward 1 with the slope it had at the apex, so exaggeration bends
    smoothly instead of clipping and no weight ever leaves [0, 1]."""
    apex = np.clip(np.asarray(apex, dtype=np.float32), 0.0, 1.0)
    if intensity <= 1.0:
        return (apex * activation(intensity)).astype(np.float32)
    room = 1.0 - apex.astype(np.float64)  # (K,) what is left to 1
    slope = (2.0 - INTENSITY_BEND) * apex  # d weight / d intensity at the apex
    rate = np.divide(slope, room, out=np.zeros_like(room), where=room > 0)
    with np.errstate(under="ignore"):  # a unit a hair below 1 is at 1 an instant later: exp underflows to 0
        return (1.0 - room * np.exp(-rate * (intensity - 1.0))).astype(np.float32)


def emotion_weights(emotion: str, intensity: float = 1.0, names: Sequence[str] = ARKIT_NAMES) -> np.ndarray:
    """ARKit weights (K,) float32 in [0, 1] of an emotion at `intensity` in [0, 1.5] (1 = the apex)."""
    emotion, intensity = check_emotion(emotion), check_intensity(intensity)
    return saturate(au_weights(EMOTION_AUS[emotion], names), intensity)


def mix(emotion_a: str, emotion_b: str, ratio: float, intensity: float = 1.0,
        names: Sequence[str] = ARKIT_NAMES) -> np.ndarray:
    """A blend (K,) of two emotions: ratio 0 gives emotion_a, 1 gives emotion_b."""
    ratio = _check_ratio(ratio)
    a = emotion_weights(emotion_a, intensity, names)
    b = emotion_weights(emotion_b, intensity, names)
    return ((1.0 - ratio) * a + ratio * b).astype(np.float32)


def _check_ratio(ratio: float) -> float:
    if not 0.0 <= _number(ratio) <= 1.0:  # NaN (not a number) fails too
        raise ValueError(f"ratio must be a finite number in [0, 1], got {ratio!r}")
    return float(ratio)


# How each emotion holds the head and where it looks, at the apex, in degrees: [head pitch (+ down,
# chin toward the chest), head yaw (+ toward the face's left), head roll (+ toward the face's left),
# gaze yaw, gaze pitch (+ up)]. Gaze is where the eyes look (0, 0 = the listener, the camera), so
# a head turned away with gaze 0 keeps its eyes on the listener from the corner of the eye. The face
# alone carries an emotion less well than face and head together: a bowed head and lowered eyes
# read as sad (Wallbott 1998, "Bodily expression of emotion"; Mignault & Chaudhuri 2003, a bowed
# head reads sadder, a raised one happier and prouder); averted eyes strengthen the avoidance
# emotions, fear and sadness, and a direct gaze the approach ones, anger and joy (Adams & Kleck
# 2003, 2005). Disgust turns the head away and draws it back from what disgusts (Rozin, Haidt &
# McCauley 2008); contempt raises the chin, looking down the nose; surprise lifts the head. A few
# degrees only: this is a talking face, not a pose, and the speech's own nods ride on top.
# On the fer recogniser (ARCTIC + TTS clips, docs/experiments.md) the averted eyes took fear from
# 61% to 75% and the chin-down glare anger from 93% to 100%, the others held.
EMOTION_POSTURE: dict[str, tuple[float, float, float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0, 0.0, 0.0),
    "happy": (-2.0, 0.0, 3.0, 0.0, 0.0),  # head up a little, tilted: the friendly tilt of a smile
    "sad": (5.0, 0.0, -1.5, 0.0, -8.0),  # bowed, eyes cast down
    "angry": (3.0, 0.0, 0.0, 0.0, 0.0),  # chin down, eyes on the listener: the glare from under the brows
    "surprised": (-4.0, 0.0, 0.0, 0.0, 0.0),  # the head lifts with the brows
    "fearful": (-2.0, 0.0, 0.0, 8.0, 0.0),  # drawn back, eyes away
    "disgusted": (-3.0, 5.0, 2.0, 0.0, 0.0),  # turned away and drawn back, eyes kept on the offence
    "contempt": (-3.0, 0.0, 2.5, 0.0, 0.0),  # chin up: looking down the nose
}
POSTURE_DIMS = 5  # head pitch, yaw, roll; gaze yaw, pitch


def posture_scale(intensity: float) -> float:
    """Share of the apex posture at `intensity` in [0, 1.5]: `activation` up to 1 (as the units), then
    on with the slope it has there, so 1.5 bows a sad head 15% further than 1.0."""
    intensity = check_intensity(intensity)
    return activation(min(intensity, 1.0)) + (2.0 - INTENSITY_BEND) * max(intensity - 1.0, 0.0)


def emotion_posture(emotion: str, intensity: float = 1.0) -> np.ndarray:
    """Head and gaze offsets (5,) in degrees [head pitch, yaw, roll, gaze yaw, pitch] of an emotion at `intensity`."""
    return np.asarray(EMOTION_POSTURE[check_emotion(emotion)], np.float64) * posture_scale(intensity)


def max_posture() -> np.ndarray:
    """The largest |offset| (5,) in degrees that any emotion's posture reaches (at MAX_INTENSITY): the
    renderer's framing leaves room for it on top of the speech's motion."""
    return np.abs(np.array(list(EMOTION_POSTURE.values()))).max(0) * posture_scale(MAX_INTENSITY)


def mix_posture(emotion_a: str, emotion_b: str, ratio: float, intensity: float = 1.0) -> np.ndarray:
    """The posture (5,) of `mix(emotion_a, emotion_b, ratio, intensity)`."""
    ratio = _check_ratio(ratio)
    return (1.0 - ratio) * emotion_posture(emotion_a, intensity) + ratio * emotion_posture(emotion_b, intensity)


@dataclass(frozen=True, eq=False)
class SubjectStyle:
    """How one subject performs expressions: per-unit gains (K,), left/right asymmetry, tempo."""

    gains: np.ndarray  # (K,) multiplies each unit: people use their muscles differently
    asymmetry: float = 0.0  # left units x (1 + a), right units x (1 - a)
    tempo: float = 1.0  # multiplies onset/offset durations (slow or quick expressers)

    def __post_init__(self):
        if self.gains.ndim != 1 or not np.isfinite(self.gains).all() or (self.gains < 0).any():
            raise ValueError(f"SubjectStyle.gains must be finite non-negative (K,), got shape {self.gains.shape}")
        if not (math.isfinite(self.asymmetry) and abs(self.asymmetry) < 1.0):
            raise ValueError(f"SubjectStyle.asymmetry must be in (-1, 1), got {self.asymmetry}")
        if not (math.isfinite(self.tempo) and self.tempo > 0):
            raise ValueError(f"SubjectStyle.tempo must be positive, got {self.tempo}")

    @classmethod
    def sample(cls, rng: np.random.Generator, variation: float = 0.2,
               num_units: int = len(ARKIT_NAMES)) -> "SubjectStyle":
        """A random subject; `variation` ~ the relative spread of gains (0 gives the neutral subject)."""
        if not (math.isfinite(variation) and 0.0 <= variation <= 1.0):
            raise ValueError(f"variation must be in [0, 1], got {variation}")
        gains = np.clip(rng.lognormal(0.0, variation, num_units), 0.5, 1.6).astype(np.float32)
        return cls(gains, float(rng.uniform(-0.5, 0.5) * variation), float(np.exp(rng.normal(0.0, variation))))

    @classmethod
    def random(cls, seed: int, variation: float = 0.2, num_units: int = len(ARKIT_NAMES)) -> "SubjectStyle":
        """`sample` from a seeded generator."""
        return cls.sample(np.random.default_rng(seed), variation, num_units)

    def apply(self, weights: np.ndarray, names: Sequence[str] = ARKIT_NAMES) -> np.ndarray:
        """Styled weights (..., K) -> (..., K), clipped to [0, 1]."""
        if weights.shape[-1] != len(self.gains) or len(names) != len(self.gains):
            raise ValueError(f"weights (..., {len(self.gains)}) expected for this subject, got {weights.shape}")
        side = np.array([1.0 + self.asymmetry if n.endswith("Left") else 1.0 - self.asymmetry if n.endswith("Right")
                         else 1.0 for n in names], dtype=np.float32)
        return np.clip(weights * self.gains * side, 0.0, 1.0).astype(np.float32)


def _ease(x: np.ndarray) -> np.ndarray:
    """Raised-cosine ease from 0 (x <= 0) to 1 (x >= 1)."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def envelope(num_frames: int, onset: float, apex: float | None, offset: float, start: float = 0.0,
             fps: float = FPS) -> np.ndarray:
    """Onset-apex-offset envelope (T,) in [0, 1]: 0 before `start`, raised-cosine rise over `onset` s,
    1 for `apex` s, raised-cosine fall over `offset` s. apex=None holds until the offset ends on the last frame.
    """
    _check_frames(num_frames)
    _check_fps(fps)
    named = {"onset": onset, "offset": offset, "start": start, "apex": 0.0 if apex is None else apex}
    for name, value in named.items():
        if not 0 <= _number(value) < math.inf:
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    t = np.arange(num_frames) / fps
    if apex is None:
        apex = max(0.0, (num_frames - 1) / fps - start - onset - offset)
    rise = _ease((t - start) / onset) if onset > 0 else (t >= start).astype(np.float64)
    fall_start = start + onset + apex
    fall = 1.0 - (_ease((t - fall_start) / offset) if offset > 0 else (t > fall_start).astype(np.float64))
    return np.minimum(rise, fall)


def blinks(num_frames: int, seed: int | np.random.Generator | None = None, rate_per_min: float = BLINK_RATE,
           fps: float = FPS, names: Sequence[str] = ARKIT_NAMES) -> np.ndarray:
    """Natural blinks as ARKit weights (T, K): only eyeBlinkLeft/Right are non-zero.

    Intervals are a 0.5 s refractory time plus an exponential wait (mean 60/rate s); each blink
    closes in 50-80 ms, stays shut 15-40 ms and reopens in 90-140 ms (155-260 ms in all).
    """
    _check_frames(num_frames)
    _check_fps(fps)
    if not 0.0 <= _number(rate_per_min) <= 60.0:
        raise ValueError(f"rate_per_min must be in [0, 60], got {rate_per_min!r}")
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / fps
    curve = np.zeros(num_frames)
    duration = t[-1] + 1.0 / fps
    if rate_per_min > 0:
        refractory = 0.5
        mean_wait = max(60.0 / rate_per_min - refractory, 0.05)
        when = float(rng.uniform(0.0, 60.0 / rate_per_min))
        while when < duration:
            close, hold, reopen = rng.uniform(0.05, 0.08), rng.uniform(0.015, 0.04), rng.uniform(0.09, 0.14)
            depth = rng.uniform(0.85, 1.0)
            shape = np.minimum(_ease((t - when) / close), 1.0 - _ease((t - when - close - hold) / reopen))
            curve = np.maximum(curve, depth * shape)
            when += close + hold + reopen + refractory + float(rng.exponential(mean_wait))
    w = np.zeros((num_frames, len(names)), dtype=np.float32)
    for unit in ("eyeBlinkLeft", "eyeBlinkRight"):
        w[:, _column(names, unit)] = curve
    return w


def add_blinks(weights: np.ndarray, blink_weights: np.ndarray, names: Sequence[str] = ARKIT_NAMES) -> np.ndarray:
    """Expression (T, K) with blinks (T, K) on top: the lids close over any widening or squint, and a
    blink stops where a raised cheek has already brought the lower lid up (`CHEEK_LID_CLOSURE`)."""
    if weights.shape != blink_weights.shape:
        raise ValueError(f"weights {weights.shape} and blink weights {blink_weights.shape} must match")
    out = weights.copy()
    for side in ("Left", "Right"):
        k = _column(names, f"eyeBlink{side}")
        b = np.minimum(blink_weights[:, k], 1.0 - CHEEK_LID_CLOSURE * weights[:, _column(names, f"cheekSquint{side}")])
        out[:, k] = np.maximum(out[:, k], b)
        for unit in (f"eyeWide{side}", f"eyeSquint{side}"):
            out[:, _column(names, unit)] *= 1.0 - b
    return out


def emotion_curve(
    emotion: str, num_frames: int, intensity: float = 1.0, onset: float = 0.4, apex: float | None = None,
    offset: float = 0.4, start: float = 0.0, seed: int | np.random.Generator | None = None,
    variation: float = 0.0, subject: SubjectStyle | None = None, blink_rate: float = 0.0,
    fps: float = FPS, names: Sequence[str] = ARKIT_NAMES,
) -> np.ndarray:
    """One expression over time: (T, K) float32 in [0, 1].

    Envelope as in `envelope` (onset/offset scaled by the subject's tempo). The subject is `subject`,
    else one sampled from `seed` with `variation` (0 = the prototype itself). blink_rate > 0 adds
    blinks (per minute) drawn from the same seed.
    """
    rng = np.random.default_rng(seed)
    if not (math.isfinite(variation) and 0.0 <= variation <= 1.0):
        raise ValueError(f"variation must be in [0, 1], got {variation!r}")
    if subject is None and variation > 0:
        subject = SubjectStyle.sample(rng, variation, len(names))
    apex_w = emotion_weights(emotion, intensity, names)  # (K,)
    tempo = subject.tempo if subject is not None else 1.0
    env = envelope(num_frames, onset * tempo, apex, offset * tempo, start, fps)  # (T,)
    if subject is not None:
        apex_w = subject.apply(apex_w, names)
    w = (env[:, None] * apex_w[None, :]).astype(np.float32)  # (T, K)
    if blink_rate != 0:  # blinks() rejects negative rates
        w = add_blinks(w, blinks(num_frames, rng, blink_rate, fps, names), names)
    return w


def pause_share(silent: np.ndarray, bilabial: np.ndarray | None = None, lookahead: int | None = None,
                since: int | None = None, fps: float = FPS) -> np.ndarray:
    """How deep each frame lies in a pause, (T,) in [0, 1]: 0 on and near speech, 1 well inside a silence.

    silent: (T,) bool, no speech phone at the frame ("sil"). Clip edges are not speech: a clip that
    starts in silence starts deep in a pause. bilabial: (T,) bool, a /p b m/ at the frame; a phrase
    that opens on anything else need not close the lips first, so the pause's mouth gives way over
    the phrase's first ONSET_HOLD s (until a /p b m/) instead of before it (None: before every phrase).
    lookahead: frames after each frame that may be read (a live session sees only its window; None:
    the whole clip), which also bounds the lead-out. since: silent frames before frame 0 (a live
    session's state; None: the clip's start).
    """
    silent = np.asarray(silent, dtype=bool)
    if silent.ndim != 1:
        raise ValueError(f"silent must be a (T,) bool array, got shape {silent.shape}")
    T = len(silent)
    big = T + 10**6  # "no speech in sight"
    idx = np.arange(T)
    if bilabial is not None:
        bilabial = np.asarray(bilabial, dtype=bool)
        if bilabial.shape != silent.shape:
            raise ValueError(f"bilabial must be (T,) like silent, got {bilabial.shape} and {silent.shape}")
        last_silent = np.maximum.accumulate(np.where(silent, idx, -big))
        if since is None or since > 0:  # the frame before the first is silent (a clip's start is a pause)
            last_silent = np.maximum(last_silent, -1)
        last_bilabial = np.maximum.accumulate(np.where(bilabial, idx, -big))
        silent = silent | ((idx - last_silent <= ONSET_HOLD * fps) & (last_bilabial < last_silent))
    last = np.maximum.accumulate(np.where(~silent, idx, -1))  # (T,) last speech frame at or before t
    start = -big if since is None else -1 - since
    before = idx - np.where(last >= 0, last, start)  # frames since speech
    nxt = np.minimum.accumulate(np.where(~silent, idx, big)[::-1])[::-1]  # (T,) next speech frame at or after t
    after = nxt - idx
    lead = PAUSE_LEAD * fps if lookahead is None else min(PAUSE_LEAD * fps, lookahead + 1)
    if lookahead is not None:
        after = np.where(after > lookahead, big, after)  # speech beyond the window is not yet known
    return (_ease((before - PAUSE_SETTLE * fps) / (PAUSE_RAMP * fps)) * _ease(after / lead) * silent).astype(np.float64)


def yield_to_closure(weights: np.ndarray, speech_gap: np.ndarray, names: Sequence[str] = ARKIT_NAMES,
                     pause: np.ndarray | None = None) -> np.ndarray:
    """Expression weights (T, K) with their lip-parting units eased off where the speech closes the lips.

    speech_gap: (T,) lip opening of the speech deformation alone, metres (`FaceRig.lip_gap`). A
    bilabial closure is a gesture the speaker makes whatever the emotion: a raised upper lip or lips
    held apart give way to it and come back after, while corners, presses, brows and lids are kept.
    pause: (T,) in [0, 1] (`pause_share`): deep in a pause the speaker is not articulating, and the
    expression keeps its own mouth there (None: every closure is yielded to, pauses included).
    """
    gap = np.asarray(speech_gap, dtype=np.float64)
    if weights.ndim != 2 or gap.shape != (weights.shape[0],):
        raise ValueError(f"weights (T, K) and speech_gap (T,) must share T, got {weights.shape} and {gap.shape}")
    closing = 1.0 - _ease((gap - CLOSED_GAP) / (PARTED_GAP - CLOSED_GAP))  # (T,) 1 closed .. 0 apart
    # The lips start meeting a frame before the speech's closure and part a frame after it.
    padded = np.pad(closing, 1, mode="edge")
    closing = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    if pause is not None:
        pause = np.asarray(pause, dtype=np.float64)
        if pause.shape != gap.shape:
            raise ValueError(f"pause must be (T,) like speech_gap, got {pause.shape} and {gap.shape}")
        closing = closing * (1.0 - pause)
    out = weights.copy()
    for unit in LIP_PARTING_UNITS:
        if unit in names:
            k = list(names).index(unit)
            out[:, k] *= 1.0 - closing
    return out.astype(np.float32)


class Keyframe(NamedTuple):
    """One timeline entry: `emotion` from `start` seconds, at `intensity` (relative to the global one)."""

    emotion: str
    start: float
    intensity: float = 1.0


def parse_timeline(text: str) -> list[Keyframe]:
    """Parse "neutral@0 happy@1.5:0.8, sad@4.0" (NAME@SECONDS[:INTENSITY], spaces or commas between)."""
    tokens = [tok for tok in re.split(r"[\s,;]+", str(text).strip()) if tok]
    if not tokens:
        raise ValueError("empty emotion timeline; expected e.g. 'neutral@0 happy@1.5 sad@4.0:0.7'")
    keys = []
    for i, tok in enumerate(tokens):
        match = _TOKEN.match(tok)
        if match is None:
            raise ValueError(f"bad timeline token {tok!r} (#{i + 1}); expected NAME@SECONDS or "
                             f"NAME@SECONDS:INTENSITY, e.g. 'happy@1.5:0.8'")
        try:
            start = float(match[2])
            intensity = float(match[3]) if match[3] is not None else 1.0
        except ValueError:
            raise ValueError(f"bad number in timeline token {tok!r} (#{i + 1}); "
                             f"expected e.g. 'happy@1.5:0.8'") from None
        keys.append(Keyframe(match[1], start, intensity))
    return check_timeline(keys)


def check_timeline(keys: Sequence[Keyframe | tuple]) -> list[Keyframe]:
    """Validated keyframes from (emotion, start[, intensity]) tuples: known emotions, finite
    non-negative strictly increasing starts, intensities in [0, 1.5]."""
    if not isinstance(keys, (list, tuple)):
        raise ValueError(f"a timeline is text or a list of (emotion, start[, intensity]) tuples, got {keys!r}")
    out: list[Keyframe] = []
    for i, key in enumerate(keys):
        if not isinstance(key, tuple) or len(key) not in (2, 3):
            raise ValueError(f"timeline entry #{i + 1} {key!r} must be (emotion, start[, intensity])")
        key = Keyframe(*key)
        start = _number(key.start)
        if not (math.isfinite(start) and start >= 0):
            raise ValueError(f"timeline entry #{i + 1} {key.emotion}@{key.start}: start must be finite and >= 0 s")
        if out and start <= out[-1].start:
            raise ValueError(f"timeline times must increase: {key.emotion}@{start} comes after "
                             f"{out[-1].emotion}@{out[-1].start}")
        out.append(Keyframe(check_emotion(key.emotion, "emotion in the timeline"), start,
                            check_intensity(key.intensity, f"intensity of timeline entry #{i + 1}")))
    if not out:
        raise ValueError("empty emotion timeline; expected at least one (emotion, start) entry")
    return out


def timeline_weights(
    timeline: str | Sequence[Keyframe | tuple], num_frames: int, intensity: float = 1.0, transition: float = 0.4,
    subject: SubjectStyle | None = None, fps: float = FPS, names: Sequence[str] = ARKIT_NAMES,
) -> np.ndarray:
    """Expression weights (T, K) following a timeline: neutral before the first entry, then each entry
    eases (raised cosine over `transition` s) from wherever the face is to its emotion at
    intensity x entry intensity (the product must stay <= 1.5)."""
    w = _timeline_track(timeline, num_frames, intensity, transition, fps,
                        lambda emotion, level: emotion_weights(emotion, level, names)).astype(np.float32)
    return subject.apply(w, names) if subject is not None else w


def timeline_posture(timeline: str | Sequence[Keyframe | tuple], num_frames: int, intensity: float = 1.0,
                     transition: float = 0.4, fps: float = FPS) -> np.ndarray:
    """Head and gaze offsets (T, 5) in degrees following a timeline, eased as `timeline_weights` eases the face."""
    return _timeline_track(timeline, num_frames, intensity, transition, fps, emotion_posture)


def _timeline_track(timeline, num_frames: int, intensity: float, transition: float, fps: float, target_of) -> np.ndarray:
    """(T, D) float64: zeros before the first entry, then each entry's `target_of(emotion, level)` (D,)
    eased in from wherever the track is when the entry starts."""
    _check_frames(num_frames)
    _check_fps(fps)
    keys = parse_timeline(timeline) if isinstance(timeline, str) else check_timeline(timeline)
    intensity = check_intensity(intensity)
    if not 0 <= _number(transition) < math.inf:
        raise ValueError(f"transition must be a finite number of seconds >= 0, got {transition!r}")
    t = np.arange(num_frames) / fps
    targets = [target_of(key.emotion, check_intensity(intensity * key.intensity, "intensity x entry intensity"))
               for key in keys]
    w = np.zeros((num_frames, len(targets[0])))
    state = np.zeros(len(targets[0]))  # the track at the current key's start
    for i, (key, target) in enumerate(zip(keys, targets)):
        end = keys[i + 1].start if i + 1 < len(keys) else math.inf
        progress = _ease((t - key.start) / transition) if transition > 0 else np.ones_like(t)
        inside = (t >= key.start) & (t < end)
        w[inside] = state + (target - state) * progress[inside, None]
        if math.isfinite(end):  # where the next transition starts from
            p = float(_ease(np.array((end - key.start) / transition))) if transition > 0 else 1.0
            state = state + (target - state) * p
    return w


def _number(value) -> float:
    """A real number as a float, or NaN for anything else (None, text, a bool, a list), so that callers
    report it in their own ValueError instead of a TypeError from arithmetic."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    return float(value)


def _check_fps(fps: float) -> None:
    if not FPS_RANGE[0] <= _number(fps) <= FPS_RANGE[1]:
        raise ValueError(f"fps must be a number of frames per second in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], "
                         f"got {fps!r}")


def _check_frames(num_frames: int) -> None:
    if not (isinstance(num_frames, (int, np.integer)) and num_frames > 0):
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
