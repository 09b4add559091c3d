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
# 1 s pieces raised it to 0.45. The word pass loses a word cut in two, so the cuts seek pauses (below).
MIN_PIECE_SECONDS = 2.0
# A pause between words or sentences, the only place `pause_cuts` cuts: on clips of about 10 s cut
# in 2-4 pieces the word pass's frames were right as often as whole (76-78%, whole 76%; `python
# eval/phone_recognition.py --join 4 --pieces N`), and up to 2 points less cut inside words.
PAUSE_SECONDS = 0.15
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


def default_phone_workers(busy_cores: int = 0) -> int:
    """Recognition processes for one clip (PhoneAligner(workers=...)) when none are asked for: one per
    core that has nothing else to do meanwhile (`busy_cores` do: a GPU's feeder, the CLI's imports), up
    to 8. The models wait for the phones, so the pipeline's own process is not busy while they come."""
    return min(8, max(0, (os.cpu_count() or 1) - busy_cores))


class PhoneAligner:
    """pocketsphinx decoders (created on first use) for `align` and `recognize`.

    Reuse one instance: creating each decoder loads the acoustic model (about half a second). A
    decoder runs one utterance at a time, so calls from several threads take turns.

    workers > 1: `recognize` cuts audio of 4 s or more at pauses into up to `workers` pieces of about
    2 s or more (`pause_cuts`; a clip without pauses stays whole) and recognises them at once in that
    many processes (started on first use, each with its own `sphinx.Recogniser`;
    blendtalk.speech.phone_workers), using cores that would otherwise wait for the phones.
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

    def prefetch(self, audio: np.ndarray) -> None:
        """Start recognising audio (S,) in worker processes now (in the pieces `recognize` would cut it
        into, one process each), for a later `recognize` of the same samples to collect. For a process
        with other work to do first (the CLI loads its models meanwhile)."""
        from .phone_workers import BackgroundRecognition

        pcm = _to_pcm16(audio)
        with self._lock:
            self._prefetched = BackgroundRecognition(pcm, piece_bounds(audio, self.workers))

    def recognize(self, audio: np.ndarray) -> list[Phone]:
        """Phones of audio (S,) 16 kHz without a transcript (`sphinx.Recogniser`: the words heard, aligned)."""
        with self._lock:
            return self._recognize(audio)

    def _recognize(self, audio: np.ndarray) -> list[Phone]:
        from .phone_workers import PhoneWorkers, WorkerError

        pcm = _to_pcm16(audio)
        duration = len(audio) / SAMPLE_RATE
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched.pcm == pcm:
            try:
                return cover_phones(prefetched.result(), duration)
            except WorkerError as err:  # this process still can
                logger.warning("%s; recognising in this process", err)
        bounds = piece_bounds(audio, self.workers)
        if len(bounds) > 2:
            self._pool = self._pool or PhoneWorkers(self.workers)
            try:
                return cover_phones(self._pool.recognize_clip(pcm, bounds), duration)
            except WorkerError as err:  # e.g. a worker killed for memory: this process still can (and retries later)
                logger.warning("%s; recognising in this process", err)
        if self._recogniser is None:
            self._recogniser = Recogniser(self._align_decoder())
        return cover_phones(self._recogniser(pcm), duration)


def piece_bounds(audio: np.ndarray, workers: int) -> list[int]:
    """Where recognition in `workers` processes cuts audio (S,): sample indices [0, ..., S], at most
    one piece per worker, of about MIN_PIECE_SECONDS or more, cut at pauses (`pause_cuts`)."""
    parts = max(1, min(workers, int(len(audio) / SAMPLE_RATE / MIN_PIECE_SECONDS)))
    return [0, *(pause_cuts(audio, parts) if parts > 1 else []), len(audio)]


def pause_cuts(audio: np.ndarray, parts: int) -> list[int]:
    """Sample indices cutting audio (S,) into at most `parts` pieces of about equal length at pauses,
    where a recogniser that starts afresh loses nothing: cut k falls in the middle of the pause (at
    least `PAUSE_SECONDS` of quiet, `_quiet_frames`) nearest k/parts of the way, within a third of a
    piece; where there is none that near, that cut is left out (a cut inside a word loses the word).
    Returns up to parts - 1 increasing indices in (0, S)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    hop = SAMPLE_RATE // 100
    frames = len(audio) // hop
    if frames < 2 * parts:
        raise ValueError(f"{len(audio)} samples are too short to cut into {parts} pieces")
    energy = np.square(audio[: frames * hop].astype(np.float64)).reshape(frames, hop).sum(1)  # (F,) per 10 ms
    quiet = np.concatenate([[False], _quiet_frames(energy), [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))  # runs of quiet frames: [start, end) pairs
    pauses = [(a + b) // 2 for a, b in zip(edges[::2], edges[1::2]) if b - a >= PAUSE_SECONDS * 100]
    shift = frames // (3 * parts)
    cuts = []
    for k in range(1, parts):
        target = round(k * frames / parts)
        near = [f for f in pauses if (not cuts or f > cuts[-1]) and abs(f - target) <= shift]
        if near:
            cuts.append(min(near, key=lambda f: abs(f - target)))
    return [int(f) * hop for f in cuts]


def _quiet_frames(energy: np.ndarray) -> np.ndarray:
    """10 ms energies (F,) -> (F,) bool: at least 40 dB under the loudest frame, or, so that pauses in
    hiss count too, within 6 dB of the clip's noise floor (its 10th percentile) and 20 dB under the
    loudest (speech without pauses has its floor in the speech)."""
    peak = energy.max()
    return energy <= max(peak * 1e-4, min(np.percentile(energy, 10) * 4, peak * 1e-2))


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
