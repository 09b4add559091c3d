"""Live quality: a whole file streamed through a LiveSession against the file path (`Pipeline.animate`).

    python eval/live_quality.py --json docs/benchmarks/live_quality.json
    python eval/live_quality.py --emotions neutral happy surprised --window 4 2 1+20 2/0 --repeat 3

Per emotion, prior and window: mean vertex distance (mm) between the streamed and the file path's
frames, and the lip-sync metrics of eval/lipsync.py (closure at /p b m/, mouth-opening correlation
with vowel openness) on both, scored against the ARCTIC label file; also the mean over /p b m/ of
the smallest lip gap (mm: 0 is closed, eval/lipsync.py counts < 1 mm as a closure), a finer
measure than the share of closures. The live normalisations start from a prior
(`live.default_prior`: the ARCTIC sentence itself); --prior-audio gives another recording for the
prior, so that the clip scored is not the one the prior came from. --repeat N says the sentence N
times with 0.5 s of its room tone between (eval/lipsync.py's `with_pauses`): N times the /p b m/,
and the later ones heard with the stream's own statistics.

A window is L[+E][/C]: L whole frames of look-ahead (`LiveConfig.lookahead`), E ms of the frame
after them (`edge_ms`), C 1 or 0: whether the closure rule reads frame t + 1 (`closure_lookahead`,
default 1). "2" is 2 frames + the closure frame (100 ms); "1+20/0" 53 ms.

Each file-path reference is the phones of a new pocketsphinx decoder, as every clip now gets
(a reused one carried state from the clip it decoded before: docs/live.md).
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendtalk.expression.emotions import EMOTIONS  # noqa: E402

PAUSE = 0.5  # s of room tone between repeats (eval/lipsync.py's default)
WINDOW = re.compile(r"^(\d+)(?:\+(\d+(?:\.\d+)?))?(?:/([01]))?$")


def parse_window(text: str) -> dict:
    """"L[+E][/C]" -> LiveConfig fields; ValueError with the form expected."""
    m = WINDOW.match(text.strip())
    if m is None:
        raise ValueError(f"bad window {text!r}: write L[+E][/C], e.g. 4, 2/0 or 1+20/0 (frames, ms, closure frame 1|0)")
    return {"lookahead": int(m[1]), "edge_ms": float(m[2] or 0), "closure_lookahead": m[3] != "0"}


def repeated_phones(phones, duration: float, repeat: int, pause: float = PAUSE):
    """Labels of one clip -> those of `with_pauses(clip, repeat, pause)` (the pauses labelled sil)."""
    from blendtalk.speech.phones import Phone

    out = []
    for k in range(repeat):
        shift = k * (duration + pause)
        if k:
            out.append(Phone("sil", shift - pause, shift))
        out += [Phone(p.symbol, p.start + shift, p.end + shift) for p in phones]
    return out


def bilabial_gap_mm(gap, phones) -> float:
    """Mean over /p b m/ of the smallest lip gap (T,) m in the phone's frames, in mm."""
    import numpy as np

    from blendtalk.evaluation.lipsync import phone_frames
    from blendtalk.speech.phones import BILABIALS

    mins = [gap[f].min() for p in phones if p.symbol in BILABIALS if len(f := phone_frames(p, len(gap)))]
    return round(float(np.mean(mins) * 1e3), 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS))
    p.add_argument("--window", nargs="+", default=["4"], help="look-ahead windows L[+E][/C] (see above)")
    p.add_argument("--lookahead", type=int, nargs="+", help="whole frames only, as --window L (kept for old commands)")
    p.add_argument("--prior-audio", type=Path, nargs="*", default=[None, Path("assets/examples/tts_sad.wav")],
                   help="recordings for the live prior (None: the default, the ARCTIC sentence)")
    p.add_argument("--repeat", type=int, default=1, help="say the sentence this many times, 0.5 s apart")
    p.add_argument("--chunk", type=int, default=320, help="samples per chunk")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    try:
        windows = [parse_window(w) for w in ([str(x) for x in args.lookahead] if args.lookahead else args.window)]
    except ValueError as err:
        p.error(str(err))
    if not 1 <= args.repeat <= 10:
        p.error("--repeat must be in [1, 10]")

    import numpy as np
    import torch

    from blendtalk.speech.audio import load_audio
    from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
    from blendtalk.evaluation.lipsync import lipsync_report
    from blendtalk.live.session import LiveConfig, live_session
    from blendtalk.live.speech_stream import speech_prior
    from blendtalk.speech.phones import read_phone_labels
    from blendtalk.pipeline import Pipeline
    from eval.lipsync import with_pauses

    torch.set_num_threads(1)
    wav = ASSETS_DIR / "audio" / "arctic_a0009.wav"
    audio, phones = load_audio(wav), read_phone_labels(wav.with_suffix(".phones.txt"))
    if args.repeat > 1:
        phones = repeated_phones(phones, len(audio) / SAMPLE_RATE, args.repeat)
        audio = with_pauses(audio, args.repeat, PAUSE)
    pipe = Pipeline.from_pretrained(device="cpu")
    keys = ("bilabial_closure", "silence_closure", "openness_r", "vowel_opening")
    rows = []
    for emotion in args.emotions:
        anim = pipe.animate(audio, emotion=emotion)
        ref = lipsync_report(anim.vertices, pipe.rig, phones)
        ref["bilabial_gap_mm"] = bilabial_gap_mm(pipe.rig.lip_gap(anim.vertices), phones)
        for prior_path in args.prior_audio:
            prior = None if prior_path is None else speech_prior(load_audio(prior_path))
            for window in windows:
                session = live_session(pipe, emotion, config=LiveConfig(**window), prior=prior)
                frames = []
                for i in range(0, len(audio), args.chunk):
                    frames += session.push(audio[i:i + args.chunk])
                frames += session.finish()
                v = np.stack([f.vertices for f in frames])
                got = lipsync_report(v, pipe.rig, phones)
                got["bilabial_gap_mm"] = bilabial_gap_mm(pipe.rig.lip_gap(v), phones)
                rows.append({"emotion": emotion, "prior": "arctic" if prior_path is None else prior_path.name,
                             "lookahead_frames": window["lookahead"], "edge_ms": window["edge_ms"],
                             "closure_lookahead": window["closure_lookahead"],
                             "lookahead_ms": round(session.lookahead_seconds * 1000, 1), "bilabials": got["bilabials"],
                             "mean_vertex_distance_mm": round(float(np.linalg.norm(v - anim.vertices, axis=-1).mean() * 1e3), 3),
                             "arkit_mean_abs_diff": round(float(np.abs(np.stack([f.arkit for f in frames]) - anim.arkit_weights).mean()), 4),
                             **{f"stream_{k}": got.get(k) for k in (*keys, "bilabial_gap_mm")},
                             **{f"file_{k}": ref.get(k) for k in (*keys, "bilabial_gap_mm")},
                             "openness_r_gap": round(abs(got["openness_r"] - ref["openness_r"]), 3)})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clip": wav.name, "repeat": args.repeat, "rows": rows,
                                         "command": "python eval/live_quality.py " + " ".join(argv or sys.argv[1:])}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
