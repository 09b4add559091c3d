"""Phone recognition against exact phones: the file path's recogniser and allphone recognition.

    python eval/phone_recognition.py --json docs/benchmarks/phone-recognition.json
    python eval/phone_recognition.py --voices flite:awb espeak:en-gb-x-rp --rate 200
    python eval/phone_recognition.py --join 4 --pieces 3   # about 10 s clips, whole and cut at pauses

Clips: the ARCTIC sentence (its label file) and each voice saying the sentences below (flite's
voices are not eSpeak's, which the speech model was trained on; each engine gives its exact
phones). Per recogniser (`words`: `speech.sphinx.Recogniser`, the words heard with their phones
aligned, what a user's file gets; `allphone`: a phone bigram alone, its fallback and what live
mode decodes): the share of 10 ms frames whose phone is right, the same over vowel frames, the
/p b m/ heard (a recognised one within 30 ms of each labelled one) and the false ones (none
labelled that near) (`evaluation.recognition`), and the seconds spent per second of speech.
--join K makes longer clips of K sentences each (one voice's, joined as synthesised, so with the
pauses between them); --pieces N also scores the words recogniser on each clip cut at pauses into
up to N pieces (`speech.phonetics.piece_bounds`), what `PhoneAligner(workers=N)` recognises.
"""

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendtalk.evaluation.clips import add_voice_arguments, voice_clips  # noqa: E402
from blendtalk.evaluation.reports import JSON_FILE  # noqa: E402

SENTENCES = ("Bring me a map of the empty bay, please.", "Bob probably bought a maple bench by the moped shop.",
             "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
             "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
             "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
             "Her purse was full of useless trash.", "The wide road shimmered in the hot sun.",
             "Take the winding path to reach the lake.", "Kick the ball straight and follow through.")
VOICES = ("flite:rms", "flite:awb", "flite:kal16", "flite:slt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_voice_arguments(p, VOICES)
    p.add_argument("--join", type=int, default=1, metavar="K",
                   help="sentences per clip: each voice's sentences joined K at a time as synthesised (clips with pauses)")
    p.add_argument("--pieces", type=int, default=1, metavar="N",
                   help="also score the words recogniser on each clip cut at pauses into up to N pieces of 2 s or more, "
                        "as PhoneAligner(workers=N) recognises it")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if not 1 <= args.join <= len(SENTENCES) or not 1 <= args.pieces <= 8:
        p.error(f"--join must be 1..{len(SENTENCES)} and --pieces 1..8")

    from blendtalk.constants import SAMPLE_RATE
    from blendtalk.evaluation.recognition import recognition_scores
    from blendtalk.evaluation.reports import write_report
    from blendtalk.speech.phone_workers import join_pieces
    from blendtalk.speech.phonetics import _to_pcm16, load_arctic_fixture, piece_bounds
    from blendtalk.speech.phones import Phone
    from blendtalk.speech.sphinx import Recogniser, allphone_decoder, allphone_segments

    audio, labels, _ = load_arctic_fixture()
    clips = [("arctic_a0009", audio, labels)]
    said = list(voice_clips(args.voices, SENTENCES, args.rate))
    for k in range(0, len(said), args.join):
        group = [c for c in said[k:k + args.join] if c[0] == said[k][0]]  # one voice's sentences
        offsets = np.cumsum([0] + [len(c[2]) for c in group]) / SAMPLE_RATE
        clips.append((f"{group[0][0]} {' '.join(c[1] for c in group)}", np.concatenate([c[2] for c in group]),
                      [Phone(q.symbol, q.start + t, q.end + t) for c, t in zip(group, offsets) for q in c[3]]))
    # Each starts every clip afresh (`sphinx.decode(fresh=True)`), so the clips' order does not matter.
    words = Recogniser().built()
    recognisers = {"words": words, "allphone": partial(allphone_segments, allphone_decoder())}
    if args.pieces > 1:
        def in_pieces(pcm: bytes) -> list:  # each piece as a worker process recognises it
            bounds = piece_bounds(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, args.pieces)
            return join_pieces(bounds, [words(pcm[2 * a:2 * b]) for a, b in zip(bounds, bounds[1:])])

        recognisers[f"words, up to {args.pieces} pieces"] = in_pieces
    totals = {k: {"seconds_spent": 0.0} for k in recognisers}
    rows = []
    for name, audio, truth in clips:
        seconds = len(audio) / SAMPLE_RATE
        row = {"clip": name, "seconds": round(seconds, 2)}
        pcm = _to_pcm16(audio)
        for key, recognise in recognisers.items():
            start = time.perf_counter()
            found = recognise(pcm)
            totals[key]["seconds_spent"] += time.perf_counter() - start
            row[key] = recognition_scores(found, truth, seconds)
            for k, v in row[key].items():
                totals[key][k] = totals[key].get(k, 0) + v
        rows.append(row)
        print(f"{name[:40]:40s} " + " | ".join(f"{k} {row[k]['right'] / row[k]['frames']:.2f} right, vowels "
                                              f"{row[k]['vowels_right'] / max(row[k]['vowel_frames'], 1):.2f}, /p b m/ "
                                              f"{row[k]['bilabials_heard']}/{row[k]['bilabials']} +{row[k]['false_bilabials']}"
                                              for k in recognisers), flush=True)
    speech = sum(r["seconds"] for r in rows)
    summary = {k: {"frames_right": round(t["right"] / t["frames"], 3), "vowel_frames_right": round(t["vowels_right"] / t["vowel_frames"], 3),
                   "bilabials_heard": f"{t['bilabials_heard']}/{t['bilabials']}", "false_bilabials": t["false_bilabials"],
                   "seconds_per_second": round(t["seconds_spent"] / speech, 3)} for k, t in totals.items()}
    for k, s in summary.items():
        print(f"{k}: frames right {s['frames_right']:.1%}, vowel frames {s['vowel_frames_right']:.1%}, /p b m/ heard "
              f"{s['bilabials_heard']} with {s['false_bilabials']} false, {s['seconds_per_second']:.3f} s per s of speech")
    if args.json:
        write_report(args.json, {"voices": args.voices, "rate_wpm": args.rate, "sentences": list(SENTENCES),
                                 "join": args.join, "pieces": args.pieces,
                                 "speech_seconds": round(speech, 1), "summary": summary, "clips": rows})
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
