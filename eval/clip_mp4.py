"""One 10 s clip to mp4, warm and in-process, with each H.264 encoder (issue #27): x264 fed yuv420p
through ffmpeg against NVENC in this process (PyNvVideoCodec, `render.nvenc`), interleaved run by
run so that both see the same machine; the two files' decoded frames compared with each other and
with the rendered frames; and a cProfile of the audio front end, the largest share of the time
before the first frame.

    python eval/clip_mp4.py --device cuda --json out/clip_mp4.json
    python eval/clip_mp4.py --device cpu --quick --json /tmp/clip_mp4.json     # a dry run (x264 only)

Times are min / median / max over --repeats calls of `Pipeline.animate` + `Pipeline.save_video`
after one warm-up call of each encoder.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from blendtalk.evaluation.reports import JSON_FILE

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the clip")
    p.add_argument("--size", type=int, default=512, help="video size in pixels")
    p.add_argument("--repeats", type=int, default=7, help="timed clips per encoder")
    p.add_argument("--quick", action="store_true", help="3 s at 128 px, 2 repeats: a dry run")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.size, args.repeats = 3.0, 128, 2
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    from blendtalk.evaluation.clips import long_clip
    from blendtalk.evaluation.reports import write_report
    from blendtalk.models.checkpoint import pick_device
    from blendtalk.pipeline import Pipeline
    from blendtalk.render import nvenc
    from blendtalk.render.video import VideoConfig, probe, read_frames

    device = pick_device(args.device)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": str(device),
              "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "python": platform.python_version(), "args": {k: str(v) for k, v in vars(args).items()}}
    module = nvenc.pynvvideocodec()
    report["pynvvideocodec"] = getattr(module, "__version__", None) if module is not None else None

    def save():
        if args.json:
            write_report(args.json, report)

    pipe = Pipeline.from_pretrained(device=str(device))
    tmp = Path(tempfile.mkdtemp(prefix="blendtalk-clip-mp4-"))
    wav, _ = long_clip(args.seconds, tmp)
    configs = {"x264": VideoConfig()}  # on a GPU the frames still come as yuv420p (save_video's choice)
    if device.type == "cuda" and nvenc.available():
        configs["nvenc"] = VideoConfig(encoder="pynvvideocodec")
    else:  # the H100 has no NVENC engine at all
        report["note"] = ("no CUDA or no PyNvVideoCodec: x264 only" if module is None or device.type != "cuda"
                          else "PyNvVideoCodec could not open an encoder on this card (no NVENC engine): x264 only")
        print(report["note"], flush=True)
    report["renderer"] = pipe.renderer(args.size).backend

    def clip(key: str) -> dict:
        t0 = time.perf_counter()
        anim = pipe.animate(wav, emotion="happy")
        pipe.save_video(anim, tmp / f"{key}.mp4", args.size, video=configs[key])
        return {"wall_s": time.perf_counter() - t0, "encoder": anim.meta["encoder"], **anim.meta["timings"]}

    for key in configs:  # warm-up: phone workers, renderer, encoder session
        clip(key)
    runs: dict[str, list[dict]] = {key: [] for key in configs}
    for _ in range(args.repeats):
        for key in configs:
            runs[key].append(clip(key))
    for key, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        info = probe(tmp / f"{key}.mp4")
        report[f"clip_to_mp4_{key}"] = {
            "seconds": args.seconds, "size": args.size, "encoder": rs[-1]["encoder"],
            "min_s": min(walls), "median_s": statistics.median(walls), "max_s": max(walls),
            "stages_median_s": {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("wall_s", "encoder")},
            "bytes": (tmp / f"{key}.mp4").stat().st_size, "frames": info["video"]["frames"],
            "video_s": info["video"]["duration"], "audio_s": info["audio"]["duration"] if info["audio"] else None,
            "profile": info["video"]["profile"], "runs": rs}
        r = report[f"clip_to_mp4_{key}"]
        print(f"clip to mp4, {key} ({r['encoder']}): {r['min_s']:.3f} / {r['median_s']:.3f} / {r['max_s']:.3f} s; "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["stages_median_s"].items())
              + f"; {r['bytes']} bytes, {r['frames']} frames, video {r['video_s']:.3f} s, audio {r['audio_s']}", flush=True)
        save()

    # The pictures: every decoded frame of each file against the other's and the rendered RGB frames.
    anim = pipe.animate(wav, emotion="happy")  # the same seed: the same animation as the files'
    rendered = np.concatenate(list(pipe.render_frames(anim, args.size)))  # (T, H, W, 3)
    decoded = {key: read_frames(tmp / f"{key}.mp4") for key in configs}
    pictures = {}
    for key, frames in decoded.items():
        pictures[f"mad_{key}_vs_render"] = float(np.abs(frames.astype(np.int16) - rendered.astype(np.int16)).mean())
    if "nvenc" in decoded:
        diff = np.abs(decoded["nvenc"].astype(np.int16) - decoded["x264"].astype(np.int16))
        pictures["mad_nvenc_vs_x264"] = float(diff.mean())
        pictures["share_over_8_levels"] = float((diff.max(-1) > 8).mean())
        try:
            from PIL import Image

            mid = len(rendered) // 2
            picture = np.concatenate([decoded["x264"][mid], decoded["nvenc"][mid]], 1)
            Image.fromarray(picture).save(args.json.with_suffix(".png") if args.json else tmp / "x264_nvenc.png")
        except Exception:  # a picture is a nicety
            pass
    report["pictures"] = pictures
    print("pictures: " + ", ".join(f"{k} {v:.4f}" for k, v in pictures.items()), flush=True)
    save()

    # Before the first frame: the audio front end, profiled warm.
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    pipe.speech_input(wav)
    profile.disable()
    report["front_end_s"] = time.perf_counter() - t0
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(18)
    report["front_end_profile"] = text.getvalue()[-6000:]
    print(f"audio front end {report['front_end_s']:.3f} s, phone workers {pipe.phone_workers}\n" + report["front_end_profile"], flush=True)
    save()
    pipe.close()
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
