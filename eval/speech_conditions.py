"""Lip sync when the recording is not a studio's: one real sentence under recording conditions.

    python eval/speech_conditions.py --json docs/benchmarks/speech-conditions-cpu.json
    python eval/speech_conditions.py --conditions clean dc_0.02 hum_50hz --json out.json

ARCTIC's sentence (labelled phones, assets/audio/) is changed as recordings differ: level, a DC
offset, mains hum, rumble, telephone bandwidth, another sample rate, faster speech (pitch kept), a
higher or lower voice (tempo kept), a room's reverberation, white noise. Each version goes through
the file path's speech side (`load_audio`, recognition without a transcript, the speech model with
the lips sealed at the /p b m/ it heard) and is scored against the labels, time-scaled where the
tempo changed (`evaluation.lipsync`). Where the timing is the clean clip's, the mean vertex distance
to the clean clip's animation says how far the condition moved the face.
"""

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blendtalk.constants import SAMPLE_RATE
from blendtalk.evaluation.reports import JSON_FILE, write_report

ARCTIC = Path(__file__).resolve().parents[1] / "assets" / "audio" / "arctic_a0009"
# name -> (how, parameter): "gain" dB, "dc" offset, "sine" (Hz, amplitude), "ffmpeg" (filter, tempo factor),
# "reverb" (decay time constant s, direct-to-reverberant ratio dB), "noise" SNR dB.
CONDITIONS = {
    "clean": ("gain", 0.0),
    "quiet_-30db": ("gain", -30.0),
    "dc_0.02": ("dc", 0.02),
    "dc_0.2": ("dc", 0.2),
    "hum_50hz": ("sine", (50.0, 0.05)),
    "rumble_8hz": ("sine", (8.0, 0.1)),
    "telephone_8khz": ("ffmpeg", ("aresample=8000,aresample=16000", 1.0)),
    "rate_44.1khz": ("ffmpeg", ("aresample=44100", 1.0)),
    "tempo_1.25": ("ffmpeg", ("atempo=1.25", 1.25)),
    "tempo_1.4": ("ffmpeg", ("atempo=1.4", 1.4)),
    "voice_+10%": ("ffmpeg", ("asetrate=17600,atempo=0.909091,aresample=16000", 1.0)),
    "voice_+15%": ("ffmpeg", ("asetrate=18400,atempo=0.869565,aresample=16000", 1.0)),
    "voice_-15%": ("ffmpeg", ("asetrate=13600,atempo=1.176471,aresample=16000", 1.0)),
    "room_drr_10db": ("reverb", (0.08, 10.0)),
    "room_drr_0db": ("reverb", (0.08, 0.0)),
    "noise_30db": ("noise", 30.0),
}


def make_condition(audio: np.ndarray, how: str, value, folder: Path, seed: int = 0) -> tuple[Path, float]:
    """ARCTIC's samples (S,) at 16 kHz -> a wav of the condition in `folder` and its tempo factor."""
    import soundfile as sf

    path = folder / f"{how}-{len(list(folder.iterdir()))}.wav"
    rng = np.random.default_rng(seed)
    t = np.arange(len(audio)) / SAMPLE_RATE
    tempo = 1.0
    if how == "gain":
        out = audio * 10 ** (value / 20)
    elif how == "dc":
        out = audio + value
    elif how == "sine":
        out = audio + value[1] * np.sin(2 * np.pi * value[0] * t)
    elif how == "reverb":  # exponentially decaying noise after a direct path of the given ratio
        tau, drr_db = value
        taps = int(6 * tau * SAMPLE_RATE)
        rir = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (tau * SAMPLE_RATE))
        rir[0] = 0.0  # the tail alone, to size the direct path against
        rir[0] = math.sqrt(np.sum(rir ** 2) * 10 ** (drr_db / 10))  # the direct path against the tail's energy
        out = np.convolve(audio, rir)[: len(audio)]
        out = out / np.abs(out).max() * np.abs(audio).max()
    elif how == "noise":
        power = float(np.mean(np.square(audio, dtype=np.float64)))
        out = audio + rng.standard_normal(len(audio)) * math.sqrt(power / 10 ** (value / 10))
    elif how == "ffmpeg":
        import imageio_ffmpeg

        filters, tempo = value
        src = folder / "source.wav"
        sf.write(src, audio, SAMPLE_RATE, subtype="FLOAT")
        rate = "44100" if filters == "aresample=44100" else "16000"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-af", filters, "-ar", rate,
                        "-ac", "1", "-c:a", "pcm_f32le", str(path)], check=True)
        return path, tempo
    else:
        raise ValueError(f"unknown condition kind {how!r}")
    sf.write(path, np.clip(out, -1.0, 1.0).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    return path, tempo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS), metavar="NAME",
                   help=f"any of: {', '.join(CONDITIONS)}")
    p.add_argument("--closure-mm", type=float, default=1.0, help="lips count as closed below this gap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=JSON_FILE, required=True, help="where to write the report")
    args = p.parse_args(argv)
    if not args.closure_mm > 0:
        p.error("--closure-mm must be positive (a lip gap in mm)")

    from blendtalk.evaluation.lipsync import lipsync_report
    from blendtalk.face.rig import load_rig
    from blendtalk.hub import resolve_checkpoint
    from blendtalk.models.faceformer import load_speech_model
    from blendtalk.speech.audio import load_audio
    from blendtalk.speech.features import animate_speech, speech_features
    from blendtalk.speech.phones import Phone, read_phone_labels
    from blendtalk.speech.phonetics import PhoneAligner

    rig = load_rig()
    model = load_speech_model(resolve_checkpoint("speech", None).path, args.device)
    aligner = PhoneAligner()
    clean = load_audio(ARCTIC.with_suffix(".wav"))
    labels = read_phone_labels(ARCTIC.with_suffix(".phones.txt"))
    rows, reference = [], None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in dict.fromkeys(["clean", *args.conditions]):  # the clean clip first: the others' distances need it
            path, tempo = make_condition(clean, *CONDITIONS[name], Path(tmp))
            speech = speech_features(load_audio(path), None, aligner)
            displacement = animate_speech(model, speech, None, rig=rig)
            phones = [Phone(q.symbol, q.start / tempo, q.end / tempo) for q in labels]
            report = lipsync_report(rig.vertices + displacement, rig, phones, threshold=args.closure_mm / 1e3)
            row = {"condition": name, "heard": " ".join(q.symbol for q in speech.phones if q.symbol != "sil")}
            row |= {k: report[k] for k in ("bilabial_closure", "bilabials", "vowel_opening", "openness_r")}
            if name == "clean":
                reference = displacement
            if tempo == 1.0 and reference is not None and len(displacement) == len(reference):
                row["distance_to_clean_mm"] = float(np.linalg.norm(displacement - reference, axis=-1).mean() * 1000)
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
            print(f"{name:16s} /p b m/ closed {row['bilabial_closure']:.2f} of {row['bilabials']}, vowels opened "
                  f"{row['vowel_opening']:.2f}, openness r {row['openness_r']:.2f}"
                  + (f", {row['distance_to_clean_mm']:.3f} mm from clean" if "distance_to_clean_mm" in row else ""), flush=True)
    out = {"clip": "arctic_a0009", "closure_mm": args.closure_mm, "seconds": round(time.perf_counter() - started, 1),
           "command": "python eval/speech_conditions.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "conditions": {name: list(CONDITIONS[name]) for name in args.conditions}, "rows": rows}
    print(f"report written to {write_report(args.json, out)}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
