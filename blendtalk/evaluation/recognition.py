"""Recognised phones scored against exact ones (`eval/phone_recognition.py`)."""

from __future__ import annotations

import numpy as np

from ..speech.phones import BILABIALS, Phone

VOWELS = ("aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw")
FRAME_RATE = 100  # scoring frames per second (pocketsphinx's 10 ms)
NEAR = 0.03  # s: a recognised /p b m/ this close to a labelled one heard it


def frame_phones(phones: list[Phone], frames: int) -> np.ndarray:
    """Timed phones -> the phone symbol of each 10 ms frame (frames,) ("sil" where none)."""
    out = np.full(frames, "sil", dtype=object)
    for p in phones:
        out[int(round(p.start * FRAME_RATE)):int(round(p.end * FRAME_RATE))] = p.symbol
    return out


def recognition_scores(found: list[Phone], truth: list[Phone], seconds: float) -> dict[str, int]:
    """Counts for recognised phones `found` against exact phones `truth` over `seconds` of speech:
    10 ms frames and those whose phone is right, vowel frames and those right, labelled /p b m/ and
    those heard (a recognised one within NEAR s), and recognised /p b m/ with no labelled one that
    near (false closures). Counts, so that clips add up."""
    frames = int(seconds * FRAME_RATE)
    got, want = frame_phones(found, frames), frame_phones(truth, frames)
    vowel = np.isin(want, VOWELS)
    labelled = [(p.start, p.end) for p in truth if p.symbol in BILABIALS]
    heard = [(p.start, p.end) for p in found if p.symbol in BILABIALS]

    def near(span, spans) -> bool:
        return any(span[0] < b + NEAR and a < span[1] + NEAR for a, b in spans)

    return {"frames": frames, "right": int((got == want).sum()), "vowel_frames": int(vowel.sum()),
            "vowels_right": int((got[vowel] == want[vowel]).sum()), "bilabials": len(labelled),
            "bilabials_heard": sum(near(x, heard) for x in labelled), "false_bilabials": sum(not near(x, labelled) for x in heard)}
