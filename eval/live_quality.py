"""Live quality: a whole file streamed through a LiveSession against the file path (`Pipeline.animate`).

    python eval/live_quality.py --json docs/benchmarks/live_quality.json
    python eval/live_quality.py --emotions neutral happy surprised --window 4 2 1+20 2/0 --repeat 3
    python eval/live_quality.py --emotions neutral --clips arctic assets/examples/tts_sad.wav \
        espeak:en-gb-x-gbclan+m5@45 --prior arctic pooled own

Per emotion, prior, window and encoder (--encoders: the copy distilled for windows, `models.stream_encoder`,
or the speech model's own): mean vertex distance (mm) between the streamed and the file path's
frames, and the lip-sync metrics of eval/lipsync.py (closure at /p b m/, mouth-opening correlation
with vowel openness) on both, scored against the ARCTIC label file; also the mean over /p b m/ of
the smallest lip gap (mm: 0 is closed, eval/lipsync.py counts < 1 mm as a closure), a finer
measure than the share of closures; and how far the prior lies from the clip's own statistics
(`prior_offset`). --repeat N says the clip N times with 0.5 s of its room tone
between (eval/lipsync.py's `with_pauses`): N times the /p b m/, and the later ones heard with the
stream's own statistics.

Clips (--clips): "arctic" (the ARCTIC sentence and its label file); a .wav made by the examples'
recipe (eSpeak NG en-us, 175 wpm, words in the .txt beside it: its phones come from saying the
words again); "espeak:VOICE@PITCH" (eSpeak NG saying --text, its phones exact).

Priors (--prior): the live normalisations start from one. "arctic": the ARCTIC sentence's
statistics (the default before assets/live/prior.json); "pooled" or "pooled=FILE.json": a pooled
prior file (`live.prior`, default the shipped one) with the scored clip's voice left out of the
pool, so that no clip is scored with its own voice in the prior; "default": `live.default_prior()`
as sessions get it (the shipped pool, nothing left out); "own": the clip's own statistics
(the best a prior can do); a .wav: that recording's statistics (--prior-audio, for old commands).

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
from blendtalk.evaluation.reports import JSON_FILE

PAUSE = 0.5  # s of room tone between repeats (eval/lipsync.py's default)
TEXT = "Bring me a map of the empty bay, please."  # not among the pool's sentences; 7 /p b m/
EXAMPLES_VOICE = ("en-us", 175)  # assets/examples/README.md: the examples' eSpeak voice and rate
WINDOW = re.compile(r"^(\d+)(?:\+(\d+(?:\.\d+)?))?(?:/([01]))?$")


def parse_window(text: str) -> dict:
    """"L[+E][/C]" -> LiveConfig fields; ValueError with the form expected."""
    m = WINDOW.match(text.strip())
    if m is None:
        raise ValueError(f"bad window {text!r}: write L[+E][/C], e.g. 4, 2/0 or 1+20/0 (frames, ms, closure frame 1|0)")
    return {"lookahead": int(m[1]), "edge_ms": float(m[2] or 0), "closure_lookahead": m[3] != "0"}


def load_clip(spec: str, text: str):
    """Clip spec -> (name, audio (S,) float32, phones, voice names to leave out of a pooled prior)."""
    from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
    from blendtalk.speech.audio import load_audio
    from blendtalk.speech.phones import read_phone_labels
    from blendtalk.speech.tts import synthesize

    import numpy as np

    if spec == "arctic":
        wav = ASSETS_DIR / "audio" / "arctic_a0009.wav"
        return "arctic", load_audio(wav), read_phone_labels(wav.with_suffix(".phones.txt")), {wav.stem}
    if spec.startswith("espeak:"):
        voice, _, pitch = spec[len("espeak:"):].partition("@")
        if not (pitch or "50").isdigit():
            raise ValueError(f"clip {spec!r}: the pitch after @ is a whole number 0..100 (write espeak:VOICE@PITCH)")
        try:
            audio, phones = synthesize(text, voice=voice, pitch=int(pitch or 50))
        except ValueError as err:
            raise ValueError(f"clip {spec!r}: {err} (write espeak:VOICE@PITCH)") from None
        return spec, np.clip(audio, -1.0, 1.0), phones, {voice}  # Klatt voices peak just over full scale
    wav = Path(spec)
    if wav.suffix != ".wav" or not wav.is_file() or not wav.with_suffix(".txt").is_file():
        raise ValueError(f"clip {spec!r}: give arctic, espeak:VOICE@PITCH or a .wav with its words in a .txt beside it")
    audio = load_audio(wav)
    said, phones = synthesize(wav.with_suffix(".txt").read_text().strip(), voice=EXAMPLES_VOICE[0], rate=EXAMPLES_VOICE[1])
    if abs(len(said) - len(audio)) > SAMPLE_RATE // 50:  # eSpeak's durations vary by a few ms from call to call
        raise ValueError(f"clip {spec!r}: its words said again by {EXAMPLES_VOICE[0]} last {len(said) / SAMPLE_RATE:.2f} s, "
                         f"the file {len(audio) / SAMPLE_RATE:.2f} s: not made by the examples' recipe, no phones for it")
    return wav.name, audio, phones, {EXAMPLES_VOICE[0], wav.name}


def load_priors(specs, clip_audio, held_out: set[str]) -> list[tuple[str, object, list[str]]]:
    """Prior specs -> [(label, SpeechPrior, voices left out of the pool)] for one clip."""
    from blendtalk.constants import ASSETS_DIR
    from blendtalk.live.prior import PRIOR_PATH, load_prior, read_prior, held_out as split
    from blendtalk.live.session import default_prior
    from blendtalk.live.speech_stream import speech_prior
    from blendtalk.speech.audio import load_audio

    out = []
    for spec in specs:
        if spec == "arctic":
            out.append(("arctic", speech_prior(load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav")), []))
        elif spec == "default":
            out.append(("default", default_prior(), []))
        elif spec == "own":
            out.append(("own", speech_prior(clip_audio), []))
        elif spec == "pooled" or spec.startswith("pooled="):
            path = PRIOR_PATH if spec == "pooled" else Path(spec[len("pooled="):])
            left = split(read_prior(path)[1], held_out)[1]
            out.append((spec if spec == "pooled" else f"pooled={path.name}", load_prior(path, exclude=held_out), left))
        else:
            out.append((Path(spec).name, speech_prior(load_audio(Path(spec))), []))
    return out


def prior_offset(prior, own) -> dict:
    """How far a prior lies from a clip's own statistics (`own`, the clip's SpeechPrior): mel mean
    offset in the clip's spreads, |log| of the spread ratio (band means), cepstral mean distance."""
    import numpy as np

    from blendtalk.live.prior import parse_cmn

    return {"prior_mel_offset": round(float(np.mean(np.abs(prior.mel_mean - own.mel_mean) / own.mel_std)), 3),
            "prior_spread_log_ratio": round(float(np.mean(np.abs(np.log(prior.mel_std / own.mel_std)))), 3),
            "prior_cmn_distance": round(float(np.linalg.norm(parse_cmn(prior.cepstral_mean) - parse_cmn(own.cepstral_mean))), 2)}


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
    p.add_argument("--clips", nargs="+", default=["arctic"], help="clips to score: arctic, espeak:VOICE@PITCH or an example .wav")
    p.add_argument("--text", default=TEXT, help="the words espeak: clips say")
    p.add_argument("--prior", nargs="+", default=["arctic", "pooled"], help="priors: arctic, default, pooled[=FILE.json], own or a .wav")
    p.add_argument("--prior-audio", type=Path, nargs="*", default=[], help="recordings for the prior, added to --prior")
    p.add_argument("--repeat", type=int, default=1, help="say the sentence this many times, 0.5 s apart")
    p.add_argument("--encoders", nargs="+", choices=("distilled", "own"), default=["distilled"],
                   help="the speech encoder the stream runs: the copy distilled for windows (models.stream_encoder) or the model's own")
    p.add_argument("--chunk", type=int, default=320, help="samples per chunk")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if args.chunk < 1:
        p.error(f"--chunk must be at least 1 sample, got {args.chunk}")
    try:
        windows = [parse_window(w) for w in ([str(x) for x in args.lookahead] if args.lookahead else args.window)]
    except ValueError as err:
        p.error(str(err))
    if not 1 <= args.repeat <= 10:
        p.error("--repeat must be in [1, 10]")
    priors = args.prior + [str(a) for a in args.prior_audio]
    for spec in priors:
        if spec not in ("arctic", "default", "own", "pooled") and not spec.startswith("pooled=") and not Path(spec).suffix == ".wav":
            p.error(f"bad prior {spec!r}: give arctic, default, pooled, pooled=FILE.json, own or a .wav")
        path = Path(spec[len("pooled="):] if spec.startswith("pooled=") else spec)
        if spec.startswith("pooled=") or path.suffix == ".wav":
            if not path.is_file():
                p.error(f"prior {spec!r}: {path} not found")

    import numpy as np
    import torch

    from blendtalk.constants import SAMPLE_RATE
    from blendtalk.evaluation.lipsync import lipsync_report
    from blendtalk.live.session import LiveConfig, live_session
    from blendtalk.pipeline import Pipeline
    from eval.lipsync import with_pauses

    torch.set_num_threads(1)
    try:
        clips = [load_clip(c, args.text) for c in args.clips]
    except ValueError as err:
        p.error(str(err))
    pipe = Pipeline.from_pretrained(device="cpu")
    keys = ("bilabial_closure", "silence_closure", "openness_r", "vowel_opening")
    rows = []
    for clip, audio, phones, voice in clips:
        if args.repeat > 1:
            phones = repeated_phones(phones, len(audio) / SAMPLE_RATE, args.repeat)
            audio = with_pauses(audio, args.repeat, PAUSE)
        priors_here = load_priors(priors, audio, voice)
        own = load_priors(["own"], audio, voice)[0][1]
        for emotion in args.emotions:
            anim = pipe.animate(audio, emotion=emotion)
            ref = lipsync_report(anim.vertices, pipe.rig, phones)
            ref["bilabial_gap_mm"] = bilabial_gap_mm(pipe.rig.lip_gap(anim.vertices), phones)
            for label, prior, left_out in priors_here:
                for window, encoder in ((w, e) for w in windows for e in args.encoders):
                    config = LiveConfig(**window, stream_encoder=encoder == "distilled")
                    session = live_session(pipe, emotion, config=config, prior=prior)
                    frames = []
                    for i in range(0, len(audio), args.chunk):
                        frames += session.push(audio[i:i + args.chunk])
                    frames += session.finish()
                    v = np.stack([f.vertices for f in frames])
                    got = lipsync_report(v, pipe.rig, phones)
                    got["bilabial_gap_mm"] = bilabial_gap_mm(pipe.rig.lip_gap(v), phones)
                    rows.append({"clip": clip, "seconds": round(len(audio) / SAMPLE_RATE, 2), "emotion": emotion,
                                 "prior": label, "prior_left_out": left_out, **prior_offset(prior, own),
                                 "lookahead_frames": window["lookahead"], "edge_ms": window["edge_ms"],
                                 "closure_lookahead": window["closure_lookahead"],
                                 "encoder": encoder if pipe.stream_encoder() is not None else "own",
                                 "lookahead_ms": round(session.lookahead_seconds * 1000, 1), "bilabials": got["bilabials"],
                                 "mean_vertex_distance_mm": round(float(np.linalg.norm(v - anim.vertices, axis=-1).mean() * 1e3), 3),
                                 "arkit_mean_abs_diff": round(float(np.abs(np.stack([f.arkit for f in frames]) - anim.arkit_weights).mean()), 4),
                                 **{f"stream_{k}": got.get(k) for k in (*keys, "bilabial_gap_mm")},
                                 **{f"file_{k}": ref.get(k) for k in (*keys, "bilabial_gap_mm")},
                                 "openness_r_gap": round(abs(got["openness_r"] - ref["openness_r"]), 3)})
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clips": args.clips, "repeat": args.repeat, "rows": rows,
                                         "command": "python eval/live_quality.py " + " ".join(argv or sys.argv[1:])}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
