"""Frames per second of the headless renderer on the face rig.

    python eval/benchmark_render.py
    python eval/benchmark_render.py --device cuda --sizes 256 512 1024 --json render_fps.json

The rig is animated with jawOpen and mouthSmileLeft/Right over --frames frames and rendered as
one batch; after --warmup untimed batches, each of --repeats batches is timed (wall clock).
Reports the median frames/s and the spread (min..max) per size, plus the renderer's build time.
"""

import argparse
import os
import platform
import time

import numpy as np
import torch

from blendtalk.render.renderer import Renderer, RenderConfig
from blendtalk.face.rig import load_rig
from blendtalk.evaluation.reports import JSON_FILE, write_report


def animation(rig, frames: int) -> np.ndarray:
    """(T, V, 3) vertices: two jaw open-close cycles with a smile rising and falling against them."""
    phase = np.linspace(0, 4 * np.pi, frames, dtype=np.float32)
    weights = np.zeros((frames, rig.num_blendshapes), dtype=np.float32)
    weights[:, rig.index("jawOpen")] = 0.5 - 0.5 * np.cos(phase)
    smile = 0.5 - 0.5 * np.cos(0.5 * phase)
    weights[:, rig.index("mouthSmileLeft")] = smile
    weights[:, rig.index("mouthSmileRight")] = smile
    return rig(weights)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(rig, vertices: np.ndarray, size: int, device: torch.device, warmup: int, repeats: int) -> dict:
    """Time building a renderer and rendering `vertices` (T, V, 3) at `size` px; frames/s stats."""
    _sync(device)
    start = time.perf_counter()
    renderer = Renderer.for_rig(rig, RenderConfig(size=size), device=device)
    _sync(device)
    build_s = time.perf_counter() - start
    batch = torch.as_tensor(vertices, device=device)
    for _ in range(warmup):
        renderer(batch)
    fps = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        frames = renderer(batch)  # returns host uint8 frames: the copy back is part of the cost
        fps.append(len(frames) / (time.perf_counter() - start))
    fps = np.array(fps)
    return {
        "size": size,
        "frames": len(vertices),
        "fps_median": float(np.median(fps)),
        "fps_min": float(fps.min()),
        "fps_max": float(fps.max()),
        "build_s": build_s,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device to render on")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sizes, px")
    parser.add_argument("--frames", type=int, default=60, help="frames per rendered batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=JSON_FILE, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # a script may; the package never sets global state
    if args.frames < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--frames and --repeats must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device")

    rig = load_rig()
    vertices = animation(rig, args.frames)
    rows = [measure(rig, vertices, size, device, args.warmup, args.repeats) for size in args.sizes]
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    if device.type == "cuda":
        host += f", {torch.cuda.get_device_name(device)}"
    print(
        f"renderer frames/s on {device} ({host}, {torch.get_num_threads()} threads); "
        f"V={rig.num_vertices}, F={len(rig.triangles)}, {args.frames} frames per batch, {args.repeats} timed batches"
    )
    print(f"{'size':>6} {'fps median':>11} {'fps min..max':>15} {'build s':>8}")
    for row in rows:
        spread = f"{row['fps_min']:.1f}..{row['fps_max']:.1f}"
        print(f"{row['size']:>6} {row['fps_median']:>11.1f} {spread:>15} {row['build_s']:>8.2f}")
    result = {"device": str(device), "host": host, "torch_threads": torch.get_num_threads(), "results": rows}
    if args.json is not None:
        write_report(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
