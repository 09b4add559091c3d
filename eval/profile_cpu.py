"""Where the CPU time of the audio front end and the DFM goes, and the cheapest DFM precision that
keeps the fused displacements within --tolerance-mm of float32.

    python eval/profile_cpu.py --seconds 10.15 --repeats 3

Prints the audio front end's top functions (cProfile, by own time) and, per precision (float32;
bfloat16 autocast; float32 with the encoders' convolutions in channels-last), the DFM stage's
min/median/max seconds and its largest deviation from float32 in millimetres. Same clip as
eval/end_to_end.py.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from blendtalk.evaluation.clips import long_clip
from blendtalk.pipeline import Expression, Pipeline

PRECISIONS = ("float32", "bfloat16", "float32 channels-last")


def timed(fn, repeats: int):
    """fn() `repeats` times: (last result, [seconds])."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


@contextlib.contextmanager
def encoders_in(dfm, precision: str):
    """Run the DFM's two encoders (not the decoders or mappings) in `precision`; float32 weights out."""
    plain = {name: getattr(dfm, name) for name in ("encode_speech", "encode_expression")}

    def wrap(encode):
        def run(d):
            if precision == "bfloat16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return encode(d).float()
            return encode(d)
        return run

    if precision == "float32 channels-last":
        dfm.to(memory_format=torch.channels_last)
    for name, encode in plain.items():
        object.__setattr__(dfm, name, wrap(encode))
    try:
        yield
    finally:
        for name in plain:
            del dfm.__dict__[name]
        dfm.to(memory_format=torch.contiguous_format)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.15, help="length of the speech clip")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per precision")
    p.add_argument("--tolerance-mm", type=float, default=0.01, help="largest allowed deviation from float32")
    p.add_argument("--top", type=int, default=12, help="functions listed for the audio front end")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.tolerance_mm < 0:
        p.error("--repeats must be at least 1 and --tolerance-mm at least 0")
    pipe = Pipeline.from_pretrained(device="cpu")
    with tempfile.TemporaryDirectory(prefix="blendtalk-profile-") as tmp:
        wav, _ = long_clip(args.seconds, Path(tmp))
        pipe.speech_input(wav)  # warm-up: lazy imports, recogniser start
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        speech = pipe.speech_input(wav)
        prof.disable()
        front = time.perf_counter() - t0
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print(f"audio front end: {front:.3f} s for {args.seconds:g} s of speech\n"
          + "\n".join(line for line in out.getvalue().splitlines() if line.strip())[-6000:])

    d_s, _ = pipe.speech_deformation(speech)
    d_e = pipe.expression_deformation(Expression("happy", 0.8, seed=0), speech.num_frames)
    n_unique = len({row.tobytes() for row in np.ascontiguousarray(d_e).reshape(len(d_e), -1)})
    print(f"\nDFM: {len(d_s)} frames, {n_unique} distinct expression frames (encoded once each)")
    reference, times = timed(lambda: pipe.fuse(d_s, d_e)[0], args.repeats)
    rows = [("float32", times, 0.0)]
    dfm = pipe.dfm
    for name in PRECISIONS[1:]:
        with encoders_in(dfm, name):
            fused, times = timed(lambda: pipe.fuse(d_s, d_e)[0], args.repeats)
        rows.append((name, times, float(np.abs(fused.astype(np.float64) - reference).max()) * 1000))
    print("| precision | DFM s (min / median / max) | max deviation from float32, mm | within tolerance |")
    print("|---|---|---|---|")
    for name, t, dev in rows:
        ok = "yes" if dev <= args.tolerance_mm else "no"
        print(f"| {name} | {min(t):.3f} / {statistics.median(t):.3f} / {max(t):.3f} | {dev:.4f} | {ok} |")
    with contextlib.suppress(Exception):
        pipe.close()
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
