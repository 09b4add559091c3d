"""The phone set and timed phones: ARPAbet symbols, `Phone` segments, frame indices, label files.

Pure numpy: the speech models, visemes and metrics read phones without loading a recogniser or TTS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import FPS

# ARPAbet without stress marks, plus "sil" for silence/pauses.
ARPABET = (
    "sil", "aa", "ae", "ah", "ao", "aw", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g", "hh",
    "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw",
    "v", "w", "y", "z", "zh",
)
BILABIALS = ("p", "b", "m")
PHONE_INDEX = {p: i for i, p in enumerate(ARPABET)}
SILENCE_ID = PHONE_INDEX["sil"]
BILABIAL_IDS = tuple(PHONE_INDEX[p] for p in BILABIALS)


@dataclass(frozen=True)
class Phone:
    """One timed phone: ARPAbet `symbol` (lower case, no stress) from `start` to `end` seconds."""

    symbol: str
    start: float
    end: float


def cover_phones(phones: Sequence[Phone], duration: float) -> list[Phone]:
    """Sort, clip to [0, duration], fill gaps with "sil", merge neighbouring "sil", drop empty phones."""
    out: list[Phone] = []
    cursor = 0.0

    def add(symbol: str, start: float, end: float) -> None:
        if end - start <= 1e-9:
            return
        if symbol == "sil" and out and out[-1].symbol == "sil":
            out[-1] = Phone("sil", out[-1].start, end)
        else:
            out.append(Phone(symbol, start, end))

    for p in sorted(phones, key=lambda q: q.start):
        start, end = max(p.start, cursor), min(p.end, duration)
        if start > cursor:
            add("sil", cursor, start)
        if end > start:
            add(p.symbol, start, end)
            cursor = end
    add("sil", cursor, duration)
    return out


def phones_to_frames(phones: Sequence[Phone], num_frames: int, fps: int = FPS) -> np.ndarray:
    """Phone index into ARPABET per motion frame: (T,) int64, T = `num_frames`.

    Frame t covers [t / fps, (t + 1) / fps) and takes the phone at its centre; frames outside
    every phone are "sil". Phones must be sorted and non-overlapping.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    unknown = sorted({p.symbol for p in phones} - set(ARPABET))
    if unknown:
        raise ValueError(f"Phone symbols {unknown} are not ARPAbet; expected lower-case symbols from ARPABET")
    starts = np.array([p.start for p in phones], dtype=np.float64)
    ends = np.array([p.end for p in phones], dtype=np.float64)
    if np.any(ends < starts) or np.any(starts[1:] < ends[:-1] - 1e-6):
        raise ValueError("phones must be sorted by time, each with start <= end, and must not overlap")
    out = np.zeros(num_frames, dtype=np.int64)  # 0 = "sil"
    if not phones:
        return out
    ids = np.array([PHONE_INDEX[p.symbol] for p in phones], dtype=np.int64)
    centres = (np.arange(num_frames) + 0.5) / fps
    k = np.searchsorted(starts, centres, side="right") - 1  # last phone starting at or before the centre
    inside = (k >= 0) & (centres < ends[np.maximum(k, 0)])
    out[inside] = ids[k[inside]]
    return out


def phone_error_rate(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Levenshtein distance between phone sequences divided by len(reference) ("sil" ignored)."""
    ref = [p for p in reference if p != "sil"]
    hyp = [p for p in hypothesis if p != "sil"]
    if not ref:
        raise ValueError("reference has no phones other than 'sil'")
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def read_phone_labels(path: str | Path) -> list[Phone]:
    """Read 'start end phone' lines (seconds, ARPAbet; '#' starts a comment)."""
    phones = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            start, end, symbol = line.split()
            phones.append(Phone(symbol, float(start), float(end)))
    return phones


def write_phone_labels(path: str | Path, phones: Sequence[Phone]) -> None:
    """Write phones as 'start end phone' lines in seconds."""
    Path(path).write_text("".join(f"{p.start:.4f} {p.end:.4f} {p.symbol}\n" for p in phones))
