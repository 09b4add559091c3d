"""Live latency: a file fed at the pace of a recording in 20 ms chunks through a LiveSession.

    python eval/live_latency.py --minutes 1 --json docs/benchmarks/live_latency_1min.json
    python eval/live_latency.py --minutes 5 --json docs/benchmarks/live_latency_5min.json
    python eval/live_latency.py --minutes 1 --device cuda --json docs/benchmarks/live_latency_gpu.json

Per frame: `window` latency = from the moment the audio that completes the frame's window (its own
audio, the look-ahead and the closure frame) was recorded (a chunk's due time, not when it was
pushed: a backlog counts) to the frame's weights being out; `total` latency = from the moment the
last sample of the frame's own audio was recorded to the weights being out, measured per frame and
split into `parts`: the look-ahead audio (the window's frames and the half-window of its last mel
frame), the wait for the chunk holding the window's last sample (0 to one chunk), and the window
latency. realtime_factor = processing time / audio time. The audio is the ARCTIC sentence said again and again with 0.5 s of its room tone
between (eval/lipsync.py's `with_pauses`), unless a file is given.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python eval/X.py`: its sibling scripts import as eval.*

import numpy as np  # noqa: E402

from blendtalk.evaluation.reports import JSON_FILE, write_report  # noqa: E402


def percentiles(x) -> dict:
    """Seconds (N,) -> min / median (p50) / p95 / max / mean in ms."""
    x = np.asarray(x) * 1000
    median = round(float(np.percentile(x, 50)), 1)
    return {"min_ms": round(float(x.min()), 1), "median_ms": median, "p50_ms": median,
            "p95_ms": round(float(np.percentile(x, 95)), 1), "max_ms": round(float(x.max()), 1),
            "mean_ms": round(float(x.mean()), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("audio", nargs="?", type=Path, help="speech file (default: the ARCTIC sentence repeated)")
    p.add_argument("--minutes", type=float, default=1.0, help="stream this long (the file is repeated or cut)")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length; chunks arrive at this pace")
    p.add_argument("--lookahead", type=int, default=4, help="frames of look-ahead of the speech window")
    p.add_argument("--edge-ms", type=float, default=0.0, help="ms of the frame after the look-ahead also read (LiveConfig.edge_ms)")
    p.add_argument("--no-closure-lookahead", action="store_true", help="the closure rule does not wait for frame t + 1")
    p.add_argument("--emotion", default="happy")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: a session per core)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the models run (phones and mels stay on the CPU)")
    p.add_argument("--json", type=JSON_FILE, help="write the report here")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.chunk_ms <= 0 or args.threads < 1:
        p.error("--minutes and --chunk-ms must be > 0 and --threads >= 1")

    import torch
    from tqdm import tqdm

    from blendtalk.speech.audio import load_audio
    from blendtalk.constants import ASSETS_DIR, FPS, SAMPLE_RATE
    from blendtalk.live.session import LiveConfig, warm_up
    from blendtalk.pipeline import Pipeline
    from eval.lipsync import with_pauses

    torch.set_num_threads(args.threads)
    source = load_audio(args.audio or ASSETS_DIR / "audio" / "arctic_a0009.wav")
    total = int(args.minutes * 60 * SAMPLE_RATE)
    base = with_pauses(source, 2, 0.5) if args.audio is None else source
    audio = np.resize(base, total).astype(np.float32)
    from blendtalk.models.checkpoint import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as err:
        p.error(str(err))
    pipe = Pipeline.from_pretrained(device=device)
    warm_up(pipe)  # lazy initialisation (CUDA kernels above all) is not a frame's latency; the CLI warms up too
    try:
        config = LiveConfig(lookahead=args.lookahead, edge_ms=args.edge_ms, closure_lookahead=not args.no_closure_lookahead,
                            realtime=True)
        session = pipe.live(args.emotion, config=config)
    except ValueError as err:
        p.error(str(err))
    step = int(round(args.chunk_ms / 1000 * SAMPLE_RATE))
    frames, busy = [], 0.0
    start = time.perf_counter()
    for i in tqdm(range(0, total, step), desc="live", unit="chunk", mininterval=5, disable=not sys.stderr.isatty()):
        due = start + min(i + step, total) / SAMPLE_RATE
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        frames += [(f, time.perf_counter()) for f in session.push(audio[i:i + step], arrived=due)]
        busy += time.perf_counter() - t0
        if i // step % 500 == 0:  # a change of expression now and then, as a user would
            session.set_expression(("happy", "sad", "surprised", "angry")[i // step // 500 % 4], 0.8)
    frames = [(f, out) for f, out in frames]  # finish()'s tail is not real-time traffic: not counted

    from blendtalk.live.speech_stream import frame_start

    window = np.array([f.latency for f, _ in frames])  # from the due time of the chunk completing the window
    own_end = np.array([start + frame_start(f.index + 1) / SAMPLE_RATE for f, _ in frames])  # last sample of its own audio
    needed = np.array([start + session.window_end(f.index) / SAMPLE_RATE for f, _ in frames])  # last sample its window reads
    own = np.array([f.ready for f, _ in frames]) - own_end
    minute = FPS * 60
    stages = {k: percentiles([f.stages[k] for f, _ in frames]) for k in frames[0][0].stages}
    report = {
        "audio_seconds": total / SAMPLE_RATE, "chunk_ms": args.chunk_ms, "frames": len(frames),
        "lookahead_frames": args.lookahead, "lookahead_ms": round(session.lookahead_seconds * 1000, 1),
        "edge_ms": args.edge_ms, "closure_lookahead": not args.no_closure_lookahead,
        **percentiles(window), "total_latency": percentiles(own),
        "parts": {"lookahead_audio": percentiles(needed - own_end), "chunk_wait": percentiles(np.array([f.arrived for f, _ in frames]) - needed),
                  "window": percentiles(window)},
        "realtime_factor": round(busy / (total / SAMPLE_RATE), 3),
        "per_stage": stages, "torch_threads": args.threads, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dropped_samples": session.dropped,
        "skipped_frames": session.skipped, "load_average_at_end": list(__import__("os").getloadavg()),
        "first_minute": percentiles(window[:minute]), "last_minute": percentiles(window[-minute:]),
        "command": "python eval/live_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report["drift_p95_ms"] = round(report["last_minute"]["p95_ms"] - report["first_minute"]["p95_ms"], 1)
    print(json.dumps(report, indent=2))
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
