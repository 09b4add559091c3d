"""Wall time of "speech file -> finished mp4" through the loaded pipeline, as the CLI and the app run it.

    python eval/end_to_end.py --device cuda --seconds 10 --size 512 --repeats 5 --json out/e2e.json

eval/benchmark.py times each stage alone and adds them up; here the stages run as the product runs
them: `Pipeline.animate` on a wav file (decode, phones, features, speech model, expression, DFM),
then `Pipeline.save_video`, which streams rendered batches into the ffmpeg encoder while it
encodes, so render and encode overlap. The pipeline and the renderer are loaded once and one
untimed call warms them up; then --repeats calls are timed, with the transcript (forced alignment)
and without it (phone recognition). The clip is the shipped 3 s clips joined to --seconds
(eval/app_latency.py builds it the same way).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from blendtalk.evaluation.clips import long_clip
from blendtalk.pipeline import Pipeline
from blendtalk.evaluation.reports import JSON_FILE, write_report

STAGES = ("audio front end", "speech model", "expression", "dfm", "render", "encode")


def run_once(pipe: Pipeline, wav: Path, transcript: str | None, out: Path, size: int) -> dict:
    """One clip through animate + save_video: wall seconds and the pipeline's own stage times."""
    t0 = time.perf_counter()
    animation = pipe.animate(wav, transcript=transcript, emotion="happy", intensity=0.8)
    pipe.save_video(animation, out, size=size)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out.unlink()
    return {"wall_s": wall, **{k: animation.meta["timings"][k] for k in STAGES}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the speech clip")
    p.add_argument("--size", type=int, default=512, help="video size in pixels")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per mode, after one warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--phone-workers", type=int, default=None,
                   help="processes recognising phones in pieces (default: the pipeline's: spare cores on a GPU, 0 on CPU)")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if not 1.0 <= args.seconds <= 60.0 or args.repeats < 1 or not 64 <= args.size <= 2048:
        p.error("--seconds must be in [1, 60], --repeats at least 1 and --size in [64, 2048]")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.phone_workers is not None and args.phone_workers < 0:
        p.error("--phone-workers must be at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = Pipeline.from_pretrained(device=args.device, phone_workers=args.phone_workers)
    except ValueError as err:  # an unknown or unavailable --device
        p.error(str(err))
    print("\n".join(pipe.sources), flush=True)
    report = {"device": str(pipe.device), "gpu": torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else None,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "checkpoints": pipe.sources, "seconds": args.seconds, "size": args.size,
              "phone_workers": pipe.phone_workers, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="blendtalk-e2e-") as tmp:
        tmp = Path(tmp)
        wav, words = long_clip(args.seconds, tmp)
        for mode, transcript in (("with transcript", words), ("audio alone", None)):
            run_once(pipe, wav, transcript, tmp / "out.mp4", args.size)  # warm-up
            runs = [run_once(pipe, wav, transcript, tmp / "out.mp4", args.size) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            report["modes"][mode] = {"median": med, "runs": runs}
            stages = ", ".join(f"{k} {med[k]:.3f}" for k in STAGES)
            print(f"{args.seconds:g} s of speech -> {args.size} px mp4, {mode}: {med['wall_s']:.2f} s "
                  f"(median of {args.repeats}; {min(r['wall_s'] for r in runs):.2f}..{max(r['wall_s'] for r in runs):.2f}); "
                  f"stages: {stages}", flush=True)
            speech_s = med["audio front end"] + med["speech model"]  # audio -> speech deformation
            print(f"  audio -> speech deformation: {speech_s:.3f} s, {args.seconds / speech_s:.1f}x real time, "
                  f"{args.seconds * 30 / speech_s:.0f} frames/s", flush=True)
    pipe.close()
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
