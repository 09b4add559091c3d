"""Lip sync on voices the speech model never heard: TTS voices of two engines with their exact phones.

    python eval/voices_lipsync.py --json docs/benchmarks/voices-lipsync.json
    python eval/voices_lipsync.py --voices flite:rms flite:awb espeak:en-gb-x-rp --rate 200

Each voice says the sentences below (dense in /p b m/); the product's speech path runs on the audio
as a user's file would (phones recognised by pocketsphinx, no transcript), and eval/lipsync.py's
metrics score it against the engine's own phone timings. Each clip is scored twice: with the lips
closed at the recognised bilabials as the product does (`speech.visemes.seal_bilabials`), and
with the model's own lips (`--no-seal` in eval/lipsync.py), so the table says what the seal buys.
Flite's voices (`apt-get install flite`: kal16, awb, rms, slt) are not eSpeak's, which the
speech model was trained on; slt is the ARCTIC clip's speaker, so it is left out by default.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendtalk.evaluation.clips import add_voice_arguments, voice_clips  # noqa: E402
from blendtalk.evaluation.reports import JSON_FILE  # noqa: E402

SENTENCES = ("Bring me a map of the empty bay, please.",
             "Bob probably bought a maple bench by the moped shop.")
VOICES = ("flite:rms", "flite:awb", "flite:kal16", "espeak:en-us+m3", "espeak:en-gb-x-rp")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_voice_arguments(p, VOICES)
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)

    import numpy as np

    from blendtalk.evaluation.lipsync import lipsync_report
    from blendtalk.evaluation.reports import write_report
    from blendtalk.pipeline import Pipeline
    from blendtalk.speech.features import animate_speech

    pipe = Pipeline.from_pretrained(device="cpu")
    rows, totals = [], {"sealed": [0, 0], "model": [0, 0]}
    for voice, text, audio, phones in voice_clips(args.voices, SENTENCES, args.rate):
        speech = pipe.speech_input(audio)
        row = {"voice": voice, "text": text, "seconds": round(len(audio) / 16000, 2)}
        for key, rig in (("sealed", pipe.rig), ("model", None)):
            d_s = animate_speech(pipe.speech_model, speech, rig=rig)
            r = lipsync_report(pipe.rig.vertices + d_s, pipe.rig, phones)
            closed = int(round(r["bilabial_closure"] * r["bilabials"]))
            totals[key][0] += closed
            totals[key][1] += r["bilabials"]
            row[key] = {"bilabials_closed": closed, "bilabials": r["bilabials"], "openness_r": r["openness_r"],
                        "jitter_m_s2": r["jitter_m_s2"], "pauses_closed": r["silence_closure"]}
        rows.append(row)
        s, m = row["sealed"], row["model"]
        print(f"{voice:20s} {text[:28]:28s} /p b m/ closed {s['bilabials_closed']}/{s['bilabials']} "
              f"(model alone {m['bilabials_closed']}), openness r {s['openness_r']:.2f} ({m['openness_r']:.2f}), "
              f"jitter {s['jitter_m_s2']:.2f} ({m['jitter_m_s2']:.2f}) m/s^2", flush=True)
    share = {k: (c / n if n else float("nan")) for k, (c, n) in totals.items()}
    print(f"/p b m/ closed over all clips: {share['sealed']:.0%} with the seal, {share['model']:.0%} the model alone")
    if args.json:
        report = {"rate_wpm": args.rate, "voices": args.voices, "sentences": list(SENTENCES), "clips": rows,
                  "bilabials_closed_share": share, "mean_openness_r": {
                      k: float(np.nanmean([row[k]["openness_r"] for row in rows])) for k in totals} if rows else {}}
        write_report(args.json, report)
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
