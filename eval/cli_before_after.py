"""Interleaved before/after wall and CPU time of `python -m blendtalk animate` from two source trees.

    git archive BASE | tar -x -C /tmp/before
    python eval/cli_before_after.py --before /tmp/before --after . --rounds 4 --json out.json

On a shared machine the load moves during a run, so the two trees take turns (before, after,
before, ...) after one untimed run each (bytecode and caches warm, as `eval/cli_speed.py
--modes process-warm`). CPU is user + system time of the process and its children (ffmpeg, the
phone worker), which moves less with the load than the wall time. Same clip as eval/cli_speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blendtalk.evaluation.clips import long_clip
from blendtalk.evaluation.reports import JSON_FILE, write_report


def run(tree: Path, wav: Path, out: Path, size: int) -> dict:
    """One CLI run with `tree` first on the path: wall and CPU seconds, the CLI's stage times, the load."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # warm: bytecode is written once and reused
    env = {**base, "PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": str(out.parent / f"pycache-{tree.name}")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "blendtalk", "animate", str(wav), "-o", str(out), "--size", str(size),
                           "--overwrite", "--quiet"], env=env, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: blendtalk exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, **json.loads(done.stdout)["timings_s"], "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="source tree of the baseline")
    p.add_argument("--after", type=Path, default=Path("."), help="source tree with the change")
    p.add_argument("--rounds", type=int, default=3, help="timed runs of each tree")
    p.add_argument("--seconds", type=float, default=10.15, help="length of the speech clip")
    p.add_argument("--size", type=int, default=512, help="video size in pixels")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, tree in trees.items():
        if not (tree / "blendtalk" / "__main__.py").is_file():
            p.error(f"--{name} {str(tree)!r} holds no blendtalk package")
    if args.rounds < 1 or not 1.0 <= args.seconds <= 60.0:
        p.error("--rounds must be at least 1 and --seconds in [1, 60]")
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
              "load_average": os.getloadavg(), "trees": {k: str(v) for k, v in trees.items()}, "runs": {k: [] for k in trees}}
    with tempfile.TemporaryDirectory(prefix="blendtalk-before-after-") as tmp:
        wav, _ = long_clip(args.seconds, Path(tmp))
        for tree in trees.values():
            run(tree, wav, Path(tmp) / "out.mp4", args.size)  # untimed: bytecode and caches
        for _ in range(args.rounds):
            for name, tree in trees.items():
                report["runs"][name].append(run(tree, wav, Path(tmp) / "out.mp4", args.size))
                print(name, json.dumps(report["runs"][name][-1]), flush=True)
    report["load_average_after"] = os.getloadavg()
    report["summary"] = {}
    for name, runs in report["runs"].items():
        stats = {}
        for key in ("wall_s", "cpu_s"):
            values = [r[key] for r in runs]
            stats[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        report["summary"][name] = stats
        print(f"{name}: wall {stats['wall_s']['min']:.2f} / {stats['wall_s']['median']:.2f} / {stats['wall_s']['max']:.2f} s, "
              f"CPU {stats['cpu_s']['min']:.2f} / {stats['cpu_s']['median']:.2f} / {stats['cpu_s']['max']:.2f} s (min / median / max)")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
