"""Soak test of the Gradio app: many requests, each from a new gradio_client client, in bursts.

    python eval/soak.py [--requests 200] [--burst 16] [--long-every 4] [--long-seconds 10] [--long-size 512]
                        [--short-size 128] [--max-minutes 60] [--json OUT] [--plot OUT.png] [-- APP ARGS...]

Starts `python app.py` on a free localhost port (offline, its own work folder, as eval/load_test.py),
then sends `--requests` requests in bursts of `--burst` at once, each from a fresh Client (a new
session, as a new visitor): every `--long-every`-th request is a long clip (`--long-seconds` of
speech at `--long-size` px; the 3D view is built for every request), the others the shipped 3 s
clips at `--short-size`. After each request it records the app's RSS and the size of Gradio's
cache folder; the run stops after `--max-minutes` whatever is left. Writes a JSON report and a
PNG of RSS and cache size over requests. The issue's target: RSS after the run within 300 MB of
RSS after the first 20 requests, and the cache bounded (by the app's --cache-max-mb).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python eval/X.py`: its sibling scripts import as eval.*

import numpy as np

from blendtalk.evaluation.clips import CLIPS, long_clip
from blendtalk.serving import folder_bytes
from blendtalk.evaluation.reports import JSON_FILE
from eval.load_test import classify, launch_app, rss_mb

REQUEST_TIMEOUT_S = 600  # s one request may take, queue wait included
TARGET_GROWTH_MB = 300  # MB: RSS at the end may exceed RSS after the first 20 requests by at most this
BASELINE_AT = 20  # requests: where the RSS baseline is taken


@dataclass
class Sample:
    index: int  # requests finished so far (1-based)
    t_s: float  # s since the start
    kind: str  # "long" or "short"
    status: str  # ok / refused / failed
    seconds: float  # latency of this request
    rss_mb: float  # the app's RSS after it
    cache_mb: float  # Gradio's cache folder after it


@dataclass
class Floor:
    """The app between bursts, after `--settle` s without requests (its sweeper has trimmed the heap)."""

    index: int  # requests finished so far
    t_s: float  # s since the start
    rss_mb: float
    anon_mb: float  # RSS that is heap (malloc arenas, Python and torch memory), not mapped files
    threads: int
    cache_mb: float


@dataclass
class SoakReport:
    requests: int
    sent: int
    ok: int
    refused: int
    failed: int
    errors: list[str]
    rss_mb: dict[str, float]  # start (after warm-up), at BASELINE_AT, end, max, after the idle wait
    cache_mb: dict[str, float]  # max, end, after the idle wait
    wall_s: float
    config: dict
    samples: list[Sample] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)  # one per burst when --settle > 0
    floor_slope_mb_per_100: float | None = None  # least squares over the floors after BASELINE_AT requests
    command: str = ""


def one_request(url: str, audio: Path, transcript: str, size: int, downloads: Path, i: int) -> tuple[str, float, str]:
    """A new Client sends one /animate request; returns (status, seconds, error)."""
    from gradio_client import Client, handle_file

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False, download_files=str(downloads / str(i)))
        video, _html, _curves, files, _status = client.submit(
            handle_file(str(audio)), "", transcript, "happy", 0.8, "", 0.5, "", True, size,
            api_name="/animate").result(timeout=REQUEST_TIMEOUT_S)
        if not (video and Path(video).stat().st_size > 0 and files):
            raise RuntimeError("empty result")
        return "ok", time.perf_counter() - t0, ""
    except Exception as err:  # noqa: BLE001  counted and reported
        return classify(err), time.perf_counter() - t0, f"{type(err).__name__}: {err}"[:300]


def proc_status(pid: int) -> dict[str, int]:
    """RssAnon (kB) and Threads of a process from /proc (empty without /proc)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "Threads"):
                out[key] = int(value.split()[0])
    return out


def floor_slope(floors: list[Floor]) -> float | None:
    """MB per 100 requests of the floors after BASELINE_AT requests (least squares; None under 3 points)."""
    points = [(f.index, f.rss_mb) for f in floors if f.index > BASELINE_AT]
    if len(points) < 3:
        return None
    x, y = np.array(points, dtype=float).T
    return round(float(np.polyfit(x, y, 1)[0]) * 100, 1)


def soak(app, requests: int, burst: int, long_every: int, long_seconds: float, long_size: int, short_size: int,
         max_minutes: float, idle_s: float, settle_s: float = 0.0) -> SoakReport:
    """Send the requests to a running app in bursts and record RSS and cache size after each (and, with
    `settle_s`, the app's floor after each burst: RSS once it has been idle that long)."""
    cache = app.workdir / "gradio"
    lock = threading.Lock()
    samples: list[Sample] = []
    floors: list[Floor] = []
    start_rss = rss_mb(app.pid)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="blendtalk-soak-") as tmp:
        tmp = Path(tmp)
        long_audio, long_text = long_clip(long_seconds, tmp)
        jobs = []
        for i in range(requests):
            if long_every and i % long_every == long_every - 1:
                jobs.append(("long", long_audio, long_text, long_size))
            else:
                audio, text = CLIPS[i % len(CLIPS)]
                jobs.append(("short", audio, text.read_text().strip(), short_size))
        errors: list[str] = []

        def run(i):
            kind, audio, text, size = jobs[i]
            status, seconds, error = one_request(app.url, audio, text, size, tmp / "downloads", i)
            with lock:
                samples.append(Sample(len(samples) + 1, round(time.perf_counter() - t0, 1), kind, status,
                                      round(seconds, 2), round(rss_mb(app.pid), 1), round(folder_bytes(cache) / 2**20, 1)))
                if error:
                    errors.append(error)

        sent = 0
        with ThreadPoolExecutor(burst) as pool:
            for b in range(0, requests, burst):
                if time.perf_counter() - t0 > max_minutes * 60:
                    print(f"stopping after {max_minutes} min", file=sys.stderr)
                    break
                list(pool.map(run, range(b, min(b + burst, requests))))
                sent = min(b + burst, requests)
                last = samples[-1]
                print(f"{sent}/{requests}: RSS {last.rss_mb:.0f} MB, cache {last.cache_mb:.0f} MB, "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
                if settle_s > 0:
                    time.sleep(settle_s)
                    status = proc_status(app.pid)
                    floors.append(Floor(len(samples), round(time.perf_counter() - t0, 1), round(rss_mb(app.pid), 1),
                                        round(status.get("RssAnon", 0) / 1024, 1), status.get("Threads", 0),
                                        round(folder_bytes(cache) / 2**20, 1)))
                    print(f"  floor after {settle_s:g} s idle: RSS {floors[-1].rss_mb:.0f} MB "
                          f"(heap {floors[-1].anon_mb:.0f} MB), {floors[-1].threads} threads", file=sys.stderr)
    wall = time.perf_counter() - t0
    time.sleep(idle_s)  # what stays once nobody asks
    idle_rss, idle_cache = rss_mb(app.pid), folder_bytes(cache) / 2**20
    rss = [s.rss_mb for s in samples]
    base = rss[min(BASELINE_AT, len(rss)) - 1] if rss else start_rss
    return SoakReport(
        requests=requests, sent=sent, ok=sum(s.status == "ok" for s in samples),
        refused=sum(s.status == "refused" for s in samples), failed=sum(s.status == "failed" for s in samples),
        errors=sorted(set(errors))[:5],
        rss_mb={"start": round(start_rss, 1), f"after_{BASELINE_AT}": base, "end": rss[-1] if rss else start_rss,
                "max": max(rss, default=start_rss), "idle": round(idle_rss, 1)},
        cache_mb={"max": max((s.cache_mb for s in samples), default=0.0),
                  "end": samples[-1].cache_mb if samples else 0.0, "idle": round(idle_cache, 1)},
        wall_s=round(wall, 1),
        config=dict(burst=burst, long_every=long_every, long_seconds=long_seconds, long_size=long_size,
                    short_size=short_size, idle_s=idle_s, settle_s=settle_s),
        samples=samples, floors=floors, floor_slope_mb_per_100=floor_slope(floors))


def plot(report: SoakReport, path: Path) -> None:
    """RSS and cache size over requests, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s.index for s in report.samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(x, [s.rss_mb for s in report.samples], ".-", ms=3, label="after each request")
    if report.floors:
        top.plot([f.index for f in report.floors], [f.rss_mb for f in report.floors], "ks", ms=5,
                 label=f"floor: after {report.config.get('settle_s', 0):g} s idle")
    base = report.rss_mb[f"after_{BASELINE_AT}"]
    top.axhline(base + TARGET_GROWTH_MB, color="r", ls="--", lw=1, label=f"target: RSS after {BASELINE_AT} + {TARGET_GROWTH_MB} MB")
    top.set_ylabel("app RSS (MB)")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(x, [s.cache_mb for s in report.samples], ".-", ms=3, color="tab:orange")
    bottom.set_ylabel("Gradio cache (MB)")
    bottom.set_xlabel("requests finished (each from a new client)")
    fig.suptitle(f"soak: {report.sent} requests in bursts of {report.config['burst']} "
                 f"({report.ok} ok, {report.refused} refused, {report.failed} failed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests in all, each from a new client")
    parser.add_argument("--burst", type=int, default=16, help="requests sent at once")
    parser.add_argument("--long-every", type=int, default=4, help="every N-th request is a long clip; 0: none")
    parser.add_argument("--long-seconds", type=float, default=10.0, help="s of speech of a long clip")
    parser.add_argument("--long-size", type=int, default=512, choices=(128, 256, 384, 512), help="px of a long clip")
    parser.add_argument("--short-size", type=int, default=128, choices=(128, 256, 384, 512), help="px of a short clip")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="stop sending new bursts after this")
    parser.add_argument("--idle", type=float, default=30.0, help="s to wait after the run before the last reading")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="s to wait after each burst before reading the app's floor (RSS, heap, threads); "
                             "longer than the app's sweep period (--delete-cache EVERY), which trims the heap")
    parser.add_argument("--json", type=JSON_FILE, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the PNG here")
    parser.add_argument("app_args", nargs="*", help="extra app.py arguments (after --), e.g. --cache-max-mb 200")
    args = parser.parse_args(argv)
    if not args.max_minutes > 0:
        parser.error(f"--max-minutes must be positive, got {args.max_minutes:g}")
    if args.requests < 1 or args.burst < 1:
        parser.error("--requests and --burst must be at least 1")
    with tempfile.TemporaryDirectory(prefix="blendtalk-soak-app-") as workdir:
        print("starting the app ...", file=sys.stderr)
        with launch_app(Path(workdir), "--queue-size", str(max(16, args.burst)), *args.app_args) as app:
            report = soak(app, args.requests, args.burst, args.long_every, args.long_seconds, args.long_size,
                          args.short_size, args.max_minutes, args.idle, args.settle)
    report.command = "python eval/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(asdict(report), indent=1)
    print(json.dumps({k: v for k, v in asdict(report).items() if k != "samples"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.plot:
        plot(report, args.plot)
    growth = report.rss_mb["end"] - report.rss_mb[f"after_{BASELINE_AT}"]
    return 0 if report.failed == 0 and growth <= TARGET_GROWTH_MB else 1


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
