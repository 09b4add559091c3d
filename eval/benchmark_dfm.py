"""DFM throughput: fused frames per second at batch 1 (streaming) and batched.

    python eval/benchmark_dfm.py --dfm assets/dfm --device cuda --json out.json
    python eval/benchmark_dfm.py --device cuda --bf16 --compile      # bfloat16 autocast, torch.compile(fuse)
"""

import contextlib

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from blendtalk.face.rig import load_rig
from blendtalk.models.checkpoint import pick_device
from blendtalk.models.dfm import load_dfm
from blendtalk.evaluation.reports import JSON_FILE


def frames_per_second(fn, batch: int, device, reps: int) -> dict:
    times = []
    for i in range(reps + 2):  # two warm-up calls
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"batch": batch, "median_s": med, "fps": batch / med, "spread_s": max(times) - min(times)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dfm", type=Path, default=Path("assets/dfm"))
    p.add_argument("--device", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512, 4096])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fuse (compiled once per batch size)")
    p.add_argument("--json", type=JSON_FILE)
    args = p.parse_args(argv)
    if args.reps < 1 or min(args.batches) < 1:
        p.error("--reps and every --batches value must be at least 1")
    device = pick_device(args.device)
    rig = load_rig()
    model = load_dfm(args.dfm, rig, device)
    deltas = torch.as_tensor(rig.deltas, device=device)
    fuse = torch.compile(model.fuse) if args.compile else model.fuse
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    rows = []
    for b in args.batches:
        g = torch.Generator(device="cpu").manual_seed(0)
        d_s = torch.einsum("bk,kvc->bvc", torch.rand(b, 52, generator=g).to(device) * 0.3, deltas)
        d_e = torch.einsum("bk,kvc->bvc", torch.rand(b, 52, generator=g).to(device) * 0.3, deltas)
        with torch.inference_mode(), precision:
            rows.append(frames_per_second(lambda: fuse(d_s, d_e), b, device, args.reps))
        print(f"batch {b:5d}: {rows[-1]['fps']:12.1f} frames/s (median {rows[-1]['median_s'] * 1e3:.2f} ms)", flush=True)
    size_mb = sum(f.stat().st_size for f in args.dfm.glob("*.safetensors")) / 1e6
    report = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "weights_mb": size_mb,
              "bf16": args.bf16, "compile": args.compile, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
