"""CPU per frame of the OpenGL renderer's parts on a 10 s clip, the drawers taking turns.

    LP_NUM_THREADS=0 python eval/gl_frame_cost.py --rounds 3 --json out/gl_frame_cost.json

The CLI's clip (eval/cli_speed.py's, emotion neutral) is animated once; its per-vertex attributes
are computed once; then each variant draws all frames, 8 at a time as the renderer does, in turn
(round 1: every variant, round 2: every variant, ...), so that a change in the machine's load
falls on all of them alike. With LP_NUM_THREADS=0 llvmpipe rasterises on the calling thread, and
the figure is that thread's CPU time: the work itself, without the hand-offs between llvmpipe's
threads, and moved little by other jobs. Otherwise it is the process's CPU time (all threads).
Per variant: 20th percentile, median and mean of the 8-frame batches, in ms per frame, and the
pixels that differ from the first variant's frames. Also timed once: the attributes (one torch
thread, as the renderer's helper thread computes them) and the dressing, brows and head turn.

Variants: "as shipped"; "one shader" (every triangle through the shader with lines, folds and
brows); "no back-face pass"; "read-back only" (clear, upload and read, nothing drawn).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from blendtalk.evaluation.clips import long_clip
from blendtalk.evaluation.reports import JSON_FILE, write_report
from blendtalk.expression.head_motion import rotate_head
from blendtalk.pipeline import Pipeline
from blendtalk.render import gl
from blendtalk.render.renderer import Renderer

BATCH = 8  # frames per draw call, as `Renderer._draw_gl` passes them


def cpu_clock():
    """Thread CPU where llvmpipe draws on the calling thread, else the whole process's."""
    if os.environ.get("LP_NUM_THREADS") == "0":
        return time.thread_time

    def process() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    return process


def drawers(pipe: Pipeline, renderer: Renderer) -> dict:
    """The variants' draw functions: attributes (T, V, 19) -> frames (T, H, W, 3)."""
    shipped = renderer.gl
    made = gl.GLDrawer.__init__

    def one_shader(self, *args, **kwargs):
        made(self, *args, **{**kwargs, "detailed": None})

    gl.GLDrawer.__init__ = one_shader
    try:
        single = Renderer.for_rig(pipe.rig, renderer.config).gl
    finally:
        gl.GLDrawer.__init__ = made

    def with_renders(drawer, keep):
        """drawer with each vertex array's render call kept only where keep(call index in the frame)."""
        arrays = drawer.arrays
        renders = [a.render for a in arrays]
        count = [0]

        def wrap(i):
            def render(mode):
                k = count[0] % (2 * len(arrays))
                count[0] += 1
                if keep(k, len(arrays)):
                    renders[i](mode)
            return render

        def draw(attributes):
            for i, a in enumerate(arrays):
                a.render = wrap(i)
            try:
                return drawer(attributes)
            finally:
                for a, r in zip(arrays, renders):
                    a.render = r

        return draw

    return {"as shipped": shipped, "one shader": single,
            "no back-face pass": with_renders(shipped, lambda k, n: k < n),
            "read-back only": with_renders(shipped, lambda k, n: False)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.15, help="length of the speech clip")
    p.add_argument("--size", type=int, default=512, help="frame size in pixels")
    p.add_argument("--rounds", type=int, default=3, help="turns of every variant")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if not 1.0 <= args.seconds <= 60.0 or args.rounds < 1 or not 64 <= args.size <= 2048:
        p.error("--seconds must be in [1, 60], --rounds at least 1 and --size in [64, 2048]")
    pipe = Pipeline.from_pretrained(device="cpu")
    renderer = pipe.renderer(args.size)
    if renderer.backend != "gl":
        p.error("OpenGL is not available here: nothing to time")
    with tempfile.TemporaryDirectory(prefix="blendtalk-gl-cost-") as tmp:
        wav, _ = long_clip(args.seconds, Path(tmp))
        anim = pipe.animate(str(wav))
    clock = cpu_clock()
    with torch.inference_mode():
        t0 = clock()
        verts = renderer.dressing(torch.as_tensor(anim.vertices), torch.as_tensor(anim.gaze).float())  # (T, V+E, 3)
        brows = renderer._brows(verts)
        verts = rotate_head(verts, torch.as_tensor(anim.head_rotation).float(), renderer.pivot)
        geometry_ms = (clock() - t0) / len(verts) * 1000
    t0 = time.thread_time()
    attributes = np.concatenate([renderer._gl_attributes(verts[s : s + BATCH], brows[s : s + BATCH])
                                 for s in range(0, len(verts), BATCH)])  # (T, V+E, 19)
    attributes_ms = (time.thread_time() - t0) / len(verts) * 1000
    variants = drawers(pipe, renderer)
    spans = [(s, min(s + BATCH, len(attributes))) for s in range(0, len(attributes), BATCH)]
    costs = {name: [] for name in variants}
    frames = {}
    for name, draw in variants.items():  # untimed: llvmpipe compiles each program's shaders on first use
        frames[name] = np.concatenate([draw(attributes[a:b]) for a, b in spans])
    for _ in range(args.rounds):
        for name, draw in variants.items():
            for a, b in spans:
                t0 = clock()
                draw(attributes[a:b])
                costs[name].append((clock() - t0) / (b - a) * 1000)
    reference = frames["as shipped"]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
              "lp_num_threads": os.environ.get("LP_NUM_THREADS", "llvmpipe's default"),
              "clock": "thread" if os.environ.get("LP_NUM_THREADS") == "0" else "process",
              "frames": len(attributes), "size": args.size, "rounds": args.rounds,
              "geometry_ms_per_frame": geometry_ms, "attributes_ms_per_frame": attributes_ms, "variants": {}}
    for name, values in costs.items():
        v = np.array(values)
        report["variants"][name] = {"p20_ms": float(np.percentile(v, 20)), "median_ms": float(np.median(v)), "mean_ms": float(v.mean()),
                                    "pixels_differing": int((frames[name] != reference).any(-1).sum())}
    report["load_average_after"] = os.getloadavg()
    print(f"{len(attributes)} frames at {args.size} px, CPU ms per frame ({report['clock']} clock), "
          f"load {report['load_average'][0]:.1f} -> {report['load_average_after'][0]:.1f}")
    print(f"  dressing, brows, head turn {geometry_ms:.2f}; attributes (one thread) {attributes_ms:.2f}")
    for name, r in report["variants"].items():
        print(f"  {name:18s} p20 {r['p20_ms']:.2f}  median {r['median_ms']:.2f}  mean {r['mean_ms']:.2f}  "
              f"pixels differing {r['pixels_differing']}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
