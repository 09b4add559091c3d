"""Phones from speech: forced alignment and recognition (text to speech with exact timings is
`blendtalk.speech.tts`).

* `align` (forced alignment with a transcript) and `recognize_phones` (the words heard, aligned:
  `sphinx.Recogniser`) use pocketsphinx with the CMU en-US acoustic model, dictionary and LMs from its wheel.
* `phone_features` turns them into per-motion-frame one-hots (the phone set: blendtalk.speech.phones).
"""

from __future__ import annotations

import logging
import os
import re
import threading

import numpy as np

from ..constants import ASSETS_DIR, SAMPLE_RATE
from .phones import ARPABET, Phone, cover_phones, phones_to_frames, read_phone_labels
from .sphinx import Recogniser, align_decoder, aligned_phones
from .tts import EspeakTTS

logger = logging.getLogger(__name__)

# Parallel recognition (PhoneAligner(workers=N)) cuts no piece shorter: on 10 s of ARCTIC speech, pieces
# of 2 s or more kept allphone recognition's phone error rate against the labels at 0.41, as one pass;
# 1 s pieces raised it to 0.45. Not measured for the word pass, which loses the words' context at each cut.
MIN_PIECE_SECONDS = 2.0
ARCTIC_DIR = ASSETS_DIR / "audio"

# ---------------------------------------------------------------------------------------------
# Timed phone sequences


def load_arctic_fixture() -> tuple[np.ndarray, list[Phone], str]:
    """The shipped CMU ARCTIC utterance arctic_a0009: audio (S,) 16 kHz, its labelled phones, transcript."""
    from .audio import load_audio

    audio = load_audio(ARCTIC_DIR / "arctic_a0009.wav")
    phones = read_phone_labels(ARCTIC_DIR / "arctic_a0009.phones.txt")
    return audio, phones, (ARCTIC_DIR / "arctic_a0009.txt").read_text().strip()


# ---------------------------------------------------------------------------------------------
# pocketsphinx: forced alignment and recognition


def default_phone_workers(device_type: str) -> int:
    """Recognition processes for one clip (PhoneAligner(workers=...)) when none are asked for: on a
    GPU host the cores are otherwise idle (one per spare core, up to 8); on the CPU they run the models (0)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1)) if device_type == "cuda" else 0


class PhoneAligner:
    """pocketsphinx decoders (created on first use) for `align` and `recognize`.

    Reuse one instance: creating each decoder loads the acoustic model (about half a second). A
    decoder runs one utterance at a time, so calls from several threads take turns.

    workers > 1: `recognize` cuts audio of 4 s or more into up to `workers` pieces at quiet
    moments (`quiet_cuts`) and recognises them at once in that many processes (started on first
    use, each with its own `sphinx.Recogniser`; blendtalk.speech.phone_workers). On a GPU host, whose cores are
    otherwise idle, this cuts most of the audio front end's time.
    Alignment with a transcript always runs in this process.
    """

    def __init__(self, workers: int = 0) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a whole number >= 0 (0 or 1: recognise in this process), got {workers!r}")
        self.workers = workers
        self._lock = threading.RLock()  # align may fall back to recognize under the same lock
        self._aligner = None
        self._recogniser = None
        self._pool = None
        self._prefetched = None  # a phone_workers.BackgroundRecognition of the clip `recognize` is expected to get
        self._g2p: EspeakTTS | None = None

    def close(self) -> None:
        """Stop the recognition processes, if any were started (a later call starts them again)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _align_decoder(self):
        if self._aligner is None:
            self._aligner = align_decoder()
        return self._aligner

    def align(self, audio: np.ndarray, transcript: str, on_unknown: str = "g2p") -> list[Phone]:
        """Forced alignment of `transcript` to audio (S,) 16 kHz -> phones covering the audio.

        on_unknown: what to do with words missing from the CMU dictionary: "g2p" adds eSpeak's
        pronunciation (with a warning), "recognize" falls back to `recognize`, "error" raises.
        """
        with self._lock:
            return self._align(audio, transcript, on_unknown)

    def _align(self, audio: np.ndarray, transcript: str, on_unknown: str) -> list[Phone]:
        if on_unknown not in ("g2p", "recognize", "error"):
            raise ValueError(f"on_unknown must be 'g2p', 'recognize' or 'error', got {on_unknown!r}")
        pcm = _to_pcm16(audio)
        words = [w.strip("'") for w in re.findall(r"[a-z0-9']+", transcript.lower())]
        words = [w for w in words if w]
        if not words:
            raise ValueError(f"transcript has no words: {transcript!r}")
        decoder = self._align_decoder()
        unknown = sorted({w for w in words if decoder.lookup_word(w) is None})
        if unknown:
            if on_unknown == "error":
                raise ValueError(f"Words not in the pronunciation dictionary: {', '.join(unknown)}; "
                                 "respell them or use on_unknown='g2p'")
            if on_unknown == "recognize":
                logger.warning("Words %s are not in the dictionary; recognising phones without the transcript", unknown)
                return self.recognize(audio)
            logger.warning("Words %s are not in the dictionary; using eSpeak NG pronunciations", unknown)
            for word in unknown:
                decoder.add_word(word, " ".join(self._pronounce(word)), update=True)
        try:
            phones = aligned_phones(decoder, pcm, words)
        except RuntimeError as err:
            raise ValueError(f"Could not align the transcript to the audio ({err}); check that they match") from None
        return cover_phones(phones, len(audio) / SAMPLE_RATE)

    def _pronounce(self, word: str) -> list[str]:
        if self._g2p is None:
            self._g2p = EspeakTTS()
        _, phones = self._g2p.synthesize(word)
        symbols = [p.symbol.upper() for p in phones if p.symbol != "sil"]
        if not symbols:
            raise ValueError(f"No pronunciation could be made for {word!r}")
        return symbols

    def prefetch(self, audio: np.ndarray) -> bool:
        """Start recognising audio (S,) whole in a worker process now, for a later `recognize` of the
        same samples to collect (the phones recognising it here would give). For a process
        with other work to do first on the other core (the CLI loads its models meanwhile). Only
        where `recognize` would decode the clip whole (not cut into pieces); returns whether it started."""
        pcm = _to_pcm16(audio)
        if self._pieces(len(audio)) > 1:
            return False
        from .phone_workers import BackgroundRecognition

        with self._lock:
            self._prefetched = BackgroundRecognition(pcm)
        return True

    def recognize(self, audio: np.ndarray) -> list[Phone]:
        """Phones of audio (S,) 16 kHz without a transcript (`sphinx.Recogniser`: the words heard, aligned)."""
        with self._lock:
            return self._recognize(audio)

    def _pieces(self, samples: int) -> int:
        """How many pieces `recognize` cuts audio of `samples` into (1: decoded whole)."""
        return max(1, min(self.workers, int(samples / SAMPLE_RATE / MIN_PIECE_SECONDS)))

    def _recognize(self, audio: np.ndarray) -> list[Phone]:
        pcm = _to_pcm16(audio)
        duration = len(audio) / SAMPLE_RATE
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched.pcm == pcm:
            from .phone_workers import WorkerError

            try:
                return cover_phones(prefetched.result(), duration)
            except WorkerError as err:  # this process still can
                logger.warning("%s; recognising in this process", err)
        parts = self._pieces(len(audio))
        if parts > 1:
            from .phone_workers import PhoneWorkers, WorkerError

            self._pool = self._pool or PhoneWorkers(self.workers)
            cuts = [0, *quiet_cuts(audio, parts), len(audio)]
            try:
                found = self._pool.recognize([pcm[2 * a:2 * b] for a, b in zip(cuts, cuts[1:])])
            except WorkerError as err:  # e.g. a worker killed for memory: this process still can (and retries later)
                logger.warning("%s; recognising in this process", err)
            else:
                return cover_phones([Phone(p.symbol, p.start + a / SAMPLE_RATE, p.end + a / SAMPLE_RATE)
                                     for a, phones in zip(cuts, found) for p in phones], duration)
        if self._recogniser is None:
            self._recogniser = Recogniser(self._align_decoder())
        return cover_phones(self._recogniser(pcm), duration)


def quiet_cuts(audio: np.ndarray, parts: int, search: float = 0.25) -> list[int]:
    """Sample indices cutting audio (S,) into `parts` pieces of about equal length: cut k falls on
    the quietest 10 ms stretch within +-`search` s of k/parts of the way (pauses and closures, where
    a recogniser that starts afresh loses least). Returns parts - 1 increasing indices in (0, S)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    hop = SAMPLE_RATE // 100
    frames = len(audio) // hop
    if frames < 2 * parts:
        raise ValueError(f"{len(audio)} samples are too short to cut into {parts} pieces")
    energy = np.square(audio[: frames * hop].astype(np.float64)).reshape(frames, hop).sum(1)  # (F,) per 10 ms
    reach = max(1, int(search * 100))
    cuts, last = [], 0
    for k in range(1, parts):
        target = round(k * frames / parts)
        lo, hi = max(last + 1, target - reach), min(frames - 1, target + reach)
        f = lo + int(np.argmin(energy[lo:hi + 1])) if hi >= lo else max(last + 1, target)
        cuts.append(f * hop)
        last = f
    return cuts


def _to_pcm16(audio: np.ndarray) -> bytes:
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.shape[0] == 0:
        raise ValueError(f"audio must be a non-empty (S,) array at {SAMPLE_RATE} Hz, got {getattr(audio, 'shape', type(audio))}")
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


def align(audio: np.ndarray, transcript: str, aligner: PhoneAligner | None = None, on_unknown: str = "g2p") -> list[Phone]:
    """Forced alignment: audio (S,) 16 kHz + transcript -> phones covering the audio. See PhoneAligner.align."""
    return (aligner or PhoneAligner()).align(audio, transcript, on_unknown=on_unknown)


def recognize_phones(audio: np.ndarray, aligner: PhoneAligner | None = None) -> list[Phone]:
    """Phones recognised without a transcript: audio (S,) 16 kHz -> phones covering the audio."""
    return (aligner or PhoneAligner()).recognize(audio)


def phone_features(audio: np.ndarray, transcript: str | None = None, aligner: PhoneAligner | None = None) -> np.ndarray:
    """Frame-level phones for the "phonetic" audio front end: audio (S,) -> (T, len(ARPABET)) float32.

    One-hot of forced-aligned phones when a transcript is given (recognised phones if alignment
    fails or no transcript), at T = num_frames(S) motion frames.
    """
    from .audio import num_frames

    aligner = aligner or PhoneAligner()
    phones = None
    if transcript is not None:
        try:
            phones = aligner.align(audio, transcript)
        except ValueError as err:
            logger.warning("Alignment failed (%s); using phone recognition instead", err)
    if phones is None:
        phones = aligner.recognize(audio)
    ids = phones_to_frames(phones, num_frames(audio.shape[0]))
    return np.eye(len(ARPABET), dtype=np.float32)[ids]
