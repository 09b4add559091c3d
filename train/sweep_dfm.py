"""Sweep DFM hyper-parameters on the validation split (never the test split).

    python train/sweep_dfm.py --blendshapes 16 32 64 --lambda-sparse 0.003 0.01 0.03 --minutes-each 1

Each setting trains for the same wall time; the score is the best validation fused error (mm)
against the synthetic truth. Writes sweep.json in --out.
"""

import argparse
import itertools
import json
from pathlib import Path

from blendtalk.training.losses import DFMLossConfig
from blendtalk.models.dfm import DFMConfig
from blendtalk.face.rig import load_rig
from blendtalk.training.dfm import DFMTrainConfig, train_dfm


def best_val(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["val"]]
    best = min(rows, key=lambda r: r["val"]["dfm"]["fused_mve"])
    return {"step": best["step"], **{k: best["val"]["dfm"][k] for k in ("fused_mve", "lip_mve", "upper_face_mve", "bilabial_gap_error")},
            "interpolation_fused_mve": best["val"]["interpolation"]["fused_mve"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synth")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--blendshapes", "-K", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--expression-blendshapes", type=int, nargs="+", default=[None], help="K_e values (default: K_e = K)")
    p.add_argument("--lambda-sparse", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    p.add_argument("--minutes-each", type=float, default=1.0)
    p.add_argument("--val-every", type=int, default=300)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    given_k_e = [k for k in args.expression_blendshapes if k is not None]
    if min(args.blendshapes) < 1 or (given_k_e and min(given_k_e) < 1):
        p.error("--blendshapes and --expression-blendshapes must be positive")
    if min(args.lambda_sparse) < 0 or not args.minutes_each > 0 or args.val_every < 1:
        p.error("--lambda-sparse must be >= 0, --minutes-each > 0 and --val-every >= 1")
    if (Path(args.out) / "sweep.json").exists():  # an earlier sweep's results are not replaced
        p.error(f"{Path(args.out) / 'sweep.json'} exists; give another --out")
    if not (Path(args.data) / "speech").is_dir():
        p.error(f"--data {args.data} holds no synthetic corpus (speech/ and expression/); make one with "
                f"python -m blendtalk.data.synth --out {args.data}")
    num_vertices = load_rig().num_vertices
    configs = []  # all built (and so checked) before the first one trains
    for k, k_e, lam in itertools.product(args.blendshapes, args.expression_blendshapes, args.lambda_sparse):
        model = DFMConfig(num_vertices, num_blendshapes=k, num_expression_blendshapes=k_e)
        configs.append(((k, k_e, lam), DFMTrainConfig(data=args.data, out=args.out, model=model,
                                                      loss=DFMLossConfig(lambda_sparse=lam), epochs=1e6,
                                                      max_minutes=args.minutes_each, val_every=args.val_every,
                                                      device=args.device)))
    results = []
    for (k, k_e, lam), config in configs:
        run = train_dfm(config)
        results.append({"K": k, "K_e": k_e, "lambda_sparse": lam, "run": str(run), **best_val(run)})
        print(json.dumps(results[-1]), flush=True)
    results.sort(key=lambda r: r["fused_mve"])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps(results, indent=2))
    print("best:", json.dumps(results[0]))
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
