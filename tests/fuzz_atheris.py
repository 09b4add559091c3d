"""Coverage-guided fuzzing (atheris, libFuzzer) of three input boundaries, complementing the
hypothesis cases in tests/test_fuzz.py: atheris mutates bytes toward new branches of blendtalk's
own code (only blendtalk is instrumented), where hypothesis draws from hand-written strategies.

    python tests/fuzz_atheris.py timeline -atheris_runs=20000
    python tests/fuzz_atheris.py audio -max_total_time=300
    python tests/fuzz_atheris.py config -max_total_time=300

Targets (an input is accepted or refused with the project's own error; anything else, or a hang
past -timeout, is a finding that libFuzzer saves as crash-*/timeout-* in the working folder):
* timeline: the bytes as UTF-8 text -> emotions.parse_timeline, then timeline_weights.
* audio: the first byte picks a suffix (wav, flac, ogg, mp3), the rest is the file -> load_audio.
  Seeded with valid short files of each kind, so mutations start from real headers.
* config: the bytes as config.json beside the shipped DFM's weights -> dfm.check_pretrained (the
  meta-device check that guards every checkpoint load). Seeded with the shipped config.
Seeds are written to a temporary corpus folder unless corpus folders are given after the target.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

with atheris.instrument_imports(include=["blendtalk"]):
    from blendtalk.expression import emotions
    from blendtalk.speech.audio import AudioError, load_audio
    from blendtalk.constants import ASSETS_DIR
    from blendtalk.models.dfm import check_pretrained

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
SCRATCH = Path(tempfile.mkdtemp(prefix="blendtalk-atheris-"))


def fuzz_timeline(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        keys = emotions.parse_timeline(text)
        emotions.timeline_weights(keys, num_frames=60)
    except ValueError:
        pass


def fuzz_audio(data: bytes) -> None:
    if not data:
        return
    path = SCRATCH / f"input{AUDIO_SUFFIXES[data[0] % len(AUDIO_SUFFIXES)]}"
    path.write_bytes(data[1:])
    try:
        load_audio(path)
    except AudioError:
        pass


def fuzz_config(data: bytes) -> None:
    (SCRATCH / "config.json").write_bytes(data)
    try:
        check_pretrained(SCRATCH)
    except ValueError:
        pass


def seeds(target: str) -> list[bytes]:
    if target == "timeline":
        return [b"neutral@0 happy@1.5:0.8, sad@4.0", b"angry@0;surprised@2.25:1.2"]
    if target == "config":
        return [(ASSETS_DIR / "dfm" / "config.json").read_bytes()]
    import soundfile as sf

    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out = []
    for i, fmt in enumerate(("WAV", "FLAC", "OGG")):
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format=fmt)
        out.append(bytes([i]) + buf.getvalue())
    return out


TARGETS = {"timeline": fuzz_timeline, "audio": fuzz_audio, "config": fuzz_config}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python tests/fuzz_atheris.py {{{'|'.join(TARGETS)}}} [corpus folders] [libFuzzer flags]")
    target, rest = sys.argv[1], sys.argv[2:]
    if target == "config":
        shutil.copy(ASSETS_DIR / "dfm" / "model.safetensors", SCRATCH / "model.safetensors")
    if not any(not a.startswith("-") for a in rest):  # no corpus given: a temporary one with the seeds
        corpus = Path(tempfile.mkdtemp(prefix="corpus-", dir=SCRATCH))
        for i, seed in enumerate(seeds(target)):
            (corpus / f"seed{i}").write_bytes(seed)
        rest = [str(corpus), *rest]
    try:
        atheris.Setup([sys.argv[0], *rest], TARGETS[target])
        atheris.Fuzz()
    finally:  # atheris exits the process at the end of a run; this runs on a normal return only
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
