"""Wall time of `python -m blendtalk animate SPEECH.wav -o out.mp4` as a user runs it, start-up included.

    python eval/cli_speed.py --seconds 10.15 --size 512 --repeats 3 --json out/cli_speed.json

Modes (min/median/max of --repeats each):
* process, warm: a new Python process per run after one untimed run, so bytecode, the square-map
  cache, Mesa's shader cache and the OS file cache are warm (the second run of a user).
* process, fresh: a new process per run with empty bytecode (PYTHONPYCACHEPREFIX), square-map
  (BLENDTALK_CACHE) and Mesa shader (MESA_SHADER_CACHE_DIR) caches: every .py file, the package's and
  torch's alike, is compiled again, which is more than a new venv right after `pip install` costs
  (pip compiles site-packages); the OS file cache stays warm (dropping it would hurt a shared machine).
* process, new install: what a new venv right after `pip install -r requirements.txt` costs: the
  installed packages' bytecode present (pip writes it), this package's own not (a new clone: a copy
  of `blendtalk/` without __pycache__, run from a temporary folder beside the repo's assets), and
  empty square-map and Mesa shader caches. The shipped square map is part of the install.
* in-process: `blendtalk.cli.main(argv)` called in this process; the first call pays the imports,
  later calls only the checkpoint loading (eval/end_to_end.py times a loaded pipeline).
The stage times are the CLI's own (`timings_s` of its JSON line). The clip is the shipped 3 s clips
joined to --seconds (eval/end_to_end.py builds it the same way).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blendtalk.evaluation.clips import long_clip
from blendtalk.evaluation.reports import JSON_FILE, write_report

MODES = ("process-warm", "process-fresh", "process-new-install", "in-process")
ROOT = Path(__file__).resolve().parents[1]


def cli_argv(wav: Path, out: Path, size: int) -> list[str]:
    return ["animate", str(wav), "-o", str(out), "--size", str(size), "--overwrite", "--quiet"]


def run_process(argv: list[str], env: dict) -> dict:
    """One CLI run in a new process: wall seconds (process start to exit) and its stage times."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "blendtalk", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"blendtalk exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return {"wall_s": wall, **json.loads(done.stdout)["timings_s"]}


def run_in_process(argv: list[str]) -> dict:
    from blendtalk.cli import main

    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"blendtalk.cli.main returned {code}")
    return {"wall_s": wall, **json.loads(buf.getvalue())["timings_s"]}


def summary(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {"min": min(walls), "median": statistics.median(walls), "max": max(walls),
            "stages_median": {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "wall_s"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.15, help="length of the speech clip")
    p.add_argument("--size", type=int, default=512, help="video size in pixels")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="what to time")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if not 1.0 <= args.seconds <= 60.0 or args.repeats < 1 or not 64 <= args.size <= 2048:
        p.error("--seconds must be in [1, 60], --repeats at least 1 and --size in [64, 2048]")
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
              "seconds": args.seconds, "size": args.size, "repeats": args.repeats, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="blendtalk-cli-speed-") as tmp:
        tmp = Path(tmp)
        wav, _ = long_clip(args.seconds, tmp)
        out = tmp / "out.mp4"
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # a user's Python writes bytecode
        for mode in args.modes:
            if mode == "process-warm":
                env = {**base, "PYTHONPYCACHEPREFIX": str(tmp / "pycache-warm")}
                run_process(cli_argv(wav, out, args.size), env)  # warm-up: bytecode and caches
                runs = [run_process(cli_argv(wav, out, args.size), env) for _ in range(args.repeats)]
            elif mode == "process-fresh":
                runs = []
                for i in range(args.repeats):
                    fresh = tmp / f"fresh-{i}"
                    env = {**base, "PYTHONPYCACHEPREFIX": str(fresh / "pycache"), "BLENDTALK_CACHE": str(fresh / "cache"),
                           "MESA_SHADER_CACHE_DIR": str(fresh / "mesa")}
                    runs.append(run_process(cli_argv(wav, out, args.size), env))
            elif mode == "process-new-install":
                runs = []
                for i in range(args.repeats):
                    fresh = tmp / f"install-{i}"
                    shutil.copytree(ROOT / "blendtalk", fresh / "blendtalk", ignore=shutil.ignore_patterns("__pycache__"))
                    (fresh / "assets").symlink_to(ROOT / "assets")  # the package finds its assets beside it
                    env = {k: v for k, v in base.items() if k != "PYTHONPYCACHEPREFIX"}
                    env.update(PYTHONPATH=str(fresh), BLENDTALK_CACHE=str(fresh / "cache"), MESA_SHADER_CACHE_DIR=str(fresh / "mesa"))
                    runs.append(run_process(cli_argv(wav, out, args.size), env))
            else:
                runs = [run_in_process(cli_argv(wav, out, args.size)) for _ in range(args.repeats + 1)]
                report["modes"]["in-process, first call"] = {**summary(runs[:1]), "runs": runs[:1]}
                runs = runs[1:]
            report["modes"][mode] = {**summary(runs), "runs": runs}
        report["load_average_after"] = os.getloadavg()
    for mode, s in report["modes"].items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in s["stages_median"].items())
        print(f"{args.seconds:g} s of speech -> {args.size} px mp4, {mode}: min {s['min']:.2f} / median {s['median']:.2f} / "
              f"max {s['max']:.2f} s; stages (median): {stages}", flush=True)
    print(f"load average before {report['load_average'][0]:.1f}, after {report['load_average_after'][0]:.1f} "
          f"on {report['cores']} cores", flush=True)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
