"""Live quality: a whole file streamed through a LiveSession against the file path (`Pipeline.animate`).

    python eval/live_quality.py --json docs/benchmarks/live_quality.json

Per emotion: mean vertex distance (mm) between the streamed and the file path's frames, and the
lip-sync metrics of eval/lipsync.py (closure at /p b m/, mouth-opening correlation with vowel
openness) on both, scored against the ARCTIC label file. The live normalisations start from a
prior (`live.default_prior`: the ARCTIC sentence itself); --prior-audio gives another recording
for the prior, so that the clip scored is not the one the prior came from.

Each file-path reference is the phones of a new pocketsphinx decoder, as every clip now gets
(a reused one carried state from the clip it decoded before: docs/live.md).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendtalk.expression.emotions import EMOTIONS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS))
    p.add_argument("--lookahead", type=int, nargs="+", default=[4])
    p.add_argument("--prior-audio", type=Path, nargs="*", default=[None, Path("assets/examples/tts_sad.wav")],
                   help="recordings for the live prior (None: the default, the ARCTIC sentence)")
    p.add_argument("--chunk", type=int, default=320, help="samples per chunk")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from blendtalk.speech.audio import load_audio
    from blendtalk.constants import ASSETS_DIR
    from blendtalk.evaluation.lipsync import lipsync_report
    from blendtalk.live.session import LiveConfig, live_session
    from blendtalk.live.speech_stream import speech_prior
    from blendtalk.speech.phones import read_phone_labels
    from blendtalk.pipeline import Pipeline

    torch.set_num_threads(1)
    wav = ASSETS_DIR / "audio" / "arctic_a0009.wav"
    audio, phones = load_audio(wav), read_phone_labels(wav.with_suffix(".phones.txt"))
    pipe = Pipeline.from_pretrained(device="cpu")
    keys = ("bilabial_closure", "silence_closure", "openness_r", "vowel_opening")
    rows = []
    for emotion in args.emotions:
        anim = pipe.animate(audio, emotion=emotion)
        ref = lipsync_report(anim.vertices, pipe.rig, phones)
        for prior_path in args.prior_audio:
            prior = None if prior_path is None else speech_prior(load_audio(prior_path))
            for lookahead in args.lookahead:
                session = live_session(pipe, emotion, config=LiveConfig(lookahead=lookahead), prior=prior)
                frames = []
                for i in range(0, len(audio), args.chunk):
                    frames += session.push(audio[i:i + args.chunk])
                frames += session.finish()
                v = np.stack([f.vertices for f in frames])
                got = lipsync_report(v, pipe.rig, phones)
                rows.append({"emotion": emotion, "prior": "arctic" if prior_path is None else prior_path.name,
                             "lookahead_frames": lookahead,
                             "mean_vertex_distance_mm": round(float(np.linalg.norm(v - anim.vertices, axis=-1).mean() * 1e3), 3),
                             "arkit_mean_abs_diff": round(float(np.abs(np.stack([f.arkit for f in frames]) - anim.arkit_weights).mean()), 4),
                             **{f"stream_{k}": got.get(k) for k in keys}, **{f"file_{k}": ref.get(k) for k in keys},
                             "openness_r_gap": round(abs(got["openness_r"] - ref["openness_r"]), 3)})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"clip": wav.name, "rows": rows,
                                         "command": "python eval/live_quality.py " + " ".join(argv or sys.argv[1:])}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
