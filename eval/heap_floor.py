"""The heap's floor over requests served as the app serves them, with glibc's malloc arenas limited or not.

    python eval/heap_floor.py [--requests 48] [--arenas 0] [--json OUT]

In one process: load the pipeline, then run typed-text requests two at a time on a 16-thread pool
(as Gradio's workers: each request on whichever thread is free), each making the animation, a
video (128 px, every 4th 256 px), the 3D view's HTML and the weight curves, as `/animate` does;
as in the app, the start-up's objects are frozen and a full collection follows every request (its
time is recorded). After every 8 requests: `malloc_trim`, then the RSS and its heap part
(RssAnon). `--arenas N` (N > 0) first limits glibc to N malloc arenas (`serving.limit_malloc_arenas`,
as app.py does with 2); 0 leaves glibc's default (8 per core). The floor rising with requests is
memory that neither Python nor glibc gives back. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blendtalk.evaluation.reports import JSON_FILE

TEXTS = ("Nice to see you again today.", "What a lovely surprise to see you here!", "I did not expect that at all.",
         "Please come in and sit down for a while.")
POOL_THREADS = 16  # threads the requests are spread over (Gradio's workers come from such a pool)
AT_ONCE = 2  # requests computed at once (app.CONCURRENCY)
EVERY = 8  # requests between two readings


def proc_status() -> dict[str, int]:
    """VmRSS and RssAnon (kB) and Threads of this process."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "Threads"):
            out[key] = int(value.split()[0])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help=f"requests in all (a multiple of {EVERY})")
    parser.add_argument("--arenas", type=int, default=0, help="glibc malloc arenas; 0: glibc's default")
    parser.add_argument("--json", type=JSON_FILE, help="write the readings here")
    args = parser.parse_args(argv)
    if args.requests < EVERY or args.arenas < 0:
        parser.error(f"--requests must be at least {EVERY} and --arenas at least 0")
    from blendtalk import serving

    limited = serving.limit_malloc_arenas(args.arenas) if args.arenas else False  # before any thread starts
    import torch

    torch.set_num_threads(1)  # as app.py on 2 cores with 2 requests at once
    from blendtalk.evaluation.reports import write_report
    from blendtalk.pipeline import Pipeline
    from blendtalk.render.viz import animation_figure, figure_html, rig_look, weights_figure

    pipe = Pipeline.from_pretrained()
    look = rig_look(pipe.rig)
    frozen = serving.freeze_startup()
    collections: list[float] = []  # s per collection after a request
    gate = threading.Semaphore(AT_ONCE)
    with tempfile.TemporaryDirectory(prefix="blendtalk-heap-") as tmp:
        def request(i: int) -> int:
            with gate:
                anim = pipe.animate(text=TEXTS[i % len(TEXTS)], emotion="happy")
                video = Path(tmp) / f"{i}.mp4"
                pipe.save_video(anim, video, size=256 if i % 4 == 0 else 128)
                html = figure_html(animation_figure(anim, rig=look, max_frames=90), height=500, include_plotlyjs="x.js")
                curves = weights_figure(anim).to_json()
                video.unlink()
                del anim
                t0 = time.perf_counter()
                serving.collect_garbage()  # as Service.admitted_steps after every request
                collections.append(time.perf_counter() - t0)
                return len(html) + len(curves)

        readings = []
        with ThreadPoolExecutor(POOL_THREADS) as pool:
            for start in range(0, args.requests - args.requests % EVERY, EVERY):
                list(pool.map(request, range(start, start + EVERY)))
                serving.release_memory()  # gc.collect() + malloc_trim: what is left is the floor
                status = proc_status()
                readings.append({"requests": start + EVERY, "rss_mb": round(status["VmRSS"] / 1024),
                                 "heap_mb": round(status["RssAnon"] / 1024), "threads": status["Threads"]})
                print(readings[-1], file=sys.stderr, flush=True)
    collections.sort()
    report = {"arenas": args.arenas or "glibc default", "limited": limited, "frozen_objects": frozen,
              "collection_s": {"min": round(collections[0], 4), "median": round(collections[len(collections) // 2], 4),
                               "max": round(collections[-1], 4)},
              "malloc_arena_max_env": os.environ.get("MALLOC_ARENA_MAX"), "readings": readings,
              "command": "python eval/heap_floor.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        write_report(args.json, report)
    print(report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
