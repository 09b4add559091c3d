"""Lip sync on real speech without ground-truth motion (metrics: blendtalk.evaluation.lipsync).

    python eval/lipsync.py assets/audio/arctic_a0009.wav --transcript "$(cat assets/audio/arctic_a0009.txt)" \
        --driver visemes --json out/lipsync_visemes.json
    python eval/lipsync.py speech.wav --driver faceformer --checkpoint runs/faceformer-.../best --json out/ls.json
    python eval/lipsync.py assets/audio/arctic_a0009.wav --driver faceformer --repeat 3 --pause 0.5 --json out/ls.json
    python eval/lipsync.py assets/audio/arctic_a0009.wav --driver faceformer --repeat 3 --emotion disgusted --json out/ls.json
    python eval/lipsync.py assets/audio/arctic_a0009.wav --driver faceformer --white-noise-db 30 \
        --phones assets/audio/arctic_a0009.phones.txt --json out/ls_noise30.json

Phones come from forced alignment with --transcript, else from recognition; --phones scores against
a label file ('start end phone' lines, e.g. the ARCTIC fixture's) instead. The driver animates the
shipped rig; the metrics read its lip gap (closed below --closure-mm) and lip vertices. With --emotion,
the speech is combined with that emotion as the app does (--method: the DFM, or the plain sum) first.
--white-noise-db adds white noise (seed 0) at that signal-to-noise ratio to the clip's mean power
before anything reads it: hiss in a stop's closure is what makes a recogniser hear /f v/ for /p b/.
"""

import argparse
import json
import math
from pathlib import Path

from blendtalk.evaluation.lipsync import CLOSURE_GAP, lipsync_report
from blendtalk.evaluation.reports import JSON_FILE


def with_pauses(audio, repeat: int, pause: float):
    """audio (S,) from load_audio (so at least 0.2 s) said `repeat` times with `pause` s between, filled
    with the clip's own quietest 100 ms tiled: a recording's room tone, not digital silence, which no
    recording has."""
    import numpy as np

    from blendtalk.constants import SAMPLE_RATE

    n = SAMPLE_RATE // 10
    power = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    start = int(np.argmin(power[n:] - power[:-n]))  # energy of every 100 ms window, in O(S)
    size = int(round(pause * SAMPLE_RATE))
    gap = np.resize(audio[start:start + n], size)
    parts = [audio]
    for _ in range(repeat - 1):
        parts += [gap, audio]
    return np.concatenate(parts).astype(np.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("audio", type=Path, help="speech file (wav, flac, mp3, ...)")
    p.add_argument("--transcript", help="what is said: phones by forced alignment (else by recognition)")
    p.add_argument("--phones", type=Path, help="score against these labelled phones instead of the found ones")
    p.add_argument("--driver", choices=("faceformer", "visemes"), default="visemes",
                   help="the speech model (what the product runs) or the procedural visemes")
    p.add_argument("--checkpoint", help="FaceFormer folder or Hub id (default: BLENDTALK_SPEECH, then assets/speech)")
    p.add_argument("--speaker", type=int, help="training style index (default: the mixture of all styles)")
    p.add_argument("--no-seal", action="store_true",
                   help="faceformer: the model's own lips, not closed at the recognised /p b m/ as the product closes them")
    p.add_argument("--repeat", type=int, default=1,
                   help="say the clip this many times, separated by --pause s of its own quietest 100 ms (room "
                        "tone), to score closure in pauses on a clip that has none over 150 ms")
    p.add_argument("--pause", type=float, default=0.5, help="seconds of room tone between repeats")
    p.add_argument("--closure-mm", type=float, default=CLOSURE_GAP * 1e3, help="lips count as closed below this gap")
    p.add_argument("--emotion", help="combine the speech with this emotion before scoring (default: speech alone)")
    p.add_argument("--intensity", type=float, default=1.0, help="the emotion's intensity, 0..1.5")
    p.add_argument("--method", choices=("ours", "eq13", "interpolation"), default="ours",
                   help="with --emotion: fusion by the DFM (ours) or the sum of the two deformations")
    p.add_argument("--dfm", help="DFM folder or Hub id for --method ours (default: BLENDTALK_DFM, then assets/dfm)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--white-noise-db", type=float, help="add white noise at this SNR (dB) to the speech first")
    p.add_argument("--json", type=JSON_FILE, required=True, help="where to write the report")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.closure_mm <= 0:
        p.error("--closure-mm must be positive")
    if not 1 <= args.repeat <= 10 or not 0.2 <= args.pause <= 5:
        p.error("--repeat must be in [1, 10] and --pause in [0.2, 5] s")
    if args.repeat > 1 and args.phones:
        p.error("--phones labels one clip; leave out --repeat")
    if args.white_noise_db is not None and not 0 <= args.white_noise_db <= 80:
        p.error(f"--white-noise-db is a signal-to-noise ratio in [0, 80] dB, got {args.white_noise_db}")
    if args.driver == "visemes":  # options that only the speech model reads are not ignored without a word
        given = [o for o, v in (("--checkpoint", args.checkpoint), ("--speaker", args.speaker), ("--no-seal", args.no_seal)) if v]
        if given:
            p.error(f"{', '.join(given)} set the speech model: add --driver faceformer (the default driver is visemes)")
    from blendtalk.request import Expression

    try:
        expression = Expression(args.emotion, args.intensity, blinks=False) if args.emotion else None
    except ValueError as err:
        p.error(str(err))

    from blendtalk.speech.audio import load_audio
    from blendtalk.speech.phones import read_phone_labels
    from blendtalk.face.rig import load_rig
    from blendtalk.speech.features import speech_features

    rig = load_rig()
    audio = load_audio(args.audio)
    transcript = args.transcript
    if args.repeat > 1:
        audio = with_pauses(audio, args.repeat, args.pause)
        transcript = " ".join([transcript] * args.repeat) if transcript else None
    if args.white_noise_db is not None:
        import numpy as np

        noise = np.random.default_rng(0).normal(0.0, 1.0, len(audio))
        power = float(np.mean(np.square(audio, dtype=np.float64)))
        audio = np.clip(audio + noise * math.sqrt(power / 10 ** (args.white_noise_db / 10)), -1.0, 1.0).astype(np.float32)
    speech = speech_features(audio, transcript)
    phones = read_phone_labels(args.phones) if args.phones else list(speech.phones)
    described = {"audio": str(args.audio), "repeat": args.repeat, "pause_s": args.pause if args.repeat > 1 else None,
                 "white_noise_snr_db": args.white_noise_db,
                 "driver": args.driver, "phone_source": "labels" if args.phones else speech.phone_source}
    if args.driver == "visemes":
        from blendtalk.speech.visemes import VisemeDriver

        displacement = VisemeDriver(rig)(list(speech.phones), speech.num_frames)[1]
    else:
        from blendtalk.hub import resolve_checkpoint
        from blendtalk.models.faceformer import load_speech_model
        from blendtalk.speech.features import animate_speech

        ckpt = resolve_checkpoint("speech", args.checkpoint)
        model = load_speech_model(ckpt.path, args.device)
        if model.config.num_vertices != rig.num_vertices:
            p.error(f"the checkpoint animates V={model.config.num_vertices} vertices; lip-sync is measured on the rig (V={rig.num_vertices})")
        displacement = animate_speech(model, speech, args.speaker, rig=None if args.no_seal else rig)
        described |= {"checkpoint": str(ckpt.path), "speaker": args.speaker, "sealed": not args.no_seal}
    if expression is not None:
        from blendtalk.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(dfm=args.dfm, speech="visemes", device=args.device, rig=rig)
        d_e = pipe.expression_deformation(expression, speech.num_frames)
        fused, _ = pipe.fuse(displacement, d_e, args.method)
        displacement = fused - rig.displacement(pipe.closure_release(expression, displacement))
        described |= {"expression": expression.describe(), "method": args.method, "dfm": pipe.sources[0]}
    report = described | lipsync_report(rig.vertices + displacement, rig, phones, threshold=args.closure_mm / 1e3)
    report["units"] = {"closure_gap_mm": "mm", "mean_gap_mm": "mm", "jitter_m_s2": "m/s^2, mean |second difference| of lip vertices x fps^2",
                       "bilabial_closure": "share of /p b m/ phones with a closed frame",
                       "silence_closure": "share of pauses > 150 ms with a closed frame",
                       "silence_closed_frames": "share of closed frames > 100 ms inside pauses",
                       "vowel_opening": "share of vowels whose lips part by at least the closure gap",
                       "openness_r": "Pearson r of vowel peak lip gap vs vowel openness"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}  # nan: no such phones
    args.json.write_text(json.dumps(report, indent=2))
    for key in ("bilabial_closure", "silence_closure", "silence_closed_frames", "vowel_opening", "openness_r",
                "jitter_m_s2", "mean_gap_mm"):
        print(f"{key:22s} {'n/a (no such phones)' if report[key] is None else f'{report[key]:.3f}'}")
    print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
