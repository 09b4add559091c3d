"""Speech for the benchmarks: the shipped 3 s clips with their transcripts, and longer clips made
of them (eval/end_to_end.py, eval/app_latency.py, eval/load_test.py); sentences said by TTS voices
with their exact phones (eval/voices_lipsync.py, eval/phone_recognition.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import ASSETS_DIR

CLIPS = [  # (audio, transcript): short shipped speech, 3 s each
    (ASSETS_DIR / "audio/arctic_a0009.wav", ASSETS_DIR / "audio/arctic_a0009.txt"),
    (ASSETS_DIR / "examples/tts_surprised.wav", ASSETS_DIR / "examples/tts_surprised.txt"),
    (ASSETS_DIR / "examples/tts_sad.wav", ASSETS_DIR / "examples/tts_sad.txt"),
]
PAUSE_S = 0.3  # s of silence between the clips of a long one


def long_clip(seconds: float, folder: Path) -> tuple[Path, str]:
    """A wav of `seconds` (written into `folder`): the shipped clips in turn, each whole, then silence,
    and its transcript. Whole clips, so that the transcript fits the audio (a clip cut short left
    words in the transcript that the audio lacks, and forced alignment failed); at least one clip,
    however short `seconds`."""
    import soundfile as sf

    parts, words, total, sr = [], [], 0.0, None
    while True:
        audio, transcript = CLIPS[len(words) % len(CLIPS)]
        x, sr_i = sf.read(str(audio), dtype="float32")
        if sr is None:
            sr = sr_i
        elif sr_i != sr:
            raise RuntimeError(f"{audio} is at {sr_i} Hz, the others at {sr} Hz")
        if words and total + len(x) / sr > seconds:
            break
        parts += [x, np.zeros(int(PAUSE_S * sr), np.float32)]
        words.append(transcript.read_text().strip())
        total += len(x) / sr + PAUSE_S
    n = max(int(seconds * sr), len(parts[0]))  # the first clip whole, however short `seconds`
    x = np.concatenate(parts)[:n]  # the last clip's pause may reach past `seconds`
    x = np.pad(x, (0, n - len(x)))
    path = folder / "speech.wav"
    sf.write(str(path), x, sr)
    return path, " ".join(words)


TTS_ENGINES = ("espeak", "flite")


def tts_voice(spec: str) -> str:
    """"ENGINE:VOICE" with ENGINE espeak or flite, as an argparse type (its error says the form expected)."""
    import argparse

    engine, _, voice = str(spec).partition(":")
    if engine not in TTS_ENGINES or not voice:
        raise argparse.ArgumentTypeError(f"give ENGINE:VOICE with ENGINE flite or espeak, got {spec!r}")
    return spec


def add_voice_arguments(parser, voices) -> None:
    """--voices (default `voices`) and --rate on an eval script's argparse parser, for `voice_clips`."""
    parser.add_argument("--voices", nargs="+", type=tts_voice, default=list(voices), help="ENGINE:VOICE, ENGINE flite or espeak")
    parser.add_argument("--rate", type=int, default=175, help="words per minute")


def voice_clips(voices, sentences, rate: int):
    """Each voice ("ENGINE:VOICE") saying each sentence at `rate` words a minute -> yields (voice,
    sentence, audio (S,) at 16 kHz, its exact phones). An engine that is not installed is skipped
    with one printed line; the other voices go on."""
    from ..speech.tts import EspeakTTS, FliteTTS

    engines = {"espeak": EspeakTTS, "flite": FliteTTS}
    for voice in voices:
        engine, _, name = tts_voice(voice).partition(":")
        try:
            tts = engines[engine]()
        except RuntimeError as err:  # flite not installed
            print(f"{voice}: skipped ({err})")
            continue
        for text in sentences:
            yield (voice, text, *tts.synthesize(text, voice=name, rate=rate))
