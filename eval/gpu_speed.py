"""Issue #27's GPU figures, warm and in-process: the DFM at batch 1 (eager and replayed as one CUDA
graph) and batched (float32 with and without TF32, float16, bfloat16, channels-last,
torch.compile), each with its largest deviation from eager float32 (TF32 off) in mm; a torch.profiler table of the fastest batched DFM within
tolerance and its FLOPs and bytes per frame against the card's peaks; the pipeline batched
(decoded audio -> rendered 512 px frames in memory, phone recognition included); and one 10 s
clip -> mp4 as `Pipeline.animate` + `save_video` run it (mp4 only where an ffmpeg is found).

    python eval/gpu_speed.py --device cuda --json out/gpu_speed.json
    python eval/gpu_speed.py --device cpu --quick --json /tmp/dry.json     # a dry run of every path

Every timed figure is min/median/max over --repeats calls after warm-up calls.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
from dataclasses import replace
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from blendtalk.constants import FPS
from blendtalk.face.rig import load_rig
from blendtalk.models.checkpoint import pick_device
from blendtalk.models.dfm import load_dfm
from blendtalk.evaluation.reports import JSON_FILE, write_report

TOLERANCE_MM = 0.01  # the bound against eager float32
# Vendor peaks (dense, no sparsity) of the SXM cards, for the physical limit; KINDS.md measured
# 770-798 TFLOP/s for an 8192^3 bfloat16 matrix product on both.
PEAKS = {"H100": {"bf16_tflops": 989.4, "tf32_tflops": 494.7, "fp32_tflops": 66.9, "tb_per_s": 3.35},
         "H200": {"bf16_tflops": 989.4, "tf32_tflops": 494.7, "fp32_tflops": 66.9, "tb_per_s": 4.8}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of `repeats` calls of fn() after `warmup` untimed ones, the device synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def rate(times: list[float], frames: int) -> dict:
    """frames/s min/median/max from per-call seconds."""
    return {"frames": frames, "fps_min": frames / max(times), "fps_median": frames / statistics.median(times),
            "fps_max": frames / min(times), "median_s": statistics.median(times), "times_s": times}


def deviation_mm(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-vertex distance (mm) between fused displacements (..., V, 3) in metres."""
    return float((out.float() - ref.float()).norm(dim=-1).max()) * 1000


def dfm_inputs(rig, batch: int, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech-like and expression-like displacements (B, V, 3): random mixes of the rig's units."""
    g = torch.Generator().manual_seed(seed)
    deltas = torch.as_tensor(rig.deltas, dtype=torch.float32)  # (K, V, 3)
    d_s = torch.einsum("bk,kvc->bvc", torch.rand(batch, len(deltas), generator=g) * 0.3, deltas)
    d_e = torch.einsum("bk,kvc->bvc", torch.rand(batch, len(deltas), generator=g) * 0.3, deltas)
    return d_s.to(device), d_e.to(device)


@contextlib.contextmanager
def encoders_channels_last(dfm, on: bool):
    """The DFM's two encoders in channels-last memory format while inside (as they were after)."""
    if on:
        for enc in (dfm.speech_encoder, dfm.expression_encoder):
            enc.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if on:
            for enc in (dfm.speech_encoder, dfm.expression_encoder):
                enc.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def strict_float32(on: bool = True):
    """TF32 off for convolutions and matrix products while inside (torch lets cuDNN convolutions use
    TF32 by default, so plain "float32" on an H100 is TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if on:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(device, dtype):
    """Autocast to `dtype` (None: none)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def variant_fn(dfm, device, dtype, compiled):
    """fuse(d_s, d_e) under autocast to `dtype` (None: float32), through `compiled` (a
    torch.compile of dfm.fuse) when given; the result in float32."""
    fuse = compiled or dfm.fuse
    precision = autocast(device, dtype)

    def run(d_s, d_e):
        with torch.inference_mode(), precision:
            return fuse(d_s, d_e).float()
    return run


def graph_fuse(dfm, d_s: torch.Tensor, d_e: torch.Tensor, dtype):
    """dfm.fuse on fixed input buffers captured as one CUDA graph: (replay() -> output, inputs)."""
    static_s, static_e = d_s.clone(), d_e.clone()
    # No autocast weight cache: casts made outside the capture must not be replayed from it.
    precision = contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype, cache_enabled=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode(), precision:
        for _ in range(3):  # warm-up on a side stream, as capture needs
            dfm.fuse(static_s, static_e)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), precision, torch.cuda.graph(graph):
        out = dfm.fuse(static_s, static_e)

    def replay():
        graph.replay()
        return out
    return replay, (static_s, static_e)


def gather_map(dfm, rig):
    """A dense stand-in for the DFM's sparse geometric map: each pixel's 3 (vertex, weight) pairs,
    gathered and summed (no cuSPARSE call, so it can be captured in a CUDA graph). Same map, the
    three products summed in another order."""
    from blendtalk.face.geometry import load_square_map

    smap = load_square_map(rig, dfm.config.map_size)
    device = dfm.map_matrix.device
    idx = torch.as_tensor(smap.indices.reshape(-1), dtype=torch.long, device=device)  # (N*N*3,)
    w = torch.as_tensor(smap.weights.reshape(-1, 3, 1), dtype=torch.float32, device=device)  # (N*N, 3, 1)
    n = dfm.config.map_size

    def geometry_map(d: torch.Tensor) -> torch.Tensor:
        b = d.shape[0]
        picked = d.float().index_select(1, idx).reshape(b, n * n, 3, 3)  # (B, N*N, corner, xyz)
        img = (picked * w).sum(2)  # (B, N*N, 3)
        return img.reshape(b, n, n, 3).permute(0, 3, 1, 2)  # (B, 3, N, N), channels-last strides
    return geometry_map


def dfm_section(args, device, rig, report: dict, save) -> dict:
    """save(): writes the report so far (a run stopped by a time limit keeps what it measured)."""
    dfm = load_dfm(args.dfm, rig, device)
    out = {"config": {k: getattr(dfm.config, k) for k in ("num_vertices", "k_speech", "k_expression", "map_size")}
           | {"channels": list(dfm.config.channels)}}
    report["dfm"] = out

    # Batch 1: a live stream's one frame per call.
    d1_s, d1_e = dfm_inputs(rig, 1, device, seed=1)
    with torch.inference_mode(), strict_float32():
        ref1 = dfm.fuse(d1_s, d1_e)
    eager = variant_fn(dfm, device, None, None)
    out["batch1_eager_fp32"] = rate(timed(lambda: eager(d1_s, d1_e), device, args.repeats_b1, 5), 1)
    print(f"DFM batch 1 eager float32: {out['batch1_eager_fp32']['fps_median']:.0f} frames/s", flush=True)
    if device.type == "cuda":
        # The sparse map's own capture (cuSPARSE) comes last, in the "graph_sparse" section: a refused
        # capture can leave the CUDA context unusable for what follows.
        graphs = (("batch1_graph_fp32_sparse", None, False),) if args.sections == ["graph_sparse"] else (
            ("batch1_graph_fp32_gather", None, True), ("batch1_graph_fp16_gather", torch.float16, True),
            ("batch1_graph_bf16_gather", torch.bfloat16, True))
        for name, dtype, use_gather in graphs:
            try:
                plain = dfm.geometry_map
                if use_gather:
                    object.__setattr__(dfm, "geometry_map", gather_map(dfm, rig))
                try:
                    replay, _ = graph_fuse(dfm, d1_s, d1_e, dtype)
                    row = rate(timed(replay, device, args.repeats_b1, 5), 1)
                    row["max_dev_mm"] = deviation_mm(replay(), ref1)
                finally:
                    if use_gather:
                        del dfm.__dict__["geometry_map"]
                        assert dfm.geometry_map == plain
            except Exception as err:  # capture refused (e.g. a library call that cannot be captured)
                row = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            out[name] = row
            save()
            print(f"DFM {name}: {row.get('fps_median', float('nan')):.0f} frames/s, dev {row.get('max_dev_mm', float('nan')):.5f} mm "
                  f"{row.get('error', '')}", flush=True)

    if args.sections == ["graph_sparse"]:
        return out
    # Batched.
    b = args.batch
    d_s, d_e = dfm_inputs(rig, b, device, seed=2)
    with torch.inference_mode(), strict_float32():
        ref = dfm.fuse(d_s, d_e)
    bf16, fp16 = torch.bfloat16, torch.float16
    # (name, autocast dtype, channels-last encoders, torch.compile, TF32 off)
    variants = [("fp32_strict", None, False, False, True), ("fp32", None, False, False, False),
                ("fp16", fp16, False, False, False), ("bf16", bf16, False, False, False),
                ("fp16_channels_last", fp16, True, False, False), ("bf16_channels_last", bf16, True, False, False)]
    if device.type == "cuda" and not args.no_compile:
        variants += [("bf16_compile", bf16, False, True, False), ("fp16_channels_last_compile", fp16, True, True, False)]
    rows = {}

    def best_within_tolerance() -> str:
        ok = {k: r for k, r in rows.items() if r["within_tolerance"] and "fps_median" in r}
        return max(ok, key=lambda k: ok[k]["fps_median"]) if ok else "fp32_strict"

    for name, dtype, cl, comp, strict in variants:
        if comp and "profile" not in out:  # profiled before the compiles, which a time limit may cut short
            out["profile"] = profile_table(dfm, device, d_s, d_e, best_within_tolerance(), args)
            save()
        try:
            with encoders_channels_last(dfm, cl), strict_float32(strict):
                t0 = time.perf_counter()
                compiled = torch.compile(dfm.fuse) if comp else None
                fn = variant_fn(dfm, device, dtype, compiled)
                result = fn(d_s, d_e)
                sync(device)
                first = time.perf_counter() - t0
                row = rate(timed(lambda: fn(d_s, d_e), device, args.repeats, 2), b)
                row |= {"max_dev_mm": deviation_mm(result, ref), "first_call_s": first}
                if comp:
                    torch._dynamo.reset()
        except Exception as err:
            row = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        row["within_tolerance"] = row.get("max_dev_mm", 1e9) <= TOLERANCE_MM
        rows[name] = row
        out["batched"] = rows
        save()
        print(f"DFM batch {b} {name}: {row.get('fps_median', float('nan')):.0f} frames/s "
              f"(min {row.get('fps_min', float('nan')):.0f}, max {row.get('fps_max', float('nan')):.0f}), "
              f"dev {row.get('max_dev_mm', float('nan')):.5f} mm, first call {row.get('first_call_s', float('nan')):.1f} s "
              f"{row.get('error', '')}", flush=True)
    out["batched"] = rows
    best = out["best_within_tolerance"] = best_within_tolerance()
    out["limits"] = physical_limits(dfm, device, rows.get(best, {}), best)
    # The limits of the fastest variant whatever its deviation, for the distance to the card's peak.
    fastest = max((k for k in rows if "fps_median" in rows[k]), key=lambda k: rows[k]["fps_median"], default=None)
    if fastest is not None:
        out["limits_fastest"] = physical_limits(dfm, device, rows[fastest], fastest)
    if "profile" not in out:
        out["profile"] = profile_table(dfm, device, d_s, d_e, best, args)
    return out


def count_flops(dfm) -> dict:
    """FLOPs of one fused frame (both encoders on one frame each, the decoder), counted from the
    layers' output shapes; and the bytes an ideal implementation moves per frame in bfloat16."""
    shapes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append((mod, tuple(inp[0].shape), tuple(out.shape))))
             for enc in (dfm.speech_encoder, dfm.expression_encoder) for m in enc
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    v = dfm.config.num_vertices
    d = torch.zeros(1, v, 3, device=dfm.map_matrix.device)
    d[0, :, 1] = 1e-3
    with torch.inference_mode():
        dfm.fuse(d, d)
    for h in hooks:
        h.remove()
    conv = lin = act = 0
    for mod, inp, out in shapes:
        if isinstance(mod, torch.nn.Conv2d):
            conv += 2 * int(np.prod(out)) * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            act += int(np.prod(out))
        else:
            lin += 2 * mod.in_features * mod.out_features
    nnz = dfm.map_matrix._nnz()
    sparse = 2 * (2 * nnz * 3)  # two encoders, 3 coordinates, multiply + add
    decode = 2 * 3 * v * dfm.config.k_total * 2  # decode_expression(cross_s) and the fused sum, about
    # Ideal traffic (bfloat16 activations): each conv output written, read by the norm, written, read
    # by the next conv (4 passes); the map image (3 N^2) written and read in float32; the inputs and
    # the output (V x 3 float32 each).
    n = dfm.config.map_size
    traffic = 4 * act * 2 + 2 * (2 * 3 * n * n * 4) + 3 * (3 * v * 4)
    return {"conv_flops": conv, "linear_flops": lin, "sparse_map_flops": sparse, "decoder_flops": decode,
            "total_flops": conv + lin + sparse + decode, "activation_elements": act, "ideal_bytes_bf16": traffic}


def physical_limits(dfm, device, best_row: dict, best: str) -> dict:
    counts = count_flops(dfm)
    out = {"per_frame": counts}
    if device.type != "cuda":
        return out
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    if peak is None or "fps_median" not in best_row:
        return out
    fps = best_row["fps_median"]
    # bf16 and fp16 share the tensor-core peak; float32 convolutions run as TF32 unless strict
    flops_peak = 1e12 * (peak["bf16_tflops"] if "16" in best else peak["fp32_tflops"] if "strict" in best
                         else peak["tf32_tflops"])
    out |= {"card": name, "peaks": peak, "variant": best, "fps": fps,
            "achieved_tflops": fps * counts["total_flops"] / 1e12,
            "share_of_compute_peak": fps * counts["total_flops"] / flops_peak,
            "compute_bound_fps": flops_peak / counts["total_flops"],
            "memory_bound_fps": peak["tb_per_s"] * 1e12 / counts["ideal_bytes_bf16"],
            "achieved_tb_per_s_if_ideal_traffic": fps * counts["ideal_bytes_bf16"] / 1e12}
    return out


def profile_table(dfm, device, d_s, d_e, best: str, args) -> dict:
    """torch.profiler of the batched DFM (eager, in the best variant's precision): where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    dtype = torch.bfloat16 if "bf16" in best else torch.float16 if "fp16" in best else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with encoders_channels_last(dfm, "channels_last" in best), strict_float32("strict" in best):
        fn = variant_fn(dfm, device, dtype, None)
        fn(d_s, d_e)
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(3):
                fn(d_s, d_e)
            sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=20)
    except Exception:  # newer torch names the column after the device
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=20)
    print(table, flush=True)
    return {"variant_profiled": f"{best} (eager)", "calls": 3, "batch": len(d_s), "table": table}


def pipeline_section(args, device, report: dict, save) -> None:
    """B clips of --seconds: phones (one worker process per clip, whole clips: the same phones as in
    one process), features, speech model (batched), expression, DFM (batched), render to frames."""
    from blendtalk.evaluation.clips import long_clip
    from blendtalk.pipeline import Expression, Pipeline
    from blendtalk.speech.audio import load_audio
    from blendtalk.speech.features import features_from_phones
    from blendtalk.speech.phone_workers import PhoneWorkers
    from blendtalk.speech.phones import cover_phones
    from blendtalk.speech.phonetics import _to_pcm16

    pipe = Pipeline.from_pretrained(device=str(device))
    tmp = Path(tempfile.mkdtemp(prefix="blendtalk-gpu-"))
    wav, _ = long_clip(args.seconds, tmp)
    audio = load_audio(wav)
    b = args.clips
    audios = [audio] * b
    workers = PhoneWorkers(b)
    expr = Expression("happy", 1.0, seed=0)
    renderer = pipe.renderer(args.size)
    stages: dict[str, list[float]] = {}

    def stage(name, fn):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        stages.setdefault(name, []).append(time.perf_counter() - t0)
        return result

    def once() -> int:
        found = stage("phones", lambda: workers.recognize([_to_pcm16(a) for a in audios]))
        speech = stage("features", lambda: [features_from_phones(a, cover_phones(p, len(a) / 16000), "recognized")
                                            for a, p in zip(audios, found)])
        t = speech[0].num_frames
        model = pipe.speech_model
        n = model.config.num_speakers

        def speech_model():
            x = torch.from_numpy(np.stack([s.features for s in speech])).to(device)  # (B, T, F)
            with torch.inference_mode():
                return model.generate(x, t, torch.full((b, n), 1.0 / n, device=device)).float().cpu().numpy()
        d_s = stage("speech model", speech_model)  # (B, T, V, 3)
        d_e = stage("expression", lambda: pipe.expression_deformation(expr, t))  # (T, V, 3)
        fused, _ = stage("dfm", lambda: pipe.fuse(d_s.reshape(b * t, *d_s.shape[2:]), np.tile(d_e, (b, 1, 1)), "ours", True))
        verts = pipe.rig.vertices[None].astype(np.float32) + fused  # (B*T, V, 3)
        def render():
            step = pipe.render_batch
            for i in range(0, len(verts), step):  # each batch (step, size, size, 3) uint8 in host memory, then dropped
                renderer(verts[i:i + step])
        stage("render", render)
        return b * t

    frames = once()  # warm-up: worker start, cuDNN plans, renderer set-up
    stages.clear()
    totals = []
    for _ in range(args.repeats_pipeline):
        t0 = time.perf_counter()
        once()
        totals.append(time.perf_counter() - t0)
    workers.close()
    report["pipeline_batched"] = {"clips": b, "seconds_each": args.seconds, "size": args.size, **rate(totals, frames),
                                  "stages_median_s": {k: statistics.median(v) for k, v in stages.items()},
                                  "renderer": renderer.backend,
                                  "gl_frames_per_call": renderer.gl.frames_per_call if renderer.gl is not None else None,
                                  "note": "one phone-recognition process per clip (whole clips); DFM float32 eager as "
                                          "Pipeline.fuse runs it; render as Pipeline.renderer draws on the device"}
    save()
    r = report["pipeline_batched"]
    print(f"pipeline, {b} clips: {r['fps_min']:.0f} / {r['fps_median']:.0f} / {r['fps_max']:.0f} frames/s; "
          + ", ".join(f"{k} {v:.3f}" for k, v in r["stages_median_s"].items()), flush=True)

    # One clip -> mp4, as the CLI's pipeline runs it (phone workers as the device's default).

    from blendtalk.render.video import nvenc_available

    out_mp4 = tmp / "out.mp4"
    try:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # no ffmpeg: frames in memory only
        ffmpeg = None
        report["clip_to_mp4_note"] = f"no ffmpeg ({type(err).__name__}: {str(err)[:150]})"

    def clip(to_mp4: bool) -> dict:
        t0 = time.perf_counter()
        anim = pipe.animate(wav, emotion="happy")
        if to_mp4:
            pipe.save_video(anim, out_mp4, args.size)
        else:
            t1 = time.perf_counter()
            for _ in pipe.render_frames(anim, args.size):
                pass
            anim.meta["timings"]["render"] = time.perf_counter() - t1
        return {"wall_s": time.perf_counter() - t0, **anim.meta["timings"]}

    for key, to_mp4 in (("clip_to_frames", False), ("clip_to_mp4", True)):
        if to_mp4 and ffmpeg is None:
            continue
        clip(to_mp4)  # warm-up
        runs = [clip(to_mp4) for _ in range(args.repeats_clip)]
        walls = [r["wall_s"] for r in runs]
        report[key] = {"seconds": args.seconds, "size": args.size, "renderer": pipe.renderer(args.size).backend,
                       "nvenc": ffmpeg is not None and nvenc_available(ffmpeg), "min_s": min(walls), "median_s": statistics.median(walls),
                       "max_s": max(walls), "phone_workers": pipe.phone_workers,
                       "stages_median_s": {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "wall_s"},
                       "runs": runs}
        save()
        r = report[key]
        print(f"{key}: {r['min_s']:.3f} / {r['median_s']:.3f} / {r['max_s']:.3f} s; "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["stages_median_s"].items()), flush=True)
    pipe.close()


def render_section(args, device, report: dict, save) -> None:
    """Where the torch rasterizer's time goes on this device, for one 10 s clip at --size: per chunk
    of frames, dressing and framing, the z-buffer, shading, the sRGB encode and the copy to the host,
    each timed with the device synchronised (so the total is a little above the plain render's)."""
    from blendtalk.evaluation.clips import long_clip
    from blendtalk.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(device=str(device))
    wav, _ = long_clip(args.seconds, Path(tempfile.mkdtemp(prefix="blendtalk-render-")))
    anim = pipe.animate(wav, emotion="happy")
    r = pipe.renderer(args.size)
    verts = torch.as_tensor(anim.vertices)
    n = r.config.size * r.config.supersample
    stages: dict[str, float] = {}

    def stage(name, fn):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
        return out

    def once():
        stages.clear()
        block = stage("dressing", lambda: r.dressing(verts.to(device), None) if r.dressing is not None else verts.to(device))
        for start, end in stage("plan chunks", lambda: r._chunks(block)):
            chunk = block[start:end]
            x, y, depth, q = stage("project", lambda: r.camera.project(chunk, n))
            zbuf, planes, area = stage("z-buffer", lambda: r.raster(x, y, q, n))
            pix = stage("covered pixels", lambda: torch.nonzero(zbuf != r.raster.empty).squeeze(1))
            colour = stage("shade", lambda: r._shade_pixels(chunk, r._brows(chunk), depth, zbuf, planes, area, pix, n))
            image = stage("encode", lambda: r._encode(colour))
            stage("to host", lambda: image.cpu().numpy())
        return dict(stages)

    once()
    runs = [once() for _ in range(3)]
    report["render_breakdown"] = {"frames": len(verts), "size": args.size, "renderer": "torch rasterizer",
                                  "median_s": {k: statistics.median(run[k] for run in runs) for k in runs[0]}}
    save()
    print("render breakdown, " + ", ".join(f"{k} {v:.3f}" for k, v in report["render_breakdown"]["median_s"].items()), flush=True)
    pipe.close()


def gl_section(args, device, report: dict, save) -> None:
    """The render and the encode of one 10 s clip on this host, each way the code can take:
    * render at --size in Pipeline.render_batch calls: the torch rasterizer on the device, OpenGL
      with the geometry on the device (`RenderConfig(backend="gl")`: the GPU's own driver where EGL
      reaches it, else llvmpipe), and OpenGL's frames converted to yuv420p on the device; the mean
      absolute difference of OpenGL's frames from the rasterizer's (8-bit levels);
    * encode of the same frames to mp4 (no audio): rgb24 into x264 (ffmpeg converts), yuv420p into
      x264, and yuv420p into NVENC where `video.nvenc_available` says this ffmpeg and driver have it."""
    import os

    from blendtalk.evaluation.clips import long_clip
    from blendtalk.pipeline import Pipeline
    from blendtalk.render import gl
    from blendtalk.render.egl_vendor import FILES_ENV
    from blendtalk.render.renderer import Renderer
    from blendtalk.render.video import VideoConfig, nvenc_available, probe, write_video
    from blendtalk.render.yuv import rgb_to_yuv420

    ok, name = gl.gl_status()
    report["gl_render"] = {"available": ok, "renderer": name, "hardware": ok and gl.is_hardware(name),
                           FILES_ENV: os.environ.get(FILES_ENV)}
    print(f"OpenGL: {ok}, {name}", flush=True)
    pipe = Pipeline.from_pretrained(device=str(device))
    tmp = Path(tempfile.mkdtemp(prefix="blendtalk-gl-"))
    wav, _ = long_clip(args.seconds, tmp)
    anim = pipe.animate(wav, emotion="happy")
    verts = torch.as_tensor(anim.vertices)
    step = pipe.render_batch
    base = pipe.renderer(args.size).config
    renderers = {"torch": Renderer.for_rig(pipe.rig, replace(base, backend="torch"), device=device)}
    if ok:
        renderers["gl"] = Renderer.for_rig(pipe.rig, replace(base, backend="gl"), device=device)
        report["gl_render"]["tiles"] = renderers["gl"].gl.frames_per_call
    frames = {}
    for key, r in renderers.items():
        for fmt in ("rgb24", "yuv420p"):
            def draw(r=r, fmt=fmt):
                return np.concatenate([r(verts[i:i + step], pixel_format=fmt) for i in range(0, len(verts), step)])
            frames[key, fmt] = draw()
            times = timed(draw, device, args.repeats_clip, warmup=1)
            report["gl_render"][f"{key}_{fmt}"] = rate(times, len(verts))
            r_ = report["gl_render"][f"{key}_{fmt}"]
            print(f"render {key} {fmt} {args.size} px: {r_['fps_min']:.0f} / {r_['fps_median']:.0f} / {r_['fps_max']:.0f} frames/s,"
                  f" {r_['median_s']:.3f} s", flush=True)
            save()
    if ok:  # where the OpenGL path's time goes: geometry on the device, attributes to the host, drawing + reading
        r = renderers["gl"]
        block = r.dressing(verts.to(device), None) if r.dressing is not None else verts.to(device)
        brows = r._brows(block)
        per = max(r.gl.frames_per_call, 8)
        spans = [slice(i, i + per) for i in range(0, len(verts), per)]
        attributes = [r._gl_attributes(block[s_], brows[s_]) for s_ in spans]
        parts = {"geometry (dressing, brows)": lambda: r._brows(r.dressing(verts.to(device), None)),
                 "attributes to pinned host memory": lambda: [r._gl_attributes(block[s_], brows[s_]) for s_ in spans],
                 "OpenGL draw + read, rgb24": lambda: [r.gl(a) for a in attributes]}
        if r.gl.frames_per_call > 1:
            parts["OpenGL draw + read, yuv420p"] = lambda: [r.gl(a, pixel_format="yuv420p") for a in attributes]
        breakdown = {}
        for name_, fn in parts.items():
            times = timed(fn, device, args.repeats_clip, warmup=1)
            breakdown[name_] = {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}
            print(f"gl breakdown, {name_}: {min(times):.3f} / {statistics.median(times):.3f} / {max(times):.3f} s", flush=True)
        report["gl_render"]["breakdown"] = breakdown
        save()
        diff = np.abs(frames["gl", "rgb24"].astype(np.int16) - frames["torch", "rgb24"].astype(np.int16))
        report["gl_render"]["mad_gl_vs_torch"] = float(diff.mean())
        report["gl_render"]["share_over_8_levels"] = float((diff.max(-1) > 8).mean())
        print(f"gl vs torch: MAD {diff.mean():.4f} levels", flush=True)
        try:
            from PIL import Image

            pick = frames["gl", "rgb24"][len(verts) // 2], frames["torch", "rgb24"][len(verts) // 2]
            Image.fromarray(np.concatenate(pick, 1)).save(Path(args.json).with_suffix(".png") if args.json else tmp / "gl.png")
        except Exception:  # a picture is a nicety
            pass
    rgb = frames.get(("gl", "rgb24"), frames["torch", "rgb24"])
    yuv = rgb_to_yuv420(torch.from_numpy(rgb)).numpy()
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    report["encode"] = {"ffmpeg": ffmpeg, "nvenc_available": nvenc_available(ffmpeg), "frames": len(rgb)}
    cases = [("rgb24_x264", rgb, "rgb24", VideoConfig()), ("yuv420p_x264", yuv, "yuv420p", VideoConfig())]
    if report["encode"]["nvenc_available"]:
        cases.append(("yuv420p_nvenc", yuv, "yuv420p", VideoConfig(encoder="h264_nvenc")))
    for key, data, fmt, cfg in cases:
        out = tmp / f"{key}.mp4"
        times = timed(lambda: write_video(out, data, anim.fps, config=cfg, pixel_format=fmt), torch.device("cpu"),
                      args.repeats_clip, warmup=1)
        v = probe(out)["video"]
        report["encode"][key] = {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times),
                                 "bytes": out.stat().st_size, "stream": {k: v[k] for k in ("codec", "profile", "pix_fmt", "frames")}}
        print(f"encode {key}: {min(times):.3f} / {statistics.median(times):.3f} / {max(times):.3f} s, {out.stat().st_size} bytes, {v['pix_fmt']}",
              flush=True)
        save()
    pipe.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dfm", type=Path, default=Path("assets/dfm"))
    p.add_argument("--batch", type=int, default=4096, help="frames per batched DFM call")
    p.add_argument("--repeats", type=int, default=10, help="timed calls of each batched figure")
    p.add_argument("--repeats-b1", type=int, default=300, help="timed calls at batch 1")
    p.add_argument("--clips", type=int, default=16, help="clips of the batched pipeline")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    p.add_argument("--size", type=int, default=512, help="video size in pixels")
    p.add_argument("--repeats-pipeline", type=int, default=3)
    p.add_argument("--repeats-clip", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--sections", nargs="+", default=["dfm", "pipeline"], choices=["dfm", "pipeline", "render", "gl", "graph_sparse"],
                   help="graph_sparse alone: capture the DFM with its sparse map as a CUDA graph (run it last, in its own process)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every code path")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.repeats_b1, args.clips, args.seconds = 16, 2, 3, 2, 3.0
        args.repeats_pipeline, args.repeats_clip, args.size = 1, 1, 128
    if min(args.batch, args.repeats, args.repeats_b1, args.clips, args.repeats_pipeline, args.repeats_clip) < 1:
        p.error("batch, clips and repeats must be at least 1")
    try:
        device = pick_device(args.device)
    except ValueError as err:
        p.error(str(err))
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": str(device),
              "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "fps": FPS, "tolerance_mm": TOLERANCE_MM, "args": {k: str(v) for k, v in vars(args).items()}}
    rig = load_rig()

    def save():
        if args.json:
            write_report(args.json, report)

    for section, fn in (("dfm", lambda: dfm_section(args, device, rig, report, save)),
                        ("graph_sparse", lambda: dfm_section(args, device, rig, report, save)),
                        ("pipeline", lambda: pipeline_section(args, device, report, save)),
                        ("render", lambda: render_section(args, device, report, save)),
                        ("gl", lambda: gl_section(args, device, report, save))):
        if section not in args.sections:
            continue
        try:
            fn()
        except Exception:  # keep what the other sections measured
            report[f"{section}_error"] = traceback.format_exc()[-3000:]
            print(report[f"{section}_error"], flush=True)
        save()
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
