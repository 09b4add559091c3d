"""Speech for the speed and load benchmarks: the shipped 3 s clips with their transcripts, and
longer clips made of them (eval/end_to_end.py, eval/app_latency.py, eval/load_test.py)."""

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
    """A wav of the shipped clips in turn until `seconds` are reached (written into `folder`), and its transcript."""
    import soundfile as sf

    parts, words, total, sr = [], [], 0.0, None
    while total < seconds:
        audio, transcript = CLIPS[len(parts) % len(CLIPS)]
        x, sr_i = sf.read(str(audio), dtype="float32")
        if sr is None:
            sr = sr_i
        elif sr_i != sr:
            raise RuntimeError(f"{audio} is at {sr_i} Hz, the others at {sr} Hz")
        parts += [x, np.zeros(int(PAUSE_S * sr), np.float32)]
        words.append(transcript.read_text().strip())
        total += len(x) / sr + PAUSE_S
    x = np.concatenate(parts)[: int(seconds * sr)]
    path = folder / "speech.wav"
    sf.write(str(path), x, sr)
    return path, " ".join(words)
