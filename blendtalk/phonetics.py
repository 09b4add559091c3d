"""Phones: the ARPAbet phone set, timed phone segments, TTS with exact timings, forced alignment."""

from __future__ import annotations

from dataclasses import dataclass

# ARPAbet without stress marks, plus "sil" for silence/pauses.
ARPABET = (
    "sil", "aa", "ae", "ah", "ao", "aw", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g", "hh",
    "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw",
    "v", "w", "y", "z", "zh",
)
BILABIALS = ("p", "b", "m")


@dataclass(frozen=True)
class Phone:
    """One timed phone: ARPAbet `symbol` (lower case, no stress) from `start` to `end` seconds."""

    symbol: str
    start: float
    end: float
