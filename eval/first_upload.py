"""Cold start of the app: the first 44.1 kHz upload to a fresh app against the second.

    python eval/first_upload.py [--repeats 3] [--size 256] [--json OUT]

Each repeat starts `python app.py` afresh (offline, its own work folder, as eval/load_test.py) and,
once it answers, sends two 44.1 kHz wav uploads of the shipped ARCTIC clip one after the other,
each from a new gradio_client client: the time of each request, from submission to the playable
video on the client (the app's first update). The two files differ (a gain of 1 dB) so that no
cache on either side may serve the second from the first. Anything lazy left for the first real
request (a decoder, the resampler, a model's first call) shows as the first being slower; the
reliability issue's target is first <= 2 x second. Prints min/median/max and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import soxr

from blendtalk.constants import ASSETS_DIR
from blendtalk.evaluation.reports import JSON_FILE, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval/load_test.py, beside this script
from load_test import launch_app  # noqa: E402

UPLOAD_RATE = 44_100  # Hz: what most recordings and phones give
TARGET_RATIO = 2.0  # the first request may take at most this times the second
WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"


def upload_files(folder: Path) -> list[Path]:
    """Two 44.1 kHz wavs of the ARCTIC clip, 1 dB apart (different bytes, same work)."""
    audio, rate = sf.read(str(WAV), dtype="float32")
    audio = soxr.resample(audio, rate, UPLOAD_RATE)
    files = []
    for k, gain_db in enumerate((0.0, -1.0)):
        path = folder / f"upload_{k}.wav"
        sf.write(str(path), audio * 10 ** (gain_db / 20), UPLOAD_RATE)
        files.append(path)
    return files


def video_seconds(url: str, audio: Path, size: int) -> float:
    """Seconds from submission to the video on a new client (the app's first update)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    t = time.perf_counter()
    job = client.submit(handle_file(str(audio)), "", "", "happy", 1.0, "", 0.5, "", True, size, api_name="/animate")
    while not job.outputs() and not job.done():
        time.sleep(0.01)
    seconds = time.perf_counter() - t
    job.result()  # the rest (3D view, downloads) before the next request starts
    return seconds


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="fresh apps, each sent two uploads")
    p.add_argument("--size", type=int, default=256, choices=[128, 256, 384, 512], help="video size in px")
    p.add_argument("--json", type=JSON_FILE, help="write the report here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="first-upload-") as tmp:
        files = upload_files(Path(tmp))
        for k in range(args.repeats):
            workdir = Path(tmp) / f"app{k}"
            workdir.mkdir()
            with launch_app(workdir, "--size", str(args.size)) as app:
                first, second = (video_seconds(app.url, f, args.size) for f in files)
            runs.append({"first_s": round(first, 2), "second_s": round(second, 2), "ratio": round(first / second, 2)})
            print(f"app {k + 1}: first {first:.2f} s, second {second:.2f} s, ratio {first / second:.2f}")
    report = {name: summary([r[key] for r in runs]) for name, key in
              (("first_s", "first_s"), ("second_s", "second_s"), ("ratio", "ratio"))}
    report.update(target_ratio=TARGET_RATIO, met=all(r["ratio"] <= TARGET_RATIO for r in runs), runs=runs,
                  size=args.size, upload_rate=UPLOAD_RATE, command="python eval/first_upload.py " + " ".join(argv or sys.argv[1:]))
    for name in ("first_s", "second_s", "ratio"):
        s = report[name]
        print(f"{name}: {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} (min / median / max)")
    print(f"target first <= {TARGET_RATIO:g} x second: {'met' if report['met'] else 'MISSED'}")
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
