"""Text to speech with exact phone timings.

`synthesize` speaks text with eSpeak NG (the shared library shipped in the `espeakng-loader` wheel,
through ctypes) and returns the audio with the phone timings the synthesiser used, so the timings
are exact rather than estimated; eSpeak's phoneme mnemonics become ARPAbet (`ESPEAK_TO_ARPABET`).
`FliteTTS` is an optional second engine (Debian `flite`). Audio comes back at 16 kHz.
"""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..constants import SAMPLE_RATE
from .phones import PHONE_INDEX, Phone, cover_phones

logger = logging.getLogger(__name__)

# A few curated, clearly different speakers from the bundled eSpeak NG data (accent + variant),
# for corpora that need several "speakers"; any name from EspeakTTS().voices(variants=True) works.
SPEAKER_VOICES = (
    "en-us", "en-us+f3", "en-gb-x-rp", "en+f2", "en-us+m3", "en-gb-scotland+m7", "en-029+f4",
    "en-us-nyc+m2",
)
VOICE_ALIASES = {"en-gb": "en"}  # accepted names -> eSpeak voice file names
ESPEAK_RATE_RANGE = (80, 450)  # words per minute accepted by espeak_SetParameter(espeakRATE)

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
        raise ValueError(f"the text to speak has no words (got {text!r:.40}): type a sentence with letters or digits")


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(audio, dtype=np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(SAMPLE_RATE, int(sample_rate))
    return resample_poly(audio, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
