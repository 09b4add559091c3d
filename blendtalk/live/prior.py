"""The live normalisations' starting point, pooled over many voices.

A live stream normalises its log-mel by running statistics and pocketsphinx normalises its cepstra
by a running mean; both start from a prior (`speech_stream.SpeechPrior`) that weighs as much as 3 s
of the stream's own audio. A prior taken from one recording carries that voice into the first
seconds of every other (docs/live.md, Quality). Here each voice's statistics are measured
(`voice_stats`), pooled with equal weight per voice (`pool`), and kept with the recipe in a small
JSON asset (`save_prior` / `load_prior`, built by `tools/build_live_prior.py`).

Pooling, per mel band (80,): the prior mean is the mean of the voices' means; the prior spread is
the voices' mean within-voice variance ("within", the spread a clip's own normalisation divides
by), or that plus the variance of the voices' means ("total", the spread of all frames pooled
with equal weight per voice). pocketsphinx's cepstral mean (13,) is the mean of the voices' means.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..constants import ASSETS_DIR, SAMPLE_RATE
from ..speech.features import PHONETIC_MELS
from .speech_stream import SpeechPrior

PRIOR_PATH = ASSETS_DIR / "live" / "prior.json"
PRIOR_FORMAT = "blendtalk-live-prior"
PRIOR_VERSION = 1
CEPSTRA = 13  # pocketsphinx's cepstral mean: 13 MFCCs (c0..c12) as a comma-separated string
SPREADS = ("within", "total")
DIGITS = 6  # significant digits kept in the JSON: far below the spread between voices, and a stable file


@dataclass(frozen=True, eq=False)
class VoiceStats:
    """One voice's statistics: log-mel mean and variance (80,) over its frames, pocketsphinx's
    batch cepstral mean (13,) over its audio, and where it came from (`source`: a recording's file
    name or "espeak"; `voice` and `pitch` for synthesised speech)."""

    name: str
    source: str
    seconds: float
    mel_mean: np.ndarray
    mel_var: np.ndarray
    cepstral_mean: np.ndarray
    voice: str = ""
    pitch: int | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "voice": self.voice, "pitch": self.pitch,
                "seconds": round(self.seconds, 3), "mel_mean": _rounded(self.mel_mean),
                "mel_var": _rounded(self.mel_var), "cepstral_mean": _rounded(self.cepstral_mean)}

    @classmethod
    def from_json(cls, d: dict) -> "VoiceStats":
        return cls(str(d["name"]), str(d["source"]), float(d["seconds"]), _vector(d, "mel_mean", PHONETIC_MELS),
                   _vector(d, "mel_var", PHONETIC_MELS, positive=True), _vector(d, "cepstral_mean", CEPSTRA),
                   str(d.get("voice") or ""), None if d.get("pitch") is None else int(d["pitch"]))


def parse_cmn(text: str) -> np.ndarray:
    """pocketsphinx's cepstral mean string ("c0,c1,...") -> (13,) float64; ValueError if malformed."""
    try:
        values = np.array([float(v) for v in text.split(",")], np.float64)
    except (AttributeError, ValueError):
        raise ValueError(f"a cepstral mean is {CEPSTRA} comma-separated numbers, got {text!r:.80}") from None
    if values.shape != (CEPSTRA,) or not np.isfinite(values).all():
        raise ValueError(f"a cepstral mean is {CEPSTRA} finite numbers, got {len(values)}")
    return values


def format_cmn(values: np.ndarray) -> str:
    """(13,) -> the comma-separated string `Decoder.set_cmn` takes."""
    return ",".join(f"{float(v):.6g}" for v in values)


def voice_stats(name: str, clips: Sequence[np.ndarray], source: str = "espeak", voice: str = "",
                pitch: int | None = None) -> VoiceStats:
    """Statistics of one voice's clips [(S,) float32 at 16 kHz]: log-mel per clip (the file path's
    framing) pooled over all frames; the cepstral mean of the clips decoded as one utterance."""
    from ..speech.audio import log_mel
    from ..speech.phonetics import _to_pcm16
    from ..speech.sphinx import allphone_decoder, decode

    if not clips or any(len(c) < SAMPLE_RATE // 10 for c in clips):
        raise ValueError(f"voice {name!r}: give one or more clips of at least 0.1 s each")
    mel = np.concatenate([log_mel(c) for c in clips]).astype(np.float64)  # (T, 80)
    audio = np.concatenate(clips)
    decoder = allphone_decoder()  # a new one: a decoder's state carries over from what it decoded before
    decode(decoder, _to_pcm16(audio))
    return VoiceStats(name, source, len(audio) / SAMPLE_RATE, mel.mean(0), mel.var(0),
                      parse_cmn(decoder.get_cmn()), voice, pitch)


def pool(voices: Sequence[VoiceStats], spread: str = "within") -> SpeechPrior:
    """Equal-weight pool of voices -> a SpeechPrior (mel mean, std (80,), cepstral mean string).

    spread "within": the mean of the voices' variances; "total": plus the variance of their means."""
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread!r}")
    if not voices:
        raise ValueError("pool needs at least one voice")
    means = np.stack([v.mel_mean for v in voices])  # (N, 80)
    mean = means.mean(0)
    var = np.stack([v.mel_var for v in voices]).mean(0)
    if spread == "total":
        var = var + np.square(means - mean).mean(0)
    cmn = np.stack([v.cepstral_mean for v in voices]).mean(0)  # (N, 13) -> (13,)
    return SpeechPrior(mean.astype(np.float32), np.sqrt(var).astype(np.float32), format_cmn(cmn))


def save_prior(path: Path, voices: Sequence[VoiceStats], spread: str, recipe: dict) -> SpeechPrior:
    """Write the voices, the recipe and their pool to `path` (JSON); returns the pool as loaded back."""
    voices = [VoiceStats.from_json(v.to_json()) for v in voices]  # pool what the file will hold
    prior = pool(voices, spread)
    doc = {"format": PRIOR_FORMAT, "version": PRIOR_VERSION, "spread": spread, "recipe": recipe,
           "pooled": {"mel_mean": _rounded(prior.mel_mean), "mel_std": _rounded(prior.mel_std),
                      "cepstral_mean": _rounded(parse_cmn(prior.cepstral_mean))},
           "voices": [v.to_json() for v in voices]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_prior(doc))
    return load_prior(path)


def dump_prior(doc: dict) -> str:
    """A prior document as JSON text, each list of numbers on one line (a readable, diffable file)."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[\s*(-?[0-9][^\[\]\"]*?)\s*\]", lambda m: "[" + " ".join(m[1].split()) + "]", text) + "\n"


def read_prior(path: Path = PRIOR_PATH) -> tuple[dict, list[VoiceStats]]:
    """The prior file's document and its voices; ValueError (or FileNotFoundError) saying what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != PRIOR_FORMAT or doc.get("version") != PRIOR_VERSION:
        raise ValueError(f"{path} is not a {PRIOR_FORMAT} file, version {PRIOR_VERSION}")
    try:
        voices = [VoiceStats.from_json(v) for v in doc["voices"]]
        if doc.get("spread") not in SPREADS:
            raise ValueError(f"spread must be one of {SPREADS}")
        _vector(doc["pooled"], "mel_mean", PHONETIC_MELS)
        _vector(doc["pooled"], "mel_std", PHONETIC_MELS, positive=True)
        _vector(doc["pooled"], "cepstral_mean", CEPSTRA)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad or missing field ({err})") from None
    if not voices:
        raise ValueError(f"{path} holds no voices")
    return doc, voices


def load_prior(path: Path = PRIOR_PATH, exclude: Iterable[str] = ()) -> SpeechPrior:
    """The pooled prior of a prior file; `exclude`: voices (a voice's `name`, `voice` or recording
    `source`) left out and the rest pooled again, to score a clip whose voice is in the pool."""
    doc, voices = read_prior(path)
    exclude = set(exclude)
    if not exclude:
        p = doc["pooled"]
        return SpeechPrior(_vector(p, "mel_mean", PHONETIC_MELS).astype(np.float32),
                           _vector(p, "mel_std", PHONETIC_MELS).astype(np.float32),
                           format_cmn(_vector(p, "cepstral_mean", CEPSTRA)))
    kept = held_out(voices, exclude)[0]
    if not kept:
        raise ValueError(f"{path}: no voice left after leaving out {sorted(exclude)}")
    return pool(kept, doc["spread"])


def held_out(voices: Sequence[VoiceStats], exclude: set[str]) -> tuple[list[VoiceStats], list[str]]:
    """(voices kept, names left out) for the names, voices or sources in `exclude`."""
    out = [bool({v.name, v.voice, v.source} & exclude) for v in voices]
    return [v for v, o in zip(voices, out) if not o], [v.name for v, o in zip(voices, out) if o]


def _rounded(x: np.ndarray) -> list[float]:
    return [float(f"{float(v):.{DIGITS}g}") for v in np.asarray(x).ravel()]


def _vector(d: dict, key: str, n: int, positive: bool = False) -> np.ndarray:
    x = np.asarray(d[key], np.float64)
    if x.shape != (n,) or not np.isfinite(x).all() or (positive and not (x > 0).all()):
        raise ValueError(f"{key} must be {n} finite{' positive' if positive else ''} numbers, got shape {x.shape}")
    return x


__all__ = ["PRIOR_PATH", "VoiceStats", "voice_stats", "pool", "save_prior", "read_prior", "load_prior",
           "parse_cmn", "format_cmn", "held_out"]
