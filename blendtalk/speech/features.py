"""Speech in, model inputs out: phones and phonetic-encoder features from audio or from text.

Three ways to get the phones a clip's features are built from, all ending in the same
(T, len(ARPABET) + 80) array that `blendtalk.models.audio_encoders.PhoneticEncoder` reads:

* `speech_features(audio, transcript)`: forced alignment of the transcript (pocketsphinx), the
  best a user can give; falls back to recognition when alignment fails.
* `speech_features(audio)`: recognition without a transcript (the words pocketsphinx hears,
  aligned: `speech.sphinx.Recogniser`; noisier phones, and the log-mel half of the features
  carries the rest).
* `text_features(text)`: text -> eSpeak NG speech with the exact phones the synthesiser used.

`FeatureCache` stores those per sentence of a corpus (phones as timed segments, log-mel as float16)
so that training on another machine needs neither pocketsphinx nor librosa: `FeatureCache.load`
imports only numpy, and assembling features from it is pure numpy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..constants import FPS, SAMPLE_RATE
from .audio import num_frames
from .phones import ARPABET, PHONE_INDEX, Phone, phones_to_frames

logger = logging.getLogger(__name__)

PHONE_SOURCES = ("exact", "aligned", "recognized")  # TTS phones, forced alignment, recognition
CACHE_FORMAT = "blendtalk-phonetic-features-v1"
PHONETIC_MELS = 80  # log-mel bands appended to the phone one-hots (blendtalk.speech.audio.log_mel's default)


@dataclass(frozen=True)
class SpeechFeatures:
    """One clip ready for a speech driver.

    audio: (S,) float32 at 16 kHz. phones: timed ARPAbet phones covering the audio.
    phone_source: one of PHONE_SOURCES. features: (T, len(ARPABET) + 80) float32 phonetic-encoder
    inputs at 30 fps, T = audio.num_frames(S).
    """

    audio: np.ndarray
    phones: tuple[Phone, ...]
    phone_source: str
    features: np.ndarray

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]


def _check_audio(audio) -> np.ndarray:
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.shape[0] == 0:
        raise ValueError(f"audio must be a non-empty (S,) float array at {SAMPLE_RATE} Hz (see blendtalk.speech.audio.load_audio), "
                         f"got {getattr(audio, 'shape', type(audio).__name__)}")
    return audio.astype(np.float32, copy=False)


def phonetic_inputs(phone_ids: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """Phonetic encoder inputs from their parts: phone indices (T,) into ARPABET and log-mel (T, 80)
    -> (T, len(ARPABET) + 80) float32, one-hot phones first. Pure numpy (no pocketsphinx, no librosa)."""
    phone_ids, mel = np.asarray(phone_ids), np.asarray(mel)
    if phone_ids.ndim != 1 or mel.ndim != 2 or mel.shape[0] != phone_ids.shape[0]:
        raise ValueError(f"need phone_ids (T,) and mel (T, n_mels) with the same T, got {phone_ids.shape} and {mel.shape}")
    if phone_ids.size and (phone_ids.min() < 0 or phone_ids.max() >= len(ARPABET)):
        raise ValueError(f"phone indices must lie in [0, {len(ARPABET)}) (ARPABET), got {phone_ids.min()}..{phone_ids.max()}")
    one_hot = np.eye(len(ARPABET), dtype=np.float32)[phone_ids]  # (T, 40)
    return np.concatenate([one_hot, mel.astype(np.float32)], axis=1)


def speech_phones(audio: np.ndarray, transcript: str | None = None, aligner=None) -> tuple[list[Phone], str]:
    """Phones of audio (S,) at 16 kHz and how they were found ("aligned" or "recognized").

    With a transcript: forced alignment; if that fails (words and audio do not match), a warning
    and recognition. `aligner`: a reusable blendtalk.speech.phonetics.PhoneAligner.
    """
    from .phonetics import PhoneAligner

    audio = _check_audio(audio)
    aligner = aligner or PhoneAligner()
    if transcript is not None and transcript.strip():
        try:
            return aligner.align(audio, transcript), "aligned"
        except ValueError as err:
            logger.warning("Alignment failed (%s); recognising phones without the transcript", err)
    return aligner.recognize(audio), "recognized"


def features_from_phones(audio: np.ndarray, phones: Sequence[Phone], phone_source: str) -> SpeechFeatures:
    """SpeechFeatures of audio (S,) with phones already known (e.g. from TTS or a label file)."""
    from .audio import log_mel

    audio = _check_audio(audio)
    if phone_source not in PHONE_SOURCES:
        raise ValueError(f"phone_source must be one of {PHONE_SOURCES}, got {phone_source!r}")
    t = num_frames(audio.shape[0])
    feats = phonetic_inputs(phones_to_frames(phones, t), log_mel(audio, n_mels=PHONETIC_MELS))
    return SpeechFeatures(audio, tuple(phones), phone_source, feats)


def speech_features(audio: np.ndarray, transcript: str | None = None, aligner=None) -> SpeechFeatures:
    """Audio (S,) at 16 kHz (+ optional transcript) -> phones and phonetic-encoder features."""
    phones, source = speech_phones(audio, transcript, aligner)
    return features_from_phones(audio, phones, source)


def text_features(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, tts=None) -> SpeechFeatures:
    """Text -> eSpeak NG speech (audio (S,) at 16 kHz) with its exact phones -> features."""
    from .tts import synthesize

    audio, phones = synthesize(text, voice=voice, rate=rate, pitch=pitch, tts=tts)
    return features_from_phones(np.clip(audio, -1.0, 1.0), phones, "exact")


def phonetic_features(audio: np.ndarray, transcript: str | None = None, aligner=None) -> np.ndarray:
    """Inputs of the phonetic encoder: audio (S,) at 16 kHz -> (T, len(ARPABET) + 80) float32.

    One-hot phones (forced-aligned with `transcript` when given, else recognised) followed by
    80 log-mel bands, both at T = num_frames(S) frames. `aligner`: a reusable
    blendtalk.speech.phonetics.PhoneAligner (creating one loads the acoustic model).
    See `speech_features` for the same with the phones returned.
    """
    from .audio import log_mel
    from .phonetics import PhoneAligner

    phones, _ = speech_phones(audio, transcript, aligner or PhoneAligner())
    return phonetic_inputs(phones_to_frames(phones, num_frames(audio.shape[0])), log_mel(audio, n_mels=PHONETIC_MELS))


def driver_inputs(model, speech: SpeechFeatures) -> torch.Tensor:
    """What `model.generate` reads for this clip: (1, T, F) features (phonetic) or (1, S) audio (wav2vec2)."""
    if model.config.encoder.kind == "phonetic":
        return torch.from_numpy(speech.features)[None]
    return torch.from_numpy(speech.audio)[None]


@torch.no_grad()
def animate_speech(model, speech: SpeechFeatures, speaker=None, rig=None) -> np.ndarray:
    """FaceFormer displacements (T, V, 3) float32 in metres for one clip, on the model's device.

    speaker: a training style index, a (num_speakers,) weight vector, or None for the uniform
    mixture of all training styles (a new voice belongs to none of them). rig: the rig the model
    animates; given, the lips are closed at the clip's /p b m/ frames (`visemes.seal_bilabials`),
    as the product does; None: the model's own output.
    """
    device = next(model.parameters()).device
    n = model.config.num_speakers
    if speaker is None:
        style = torch.full((1, n), 1.0 / n)
    elif isinstance(speaker, (int, np.integer)):
        style = torch.tensor([int(speaker)])
    else:
        style = torch.as_tensor(np.asarray(speaker, dtype=np.float32)).reshape(1, -1)
    out = model.generate(driver_inputs(model, speech).to(device), speech.num_frames, style.to(device))
    d = out[0].float().cpu().numpy()
    if rig is None:
        return d
    from .visemes import seal_bilabials

    return seal_bilabials(d, phones_to_frames(speech.phones, speech.num_frames), rig)


# ---------------------------------------------------------------------------------------------
# Feature cache: per sentence of a corpus, the phones of every source and the log-mel


class FeatureCache:
    """Phones (timed segments per source) and float16 log-mel per sequence name, from one .npz.

    `features(name, source)` -> (T, len(ARPABET) + 80) float32, the same array `speech_features`
    gives (up to float16 rounding of the log-mel). Loading needs only numpy.
    """

    def __init__(self, names: Sequence[str], num_samples: np.ndarray, mel: np.ndarray, offsets: np.ndarray,
                 phones: dict[str, dict[str, list[Phone]]], meta: dict | None = None):
        self.names = tuple(names)
        self._row = {n: i for i, n in enumerate(self.names)}
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        self.mel, self.offsets = mel, np.asarray(offsets, dtype=np.int64)
        self.phones = phones  # source -> name -> phones
        self.meta = dict(meta or {})

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in PHONE_SOURCES if s in self.phones)

    def __contains__(self, name: str) -> bool:
        return name in self._row

    def num_frames(self, name: str) -> int:
        i = self._index(name)
        return int(self.offsets[i + 1] - self.offsets[i])

    def duration(self, name: str) -> float:
        """Seconds of the audio the features were computed from."""
        return float(self.num_samples[self._index(name)]) / SAMPLE_RATE

    def _index(self, name: str) -> int:
        if name not in self._row:
            raise KeyError(f"sequence {name!r} is not in the feature cache ({len(self.names)} sequences, e.g. "
                           f"{list(self.names[:3])}); rebuild it for this corpus with --cache-features")
        return self._row[name]

    def log_mel(self, name: str) -> np.ndarray:
        i = self._index(name)
        return self.mel[self.offsets[i]:self.offsets[i + 1]].astype(np.float32)  # (T, 80)

    def phone_ids(self, name: str, source: str) -> np.ndarray:
        """(T,) indices into ARPABET of `source`'s phones on this sequence's frames."""
        t = self.num_frames(name)  # unknown names raise here, with the fix in the message
        if source not in self.phones:
            raise ValueError(f"the feature cache has phone sources {self.sources}, not {source!r}")
        return phones_to_frames(self.phones[source][name], t)

    def features(self, name: str, source: str = "aligned") -> np.ndarray:
        return phonetic_inputs(self.phone_ids(name, source), self.log_mel(name))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"names": np.array(self.names), "num_samples": self.num_samples, "offsets": self.offsets,
                  "mel": self.mel.astype(np.float16),
                  "meta": np.array(json.dumps({**self.meta, "format": CACHE_FORMAT, "arpabet": list(ARPABET),
                                               "fps": FPS, "sample_rate": SAMPLE_RATE, "n_mels": self.mel.shape[1]}))}
        for source, by_name in self.phones.items():
            rows = [(i, PHONE_INDEX[p.symbol], p.start, p.end) for i, n in enumerate(self.names) for p in by_name[n]]
            arrays[f"{source}_seq"] = np.array([r[0] for r in rows], dtype=np.int32)
            arrays[f"{source}_phone"] = np.array([r[1] for r in rows], dtype=np.uint8)
            arrays[f"{source}_times"] = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 2)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureCache:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature cache {path} not found; make one with "
                                    "`python train/train_faceformer.py --cache-features FILE.npz`")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != CACHE_FORMAT or tuple(meta.get("arpabet", ())) != ARPABET:
                raise ValueError(f"{path} is not a {CACHE_FORMAT} file for this blendtalk's phone set")
            if meta.get("fps") != FPS or meta.get("n_mels") != PHONETIC_MELS:
                raise ValueError(f"{path} holds features at {meta.get('fps')} fps with {meta.get('n_mels')} mels; "
                                 f"this blendtalk needs {FPS} fps and {PHONETIC_MELS}")
            names = [str(n) for n in z["names"]]
            phones = {}
            for source in PHONE_SOURCES:
                if f"{source}_seq" not in z.files:
                    continue
                by_name: dict[str, list[Phone]] = {n: [] for n in names}
                for i, k, (a, b) in zip(z[f"{source}_seq"], z[f"{source}_phone"], z[f"{source}_times"]):
                    by_name[names[i]].append(Phone(ARPABET[k], float(a), float(b)))
                phones[source] = by_name
            return cls(names, z["num_samples"], z["mel"], z["offsets"], phones, meta)


def build_feature_cache(clips: Iterable[tuple[str, np.ndarray, str | None, Sequence[Phone] | None]],
                        recognize: bool = True, progress: bool = True) -> FeatureCache:
    """Compute a FeatureCache from (name, audio (S,) at 16 kHz, transcript or None, exact phones or None).

    Every clip gets the log-mel; "aligned" phones where a transcript is given (recognised ones where
    alignment fails or there is none, so every clip has the source), "recognized" phones when
    `recognize`, and "exact" phones where given. Needs pocketsphinx and librosa.
    """
    from tqdm import tqdm

    from .audio import log_mel
    from .phonetics import PhoneAligner

    aligner = PhoneAligner()
    names, samples, mels, offsets = [], [], [], [0]
    phones: dict[str, dict[str, list[Phone]]] = {}
    counts = {"aligned": 0, "alignment_fallback": 0}
    for name, audio, transcript, exact in tqdm(list(clips), desc="phonetic features", unit="clip", disable=not progress):
        audio = _check_audio(audio)
        found, how = speech_phones(audio, transcript, aligner)
        counts["aligned" if how == "aligned" else "alignment_fallback"] += transcript is not None
        mel = log_mel(audio, n_mels=PHONETIC_MELS).astype(np.float16)
        names.append(name)
        samples.append(audio.shape[0])
        mels.append(mel)
        offsets.append(offsets[-1] + len(mel))
        phones.setdefault("aligned", {})[name] = found
        if recognize:
            phones.setdefault("recognized", {})[name] = found if how == "recognized" else aligner.recognize(audio)
        if exact is not None:
            phones.setdefault("exact", {})[name] = list(exact)
    if "exact" in phones and len(phones["exact"]) != len(names):
        raise ValueError("exact phones must be given for every clip or for none")
    mel = np.concatenate(mels) if mels else np.zeros((0, PHONETIC_MELS), np.float16)
    return FeatureCache(names, np.array(samples), mel, np.array(offsets), phones, meta={"counts": counts})


__all__ = ["CACHE_FORMAT", "FeatureCache", "PHONE_SOURCES", "SpeechFeatures", "animate_speech", "build_feature_cache",
           "driver_inputs", "features_from_phones", "speech_features", "speech_phones", "text_features"]
