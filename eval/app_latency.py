"""Time from Generate to a playable video (and to all outputs) in the Gradio app, per video size.

    python eval/app_latency.py --seconds 10 --sizes 256 512 --repeats 3 --json out/app_latency.json

Starts `python app.py` offline on a free port (as eval/load_test.py does), builds a speech clip of
--seconds from the shipped 3 s clips (joined with 0.3 s pauses, transcripts joined too) and sends
it to `/animate` with gradio_client, one request at a time (with its transcript, or with
--no-transcript the audio alone, whose words the app then recognises). Two times per request, from
submission: to the playable video on the client (the app's first update, what a person waits for)
and to everything back (the 3D view, the weight curves and the downloads follow the video). The
page's HTML load is timed with a plain GET; the browser's page load and click-to-playable time
come from `pytest tests/test_browser.py -s`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from blendtalk.evaluation.clips import long_clip
from blendtalk.evaluation.reports import JSON_FILE, write_report

from load_test import launch_app  # eval/load_test.py, beside this script


def request(client, audio, transcript: str, size: int) -> tuple[float, float]:
    """Seconds from submission to the video on the client (the app's first update), and to the end."""
    t = time.perf_counter()
    job = client.submit(audio, "", transcript, "happy", 0.8, "", 0.5, "", True, size, api_name="/animate")
    video_s = None
    while not job.done():
        if video_s is None and job.outputs():
            video_s = time.perf_counter() - t
        time.sleep(0.01)
    video, *_ = job.result()
    all_s = time.perf_counter() - t
    if not (video and Path(video).stat().st_size > 0):
        raise RuntimeError(f"no video came back at size {size}")
    return (all_s if video_s is None else video_s), all_s


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.1f} s ({min(times):.1f}..{max(times):.1f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the speech clip")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], choices=[128, 256, 384, 512])
    p.add_argument("--repeats", type=int, default=3, help="requests per size (after one untimed warm-up)")
    p.add_argument("--no-transcript", action="store_true", help="send the audio alone (its words are then recognised)")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if not 1.0 <= args.seconds <= 60.0 or args.repeats < 1:
        p.error("--seconds must be in [1, 60] and --repeats at least 1")
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="blendtalk-latency-") as tmp:
        tmp = Path(tmp)
        wav, transcript = long_clip(args.seconds, tmp)
        transcript = "" if args.no_transcript else transcript
        with launch_app(tmp) as app:
            t = time.perf_counter()
            httpx.get(app.url, timeout=30).raise_for_status()
            page_s = time.perf_counter() - t
            client = Client(app.url, verbose=False, download_files=str(tmp / "downloads"))
            report = {"seconds": args.seconds, "transcript": not args.no_transcript, "page_html_s": page_s, "sizes": {}}
            for size in args.sizes:
                times = {"video": [], "all": []}
                for i in range(args.repeats + 1):
                    video_s, all_s = request(client, handle_file(str(wav)), transcript, size)
                    if i:  # the first request at a size is a warm-up
                        times["video"].append(video_s)
                        times["all"].append(all_s)
                report["sizes"][size] = {
                    what: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)} for what, t in times.items()}
                print(f"{args.seconds:g} s of speech at {size} px ({args.repeats} requests): playable video "
                      f"{summary(times['video'])}; everything (3D view, curves, downloads) {summary(times['all'])}",
                      flush=True)
    print(f"page HTML: {page_s * 1e3:.0f} ms")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
