"""Phones from speech and text: TTS with exact timings, forced alignment, allphone recognition.

* `synthesize` speaks text with eSpeak NG (the shared library shipped in the `espeakng-loader`
  wheel, through ctypes) and returns the audio with the phone timings the synthesiser used, so the
  timings are exact rather than estimated. `FliteTTS` is an optional second engine (Debian `flite`).
* `align` (forced alignment with a transcript) and `recognize_phones` (allphone recognition) use
  pocketsphinx with the CMU en-US acoustic model, dictionary and phone LM from its wheel.
* `phone_features` turns them into per-motion-frame one-hots (the phone set: blendtalk.speech.phones).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..constants import ASSETS_DIR, SAMPLE_RATE
from .phones import ARPABET, PHONE_INDEX, Phone, cover_phones, phones_to_frames, read_phone_labels
from .sphinx import ALIGN_FRAME_RATE, allphone_decoder, allphone_segments, decode, sphinx_symbol

logger = logging.getLogger(__name__)

# A few curated, clearly different speakers from the bundled eSpeak NG data (accent + variant),
# for corpora that need several "speakers"; any name from EspeakTTS().voices(variants=True) works.
SPEAKER_VOICES = (
    "en-us", "en-us+f3", "en-gb-x-rp", "en+f2", "en-us+m3", "en-gb-scotland+m7", "en-029+f4",
    "en-us-nyc+m2",
)
VOICE_ALIASES = {"en-gb": "en"}  # accepted names -> eSpeak voice file names
ESPEAK_RATE_RANGE = (80, 450)  # words per minute accepted by espeak_SetParameter(espeakRATE)
# Parallel recognition (PhoneAligner(workers=N)) cuts no piece shorter: on 10 s of ARCTIC speech, pieces
# of 2 s or more keep the phone error rate against the labels at 0.41, as one pass; 1 s pieces raise it to 0.45.
MIN_PIECE_SECONDS = 2.0
ARCTIC_DIR = ASSETS_DIR / "audio"
# Pruning beams for the word-alignment pass. The recognition defaults (1e-48) prune the only
# path of a linear transcript grammar on synthetic or multi-sentence speech ("final result does
# not match the grammar"; 1e-100 still fails on 75 s of TTS). A grammar this small is cheap to
# search almost exhaustively: 126 s of speech aligns in about 6 s on one CPU core.
ALIGN_BEAMS = {"beam": 1e-200, "wbeam": 1e-200, "pbeam": 1e-200}

# eSpeak NG English phoneme mnemonics ("en"/"en-us" phoneme tables, Kirshenbaum-like names, stress
# marks stripped) -> ARPAbet. Entries with two phones (r-coloured vowels, syllabic l) split the
# eSpeak segment evenly. Variants carrying '#', '2', '[' etc. are allophones of the same phone.
ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    # pauses
    "_": ("sil",), "_:": ("sil",), "_!": ("sil",), "_;": ("sil",), "_^_": ("sil",),
    # vowels
    "@": ("ah",), "@2": ("ah",), "@5": ("ah",), "@-": ("ah",), "a#": ("ah",), "V": ("ah",),
    "3": ("er",), "3:": ("er",), "a": ("ae",), "aa": ("ae",), "a2": ("ae",), "A:": ("aa",),
    "A": ("aa",), "0": ("aa",), "O": ("ao",), "O:": ("ao",), "O2": ("ao",), "E": ("eh",),
    "e": ("eh",), "eI": ("ey",), "I": ("ih",), "I2": ("ih",), "I#": ("ih",), "i": ("iy",),
    "i:": ("iy",), "U": ("uh",), "u:": ("uw",), "u": ("uw",), "aI": ("ay",), "aI2": ("ay",),
    "aU": ("aw",), "OI": ("oy",), "oU": ("ow",), "oU#": ("ow",), "o": ("ow",),
    # r-coloured vowels and vowel + schwa
    "A@": ("aa", "r"), "O@": ("ao", "r"), "o@": ("ao", "r"), "e@": ("eh", "r"), "i@": ("ih", "r"),
    "i@3": ("ih", "r"), "U@": ("uh", "r"), "IR": ("ih", "r"), "VR": ("ah", "r"), "aI@": ("ay", "ah"),
    "aI3": ("ay", "er"), "aU@": ("aw", "ah"), "@L": ("ah", "l"),
    # consonants
    "p": ("p",), "b": ("b",), "t": ("t",), "t#": ("t",), "t2": ("t",), "t[": ("t",), "d": ("d",),
    "d#": ("d",), "k": ("k",), "g": ("g",), "f": ("f",), "v": ("v",), "T": ("th",), "D": ("dh",),
    "s": ("s",), "z": ("z",), "S": ("sh",), "Z": ("zh",), "h": ("hh",), "x": ("k",), "?": ("t",),
    "m": ("m",), "n": ("n",), "n-": ("n",), "N": ("ng",), "l": ("l",), "l/": ("l",), "r": ("r",),
    "r-": ("r",), "j": ("y",), ";": ("y",), "w": ("w",), "w#": ("w",), "W": ("w",),
    "tS": ("ch",), "dZ": ("jh",),
}
_STRESS_MARKS = "',%="
_VOWEL_START = "aeiouAEIOUV03@"

# eSpeak NG keeps one engine (voice, parameters, callback) per process inside the C library. This
# lock is not state of ours: it only serialises use of that process-wide engine between threads.
_ESPEAK_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes (API: espeak-ng/speak_lib.h, revision 12)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_CHARS_UTF8, _ENDPAUSE = 1, 0x1000
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def espeak_to_arpabet(mnemonic: str) -> tuple[tuple[str, ...], bool]:
    """Map one eSpeak phoneme mnemonic to ARPAbet phones; returns (phones, known).

    Unknown mnemonics fall back to the nearest class: a vowel-like name -> "ah", a consonant whose
    first letter is an ARPAbet consonant -> that consonant, anything else -> "sil".
    """
    name = mnemonic.lstrip(_STRESS_MARKS)
    if name in ESPEAK_TO_ARPABET:
        return ESPEAK_TO_ARPABET[name], True
    base = name.rstrip("#/-[]0123456789") if len(name) > 1 else name
    if base in ESPEAK_TO_ARPABET:
        return ESPEAK_TO_ARPABET[base], False
    if name[:1] and name[0] in _VOWEL_START:
        return ("ah",), False
    first = name[:1].lower()
    return ((first,) if first in PHONE_INDEX and first not in "aeiou" else ("sil",)), False


class EspeakTTS:
    """eSpeak NG text-to-speech with exact phone timings from its phoneme events.

    Holds the library handle and the callback; `synthesize` sets voice, rate and pitch on every
    call because the C library's engine is shared by the whole process.
    """

    def __init__(self, library_path: str | None = None, data_path: str | None = None) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(library_path or espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        self._lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.data_path = data_path or espeakng_loader.get_data_path()
        with _ESPEAK_LOCK:
            rate = self._lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), _INITIALIZE_PHONEME_EVENTS
            )
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed for data at {self.data_path}")
        self.sample_rate = int(rate)  # Hz, 22050 for the bundled voices
        self._warned: set[str] = set()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # kept alive as long as the library may call it

    def _on_synth(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                # `sample` is the exact output sample index (audio_position is the same in ms).
                self._events.append((events[i].id.string.decode("utf-8", "replace"), int(events[i].sample)))
            i += 1
        return 0

    def voices(self, variants: bool = False) -> list[str]:
        """English voice names in the bundled data; with `variants`, every 'lang+variant' pair too."""
        with _ESPEAK_LOCK:
            # SetVoiceByName takes the voice file's name, e.g. gmw/en-GB-x-rp -> "en-gb-x-rp".
            langs = [v.identifier.decode().split("/")[-1].lower() for v in self._list(None)
                     if v.identifier.startswith(b"gmw/en")]
            spec = _Voice(languages=b"variant")
            names = [v.identifier.decode().split("/")[-1] for v in self._list(ctypes.byref(spec))]
        langs = sorted(set(langs) - {"en-shaw"})  # Shavian is a script, not an accent
        if not variants:
            return langs
        return langs + [f"{lang}+{name}" for lang in langs for name in sorted(names)]

    def _list(self, spec) -> list[_Voice]:
        array, out, i = self._lib.espeak_ListVoices(spec), [], 0
        while array[i]:
            out.append(array[i].contents)
            i += 1
        return out

    def synthesize(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50
    ) -> tuple[np.ndarray, list[Phone]]:
        """Speak `text`; returns audio (S,) float32 at 16 kHz and phones covering [0, S / 16000].

        rate: words per minute (80..450); pitch: 0..100 (50 = the voice's normal pitch).
        """
        _check_text(text)
        if not ESPEAK_RATE_RANGE[0] <= rate <= ESPEAK_RATE_RANGE[1]:
            raise ValueError(f"rate must be {ESPEAK_RATE_RANGE[0]}..{ESPEAK_RATE_RANGE[1]} words per minute, got {rate}")
        if not 0 <= pitch <= 100:
            raise ValueError(f"pitch must be 0..100 (50 = normal), got {pitch}")
        data = text.encode("utf-8")
        lang, plus, variant = voice.partition("+")
        name = VOICE_ALIASES.get(lang.lower(), lang) + plus + variant
        with _ESPEAK_LOCK:
            found = self._lib.espeak_SetVoiceByName(name.encode()) == 0
            if found:
                self._synth(data, rate, pitch)
            chunks, events = self._chunks, self._events
            self._chunks, self._events = [], []
        if not found:
            raise ValueError(f"Unknown eSpeak voice {voice!r}; English voices: {', '.join(self.voices())} "
                             "(add '+f3', '+m3', ... for variants)")
        if not chunks:
            raise RuntimeError(f"eSpeak NG synthesis gave no audio for text {text[:40]!r}")
        native = np.concatenate(chunks).astype(np.float32) / 32768.0
        audio = _resample(native, self.sample_rate)
        return audio, cover_phones(self._phones(events, native.shape[0]), audio.shape[0] / SAMPLE_RATE)

    def _synth(self, data: bytes, rate: int, pitch: int) -> None:
        """Run the C synthesis; the callback fills self._chunks and self._events. Caller holds the lock."""
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._chunks, self._events = [], []
        err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err}")

    def _phones(self, events: list[tuple[str, int]], num_samples: int) -> list[Phone]:
        """Phoneme events (mnemonic, start sample) -> ARPAbet phones in seconds; each ends where the next starts."""
        segments = []
        bounds = [s for _, s in events] + [num_samples]
        for (mnemonic, start), end in zip(events, bounds[1:]):
            symbols, known = espeak_to_arpabet(mnemonic)
            if not known and mnemonic not in self._warned:
                self._warned.add(mnemonic)
                logger.warning("eSpeak phoneme %r is not in ESPEAK_TO_ARPABET; using %s", mnemonic, symbols)
            step = (end - start) / len(symbols)  # multi-phone mnemonics split their segment evenly
            for k, symbol in enumerate(symbols):
                a, b = start + k * step, start + (k + 1) * step  # samples at the engine's rate
                segments.append(Phone(symbol, a / self.sample_rate, b / self.sample_rate))
        return segments


class FliteTTS:
    """Optional second engine: the Debian `flite` binary, phone end times from `-psdur`.

    `FliteTTS.available()` says whether the binary is installed; the package never requires it.
    Flite voices have a fixed pitch, so only `pitch=50` is accepted.
    """

    FLITE_RENAME = {"pau": "sil", "ax": "ah", "axr": "er"}

    def __init__(self, executable: str | None = None) -> None:
        exe = executable or shutil.which("flite")
        if exe is None:
            raise RuntimeError("The flite binary is not installed (Debian/Ubuntu: apt-get install flite).")
        self.executable = exe

    @staticmethod
    def available() -> bool:
        return shutil.which("flite") is not None

    def voices(self) -> list[str]:
        out = subprocess.run([self.executable, "-lv"], capture_output=True, text=True, check=True).stdout
        return out.split(":", 1)[-1].split()

    def synthesize(self, text: str, voice: str = "slt", rate: int = 175, pitch: int = 50) -> tuple[np.ndarray, list[Phone]]:
        """Like `EspeakTTS.synthesize`; `voice` is a flite voice name (see `voices()`)."""
        import soundfile as sf

        _check_text(text)
        if voice not in self.voices():
            raise ValueError(f"Unknown flite voice {voice!r}; available: {', '.join(self.voices())}")
        if not ESPEAK_RATE_RANGE[0] <= rate <= ESPEAK_RATE_RANGE[1]:
            raise ValueError(f"rate must be {ESPEAK_RATE_RANGE[0]}..{ESPEAK_RATE_RANGE[1]} words per minute, got {rate}")
        if pitch != 50:
            raise ValueError(f"flite voices have a fixed pitch; use pitch=50 (got {pitch}) or another voice")
        with tempfile.TemporaryDirectory() as tmp:
            wav_path = str(Path(tmp) / "out.wav")
            cmd = [self.executable, "-voice", voice, "--setf", f"duration_stretch={175.0 / rate:.4f}",
                   "-psdur", "-t", text, "-o", wav_path]
            stdout = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            native, sr = sf.read(wav_path, dtype="float32")
        audio = _resample(native, sr)
        phones, start = [], 0.0
        for item in stdout.split():  # "hh:0.302" = phone and its end time in seconds
            symbol, _, end = item.rpartition(":")
            symbol = self.FLITE_RENAME.get(symbol, symbol)
            phones.append(Phone(symbol if symbol in PHONE_INDEX else "sil", start, float(end)))
            start = float(end)
        return audio, cover_phones(phones, audio.shape[0] / SAMPLE_RATE)


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, tts: EspeakTTS | FliteTTS | None = None
) -> tuple[np.ndarray, list[Phone]]:
    """Text to speech with exact phone timings: audio (S,) float32 at 16 kHz and its phones.

    The phones cover the audio from 0 to S / 16000 s without gaps ("sil" fills pauses). Pass a
    `tts` engine to reuse it across calls (creating an EspeakTTS takes a few milliseconds).
    """
    return (tts if tts is not None else EspeakTTS()).synthesize(text, voice=voice, rate=rate, pitch=pitch)


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not re.search(r"\w", text):
        raise ValueError(f"text must be a string with at least one word, got {text!r}")


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(audio, dtype=np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(SAMPLE_RATE, int(sample_rate))
    return resample_poly(audio, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Timed phone sequences


def load_arctic_fixture() -> tuple[np.ndarray, list[Phone], str]:
    """The shipped CMU ARCTIC utterance arctic_a0009: audio (S,) 16 kHz, its labelled phones, transcript."""
    from .audio import load_audio

    audio = load_audio(ARCTIC_DIR / "arctic_a0009.wav")
    phones = read_phone_labels(ARCTIC_DIR / "arctic_a0009.phones.txt")
    return audio, phones, (ARCTIC_DIR / "arctic_a0009.txt").read_text().strip()


# ---------------------------------------------------------------------------------------------
# pocketsphinx: forced alignment and allphone recognition


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
    use, each with its own decoder; blendtalk.speech.phone_workers). On a GPU host, whose cores are
    otherwise idle, this cuts most of the audio front end's time.
    Alignment with a transcript always runs in this process.
    """

    def __init__(self, workers: int = 0) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a whole number >= 0 (0 or 1: recognise in this process), got {workers!r}")
        self.workers = workers
        self._lock = threading.RLock()  # align may fall back to recognize under the same lock
        self._aligner = None
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
            from pocketsphinx import Decoder

            # lm=None: alignment builds its own search from the transcript; no N-gram LM needed.
            self._aligner = Decoder(samprate=SAMPLE_RATE, lm=None, bestpath=False, loglevel="FATAL", **ALIGN_BEAMS)
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
            decoder.set_align_text(" ".join(words))
            decode(decoder, pcm)  # pass 1: word alignment
            decoder.set_alignment()
            decode(decoder, pcm)  # pass 2: phone and state alignment within those words
            entries = list(decoder.get_alignment().phones())
        except RuntimeError as err:
            raise ValueError(f"Could not align the transcript to the audio ({err}); check that they match") from None
        phones = [Phone(sphinx_symbol(e.name), e.start / ALIGN_FRAME_RATE, (e.start + e.duration) / ALIGN_FRAME_RATE)
                  for e in entries]
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
        same samples to collect (the same phones: a fresh decoder on the same audio). For a process
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
        """Allphone recognition (phone bigram LM, no transcript) of audio (S,) 16 kHz -> phones."""
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
        # A new decoder per clip, 0.1-0.3 s: a used one gives the same clip other phones (allphone_segments).
        return cover_phones(allphone_segments(allphone_decoder(), pcm), duration)


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
