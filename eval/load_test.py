"""Load test of the Gradio app: N requests from C concurrent gradio_client clients to `/animate`.

    python eval/load_test.py [--requests 32] [--clients 8] [--size 128] [--queue-size 16] [--json OUT]

Starts `python app.py` on a free localhost port in a subprocess (its own work folder, offline),
sends the requests (short shipped clips with their transcripts, emotions in turn), stops the app and
reports: requests that succeeded, that the app's queue refused cleanly (gradio_client's QueueError
"Queue is full": the app's QUEUE_SIZE, or --queue-size), and that failed otherwise; p50/p95 latency
of the successful ones (from submission to the last output, queue wait included); the app
process's peak RSS (the kernel's VmHWM) and the peak PSS of the app with its children (the ffmpeg
encoders), sampled; and whether the per-request folders (`<workdir>/requests/*`, see
app.Workspace) are empty afterwards. Each client sends its share of the requests one after
another, so at most C are in flight; more clients than the queue size + CONCURRENCY (2) make the
queue refuse some.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from blendtalk.evaluation.browser import stop_process
from blendtalk.evaluation.clips import CLIPS
from blendtalk.evaluation.reports import JSON_FILE

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ("happy", "sad", "angry", "surprised", "fearful", "disgusted", "contempt", "neutral")
STARTUP_S = 180  # s the app may take to load the pipeline and warm up on a busy machine
REQUEST_TIMEOUT_S = 600  # s one request may take, queue wait included, before it counts as failed
SAMPLE_EVERY_S = 0.2  # s between RSS samples of the app and its children
CLEANUP_WAIT_S = 10  # s to wait for request folders to go after the last response
PAGE = 4096  # bytes per page in /proc/PID/statm


# ---------------------------------------------------------------------------------------------
# The app under test


@dataclass
class RunningApp:
    url: str
    pid: int
    workdir: Path  # the app's --workdir: requests/ and gradio/ are inside


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launch_app(workdir: Path, *extra: str, startup_s: float = STARTUP_S) -> Iterator[RunningApp]:
    """Run `python app.py` on a free port, offline, with its work folder `workdir/app` (as tests/test_app.py).

    The server log goes to `workdir/server.log`; the app is terminated (then killed) on exit.
    """
    workdir = Path(workdir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])), HF_HUB_OFFLINE="1")
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        # Every client here is 127.0.0.1: the per-client limits are off unless `extra` sets them.
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--workdir",
                                 str(workdir / "app"), "--rate-limit", "0", "--jobs-per-client", "0", *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            end = time.monotonic() + startup_s
            while True:
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"the app did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
            yield RunningApp(url, proc.pid, workdir / "app")
        finally:
            stop_process(proc, 20)


# ---------------------------------------------------------------------------------------------
# Memory


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM, kept by the kernel) in MB; None without /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


def rss_mb(pid: int) -> float:
    """Current RSS of the process in MB (psutil if installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except Exception:  # noqa: BLE001  psutil.Error: the process is gone
        pass
    return 0.0


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of the process and all its descendants (the ffmpeg encoders) in MB.

    PSS splits shared pages between the processes that map them, so the sum is the tree's real
    footprint; summed RSS would count a just-forked child's copy-on-write pages twice. 0 without /proc.
    """
    total_kb = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in children.read_text().split()]
    return out


class MemorySampler:
    """Every SAMPLE_EVERY_S, in a thread: the largest RSS of the process (`peak_rss`, for systems
    without VmHWM) and the largest PSS of its process tree (`peak_tree_pss`), in MB."""

    def __init__(self, pid: int):
        self.pid, self.peak_rss, self.peak_tree_pss = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
            self.peak_tree_pss = max(self.peak_tree_pss, tree_pss_mb(self.pid))
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# The load


@dataclass
class Outcome:
    status: str  # "ok", "refused" (queue full) or "failed"
    seconds: float  # from submission to the result or the error
    error: str = ""


@dataclass
class LoadReport:
    requests: int
    clients: int
    size: int  # px of the video
    queue_size: int | None  # the app's queue limit (None: the app's default)
    succeeded: int
    refused: int  # turned away by the queue limit, cleanly
    failed: int
    errors: list[str]  # distinct error messages of failed requests (at most 5)
    latency_s: dict[str, float]  # p50, p95, max, mean of successful requests
    wall_s: float
    throughput_per_min: float  # successful requests per minute of wall time
    peak_rss_mb: float  # the app process (VmHWM; sampled RSS without /proc)
    peak_tree_pss_mb: float  # the app and its children, proportional set size (sampled; 0 without /proc)
    leftover_request_folders: int  # in <workdir>/requests after the run: should be 0
    leftover_request_files: int
    command: str = field(default="")


def request_args(i: int) -> tuple:
    """The /animate inputs of request i: a clip (with its transcript) and an emotion, in turn."""
    from gradio_client import handle_file

    audio, transcript = CLIPS[i % len(CLIPS)]
    emotion = EMOTIONS[i % len(EMOTIONS)]
    return (handle_file(str(audio)), "", transcript.read_text().strip(), emotion, 0.8, "", 0.5, "", True)


def classify(err: Exception) -> str:
    """'refused' for the queue's clean refusal, else 'failed'."""
    from gradio_client.utils import QueueError

    return "refused" if isinstance(err, QueueError) or "queue is full" in str(err).lower() else "failed"


def run_client(url: str, indices: list[int], size: int, downloads: Path) -> list[Outcome]:
    """One gradio_client client sending requests `indices` one after another."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=str(downloads))
    out = []
    for i in indices:
        t0 = time.perf_counter()
        try:
            video, _html, _curves, files, _status = client.submit(*request_args(i), size, api_name="/animate").result(
                timeout=REQUEST_TIMEOUT_S)
            if not (video and Path(video).stat().st_size > 0 and files):
                raise RuntimeError(f"empty result: video {video!r}, {len(files or [])} downloads")
            out.append(Outcome("ok", time.perf_counter() - t0))
        except Exception as err:  # noqa: BLE001  every failure is counted and reported, none stops the run
            out.append(Outcome(classify(err), time.perf_counter() - t0, f"{type(err).__name__}: {err}"[:300]))
    return out


def run_load(app: RunningApp, requests: int, clients: int, size: int = 128, queue_size: int | None = None) -> LoadReport:
    """Send `requests` requests from `clients` concurrent clients to a running app and measure.

    queue_size: the app's queue limit, only recorded in the report."""
    if requests < 1 or clients < 1:
        raise ValueError(f"requests and clients must be >= 1, got {requests} and {clients}")
    shares = [list(range(c, requests, clients)) for c in range(min(clients, requests))]
    results: list[list[Outcome]] = [[] for _ in shares]
    with tempfile.TemporaryDirectory(prefix="blendtalk-load-") as downloads, MemorySampler(app.pid) as memory:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=lambda k=k: results[k].extend(
            run_client(app.url, shares[k], size, Path(downloads) / str(k)))) for k in range(len(shares))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    outcomes = list(itertools.chain.from_iterable(results))
    ok = np.array([o.seconds for o in outcomes if o.status == "ok"])
    latency = ({"p50": float(np.percentile(ok, 50)), "p95": float(np.percentile(ok, 95)), "max": float(ok.max()),
                "mean": float(ok.mean())} if len(ok) else {})
    folders, files = leftovers(app.workdir / "requests")
    return LoadReport(
        requests=requests, clients=len(shares), size=size, queue_size=queue_size, succeeded=len(ok),
        refused=sum(o.status == "refused" for o in outcomes), failed=sum(o.status == "failed" for o in outcomes),
        errors=sorted({o.error for o in outcomes if o.status == "failed"})[:5],
        latency_s={k: round(v, 2) for k, v in latency.items()}, wall_s=round(wall, 1),
        throughput_per_min=round(60 * len(ok) / wall, 1), peak_rss_mb=round(peak_rss_mb(app.pid) or memory.peak_rss, 1),
        peak_tree_pss_mb=round(memory.peak_tree_pss, 1), leftover_request_folders=folders, leftover_request_files=files)


def leftovers(requests_dir: Path, wait_s: float = CLEANUP_WAIT_S) -> tuple[int, int]:
    """(folders, files) left in the app's request folder, after waiting up to `wait_s` for them to go.

    The app removes a request's folder once Gradio has copied its results, which can trail the
    client's last message by a moment.
    """
    end = time.monotonic() + wait_s
    while True:
        folders = [p for p in requests_dir.iterdir()] if requests_dir.is_dir() else []
        if not folders or time.monotonic() > end:
            files = sum(1 for d in folders for p in d.rglob("*") if p.is_file())
            return len(folders), files
        time.sleep(0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="requests in all")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gradio_client clients")
    parser.add_argument("--size", type=int, default=128, choices=(128, 256, 384, 512), help="video size in px")
    parser.add_argument("--queue-size", type=int, help="the app's queue limit (app.py --queue-size); unset: its default")
    parser.add_argument("--json", type=JSON_FILE, help="also write the report here")
    parser.add_argument("--keep", type=Path, help="run the app in this folder and keep it (log, left-overs); "
                                                  "default a temporary folder")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blendtalk-load-app-")))
        print(f"starting the app in {workdir} ...", file=sys.stderr)
        extra = ["--size", str(args.size)] + (["--queue-size", str(args.queue_size)] if args.queue_size else [])
        app = stack.enter_context(launch_app(workdir, *extra))
        print(f"{args.requests} requests from {args.clients} clients to {app.url}animate ...", file=sys.stderr)
        report = run_load(app, args.requests, args.clients, args.size, args.queue_size)
    report.command = "python eval/load_test.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(asdict(report), indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if report.failed == 0 and report.leftover_request_folders == 0 else 1


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
