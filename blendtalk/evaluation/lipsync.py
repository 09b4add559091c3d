"""Lip-sync metrics on real speech without ground-truth motion, from timed phones and the lip gap.

All functions are pure. `gap` is the rig's vertical lip opening per frame (`FaceRig.lip_gap`,
metres, 0 = lips touching as at rest), frame f sampled at time f / fps (blendtalk.speech.visemes).
A frame belongs to a phone when its time lies within the phone widened by half a frame on each
side, so every phone owns at least one frame and the frame-centre convention of
`phones_to_frames` is covered too.

* bilabial closure: share of /p b m/ phones during which the lips close (gap < CLOSURE_GAP at some frame).
* silence closure: share of pauses longer than MIN_SILENCE during which the lips close, and the
  share of closed frames inside pauses at least SILENCE_SETTLE from any speech phone.
* openness correlation: Pearson correlation, over vowel phones, of the peak lip gap with the
  vowel's openness (VOWEL_OPENNESS, from the IPA height of the vowel's nucleus); and vowel
  opening, the share of vowels where the lips part by at least CLOSURE_GAP (closure alone is easy:
  a mouth that never moves closes perfectly).
* jitter: mean norm of the frame-to-frame acceleration of the lip vertices, in m/s^2.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..constants import FPS
from ..speech.phones import BILABIALS, Phone

CLOSURE_GAP = 1e-3  # m: lips count as closed below a 1 mm opening (the rig's closed neutral is 0)
MIN_SILENCE = 0.15  # s: shorter pauses are within-phrase gaps where lips need not close
SILENCE_SETTLE = 0.1  # s: frames this far inside a pause are expected to be at rest
# Openness of the ARPAbet vowels: 1 - IPA height of the nucleus (close 0, near-close 1/6, close-mid
# 1/3, mid 1/2, open-mid 2/3, near-open 5/6, open 1), General American values.
VOWEL_OPENNESS = {
    "iy": 0.0, "uw": 0.0,  # /i/, /u/ close
    "ih": 1 / 6, "uh": 1 / 6,  # /ɪ/, /ʊ/ near-close
    "ey": 1 / 3, "ow": 1 / 3,  # /eɪ/, /oʊ/ close-mid nuclei
    "er": 0.5,  # /ɝ/ mid
    "eh": 2 / 3, "ah": 2 / 3, "ao": 2 / 3, "oy": 2 / 3,  # /ɛ/, /ʌ/, /ɔ/, /ɔɪ/ open-mid
    "ae": 5 / 6,  # /æ/ near-open
    "aa": 1.0, "ay": 1.0, "aw": 1.0,  # /ɑ/, /aɪ/, /aʊ/ open nuclei
}


def _check_gap(gap) -> np.ndarray:
    gap = np.asarray(gap, dtype=np.float64)
    if gap.ndim != 1 or gap.shape[0] == 0 or not np.isfinite(gap).all():
        raise ValueError(f"gap must be a finite (T,) lip opening per frame in metres, got shape {gap.shape}")
    return gap


def phone_frames(phone: Phone, num_frames: int, fps: float = FPS) -> np.ndarray:
    """Frame indices (n,) inside `phone` widened by half a frame each side, clipped to [0, T)."""
    lo = int(np.ceil((phone.start - 0.5 / fps) * fps - 1e-9))
    hi = int(np.floor((phone.end + 0.5 / fps) * fps + 1e-9))
    return np.arange(max(lo, 0), min(hi, num_frames - 1) + 1)


def bilabial_closure(gap, phones: Sequence[Phone], fps: float = FPS, threshold: float = CLOSURE_GAP) -> dict:
    """Share of /p b m/ phones with a frame whose lip gap (T,) is below `threshold` metres."""
    gap = _check_gap(gap)
    closed = [bool(gap[f].min() < threshold) for p in phones if p.symbol in BILABIALS
              if len(f := phone_frames(p, len(gap), fps))]
    return {"bilabial_closure": float(np.mean(closed)) if closed else float("nan"), "bilabials": len(closed)}


def silence_closure(gap, phones: Sequence[Phone], fps: float = FPS, threshold: float = CLOSURE_GAP,
                    min_silence: float = MIN_SILENCE, settle: float = SILENCE_SETTLE) -> dict:
    """Pauses ("sil") longer than `min_silence` s: share with a closed frame, and share of closed
    frames among pause frames at least `settle` s from every speech phone (clip edges are not speech)."""
    gap = _check_gap(gap)
    speech = [(p.start, p.end) for p in phones if p.symbol != "sil"]
    any_closed, settled = [], []
    for p in phones:
        if p.symbol != "sil" or p.end - p.start < min_silence:
            continue
        frames = phone_frames(p, len(gap), fps)
        if not len(frames):
            continue
        any_closed.append(bool(gap[frames].min() < threshold))
        t = frames / fps
        away = np.full(len(t), np.inf)
        for a, b in speech:
            away = np.minimum(away, np.maximum(np.maximum(a - t, t - b), 0.0))
        settled.extend((gap[frames[away >= settle]] < threshold).tolist())
    return {"silence_closure": float(np.mean(any_closed)) if any_closed else float("nan"),
            "silence_closed_frames": float(np.mean(settled)) if settled else float("nan"),
            "silences": len(any_closed)}


def openness_correlation(gap, phones: Sequence[Phone], fps: float = FPS, threshold: float = CLOSURE_GAP) -> dict:
    """Over vowel phones: Pearson r of the peak lip gap with VOWEL_OPENNESS (nan if undefined), and the
    share of vowels whose lips open to at least `threshold` (a mouth that never opens scores 0)."""
    gap = _check_gap(gap)
    peaks, openness = [], []
    for p in phones:
        if p.symbol in VOWEL_OPENNESS and len(f := phone_frames(p, len(gap), fps)):
            peaks.append(gap[f].max())
            openness.append(VOWEL_OPENNESS[p.symbol])
    r = float("nan")
    if len(peaks) > 2 and np.std(peaks) > 0 and np.std(openness) > 0:
        r = float(np.corrcoef(peaks, openness)[0, 1])
    opened = float(np.mean(np.asarray(peaks) >= threshold)) if peaks else float("nan")
    return {"openness_r": r, "vowel_opening": opened, "vowels": len(peaks)}


def lip_jitter(lip_vertices, fps: float = FPS) -> float:
    """Mean norm of the second time difference of lip vertices (..., T, L, 3) in m, times fps^2: m/s^2."""
    v = np.asarray(lip_vertices, dtype=np.float64)
    if v.ndim < 3 or v.shape[-1] != 3:
        raise ValueError(f"lip_vertices must have shape (..., T, L, 3), got {v.shape}")
    if v.shape[-3] < 3:
        return 0.0
    acc = v[..., 2:, :, :] - 2 * v[..., 1:-1, :, :] + v[..., :-2, :, :]  # (..., T-2, L, 3)
    return float(np.linalg.norm(acc, axis=-1).mean() * fps**2)


def lipsync_report(vertices, rig, phones: Sequence[Phone], fps: float = FPS,
                   threshold: float = CLOSURE_GAP) -> dict:
    """All metrics for one clip: vertices (T, V, 3) in metres on `rig`, phones covering the clip."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 3 or v.shape[1:] != (rig.num_vertices, 3):
        raise ValueError(f"vertices must have shape (T, {rig.num_vertices}, 3) on rig {rig.name!r}, got {v.shape}")
    gap = rig.lip_gap(v)  # (T,)
    out = {"frames": int(v.shape[0]), "closure_gap_mm": threshold * 1e3}
    out |= bilabial_closure(gap, phones, fps, threshold)
    out |= silence_closure(gap, phones, fps, threshold)
    out |= openness_correlation(gap, phones, fps, threshold)
    out["jitter_m_s2"] = lip_jitter(v[:, rig.mask("lips")], fps)
    out["mean_gap_mm"] = float(gap.mean() * 1e3)
    return out


__all__ = ["CLOSURE_GAP", "MIN_SILENCE", "SILENCE_SETTLE", "VOWEL_OPENNESS", "bilabial_closure", "lip_jitter",
           "lipsync_report", "openness_correlation", "phone_frames", "silence_closure"]
