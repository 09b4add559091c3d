"""Adapt a trained DFM to new emotion prototypes on a CPU: refit only its expression encoder's last layer.

    python train/adapt_dfm_head.py --dfm assets/dfm --data data/synth --out runs/head

Everything else stays as it was: the speech encoder, the blendshapes [B_s | B_e] and the expression
encoder's convolutions, so the speech path (lip sync, the paper's Table-1 check) is exactly the
checkpoint's. The expression weights are amp * (W f + b), f the frozen features of the unit-RMS
input, so the DFM loss's expression terms (reconstruction, Laplacian, L2, L1 on the cross half,
invariance to added speech) are convex in (W, b) and the vertex-space terms reduce to (K, K) Gram
matrices: the features of the corpus are computed once (minutes) and a fit then takes under a
minute on a shared 2-core machine. A full retrain needs a GPU (train/train_dfm.py); this is what a
CPU affords when the encoder reads a new emotion's mouth as speech. docs/experiments.md (2026-12-06)
says what it gave: the share of each emotion kept rises with --lambda-sparse, and the removal of the
expression's articulation leak falls with it.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from blendtalk.face.geometry import laplacian_apply, uniform_laplacian
from blendtalk.face.rig import load_rig
from blendtalk.models.dfm import AMPLITUDE_FLOOR, load_dfm
from blendtalk.training.dfm import load_frames, mix_speech, DFMTrainConfig
from blendtalk.training.losses import DFMLossConfig, vertex_weights


@torch.no_grad()
def features(model, d: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (M, V, 3) -> the expression encoder's input to its last layer (M, F) and the RMS amplitude (M,)."""
    trunk = model.expression_encoder[:-1]
    feats, amps = [], []
    for chunk in d.split(batch):
        amp = torch.linalg.vector_norm(chunk, dim=(1, 2)) / math.sqrt(chunk.shape[1] * 3)
        x = model.geometry_map(chunk / amp.clamp_min(AMPLITUDE_FLOOR)[:, None, None])
        feats.append(trunk(x))
        amps.append(amp)
    return torch.cat(feats), torch.cat(amps)


def gram_terms(model, rig, loss: DFMLossConfig) -> dict:
    """The vertex-space loss terms of weights w (K,) as quadratic forms in w: rec (K, K) and its B^T M (K, V*3),
    lap (K, K), reg (K, K), each already divided as the loss divides it (per-vertex means)."""
    b = model.blendshapes.detach().double()  # (V*3, K); the Gram matrices in double, the fit in float
    v = rig.num_vertices
    m = vertex_weights(v, torch.as_tensor(rig.mask("lips")), loss.lip_weight).double()  # (V,)
    m3 = m.repeat_interleave(3)[:, None]  # rows are vertex-major (v*3 + xyz)
    lap = uniform_laplacian(v, torch.as_tensor(rig.triangles), dtype=torch.float64)
    lb = laplacian_apply(lap, b.T.reshape(-1, v, 3)).reshape(b.shape[1], -1).T  # (V*3, K)
    return {"rec": (b.T @ (m3 * b)) / m.sum(), "rec_cross": (b * m3).T / m.sum(), "lap": lb.T @ lb / v,
            "reg": b.T @ b / v}


def rec_terms(expr: torch.Tensor, g: dict, vertex_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (M, V, 3) -> B^T M d / sum(m) (M, K) and d^T M d / sum(m) (M,): the reconstruction loss's
    cross and constant terms, so that `head_objective` gives the loss itself, not a shifted one."""
    m = vertex_w.double()
    target = expr.reshape(len(expr), -1).double() @ g["rec_cross"].T
    return target, (expr.double().pow(2).sum(-1) * m).sum(-1) / m.sum()


def head_objective(w: torch.Tensor, own_mixed: torch.Tensor, g: dict, target: torch.Tensor, const: torch.Tensor,
                   loss: DFMLossConfig, k_s: int) -> tuple[torch.Tensor, dict]:
    """The DFM loss's expression terms (blendtalk.training.losses.dfm_loss) from weights alone.

    w (M, K): the expression frames' weights [w_s^e | w_e^e]; own_mixed (R*M, K_e): own halves of the same
    frames with speech added, R copies in order; g, target, const: `gram_terms` and `rec_terms`.
    Returns (total, parts) as dfm_loss names them, the speech side's constant terms left out.
    """
    s = loss.scale
    rec = s**2 * ((w @ g["rec"] * w).sum(-1) - 2 * (w * target).sum(-1) + const).mean()
    lap = s**2 * ((w @ g["lap"]) * w).sum(-1).mean()
    reg = s**2 * ((w @ g["reg"]) * w).sum(-1).mean()
    sparse = s * w[:, :k_s].abs().sum(-1).mean()
    inv = (s * own_mixed - s * w[:, k_s:].detach().repeat(len(own_mixed) // len(w), 1)).pow(2).mean()
    total = rec + loss.lambda_lap * lap + loss.lambda_reg * reg + loss.lambda_sparse * sparse + loss.lambda_invariance * inv
    return total, {"rec_e": rec, "lap_e": lap, "reg_e": reg, "sparse_e": sparse, "invariance": inv, "total": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dfm", type=Path, default=Path("assets/dfm"))
    p.add_argument("--data", default="data/synth", help="synthetic corpus root (made with the current prototypes)")
    p.add_argument("--out", type=Path, required=True, help="folder for the adapted checkpoint (created)")
    p.add_argument("--lambda-sparse", type=float, default=DFMLossConfig.lambda_sparse)
    p.add_argument("--lambda-invariance", type=float, default=1000.0)
    p.add_argument("--mixes", type=int, default=1, help="speech-added copies of each expression frame (invariance)")
    p.add_argument("--stride", type=int, default=3, help="use every n-th expression frame")
    p.add_argument("--rank", type=int, default=128, help="feature directions the fit may change")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="keep the features here and reuse them (fits with other loss weights)")
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"{args.out} exists; give a new folder")
    if not (args.dfm / "config.json").is_file():
        p.error(f"--dfm {args.dfm} is not a DFM checkpoint folder (no config.json)")
    if not all((Path(args.data) / part).is_dir() for part in ("speech", "expression")):
        p.error(f"{args.data} holds no corpora; make them with python -m blendtalk.data.synth --out {args.data}")
    if min(args.lambda_sparse, args.lambda_invariance) < 0 or args.steps < 1 or args.mixes < 1 or args.stride < 1 or args.rank < 1 or not args.lr > 0:
        p.error("loss weights must be >= 0, --steps, --mixes, --stride, --rank and --lr positive")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # on a loaded machine a second thread mostly waits
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    rig = load_rig()
    model = load_dfm(args.dfm, rig, "cpu")
    loss = DFMLossConfig(lambda_sparse=args.lambda_sparse, lambda_invariance=args.lambda_invariance)
    k_s = model.config.k_speech
    key = {"dfm": str(args.dfm), "data": str(args.data), "stride": args.stride, "mixes": args.mixes, "seed": args.seed}
    if args.cache is not None and args.cache.is_file() and (cached := torch.load(args.cache, weights_only=True))["key"] == key:
        expr, f_e, a_e, f_m, a_m = (cached[k] for k in ("expr", "f_e", "a_e", "f_m", "a_m"))
    else:
        speech, expr = load_frames(DFMTrainConfig(data=args.data), "train", "cpu")
        expr = expr[::args.stride].contiguous()  # neighbouring frames (1/30 s apart) add little but cost features
        mixed = torch.cat([mix_speech(speech, expr, loss.invariance_mix, gen) for _ in range(args.mixes)])
        del speech
        print(f"{len(expr)} expression frames, {len(mixed)} mixed, loaded in {time.time() - t0:.0f} s", flush=True)
        f_e, a_e = features(model, expr)
        f_m, a_m = features(model, mixed)
        del mixed
        if args.cache is not None:
            torch.save({"key": key, "expr": expr, "f_e": f_e, "a_e": a_e, "f_m": f_m, "a_m": a_m}, args.cache)
    print(f"features in {time.time() - t0:.0f} s", flush=True)
    g = gram_terms(model, rig, loss)
    target, const = rec_terms(expr, g, vertex_weights(rig.num_vertices, torch.as_tensor(rig.mask("lips")), loss.lip_weight))
    del expr
    head = model.expression_encoder[-1]
    # W = W0 + C P^T with P the features' top `rank` directions: a step costs rank/F of a full one, which is
    # what a shared 2-core machine can afford, and the directions the corpus does not excite stay as trained.
    w0, b0 = head.weight.detach(), head.bias.detach()
    basis = torch.linalg.svd(torch.cat([f_e, f_m]), full_matrices=False).Vh[:args.rank].T  # (F, rank)
    z_e, z_m, base_e, base_m = f_e @ basis, f_m @ basis, f_e @ w0.T + b0, f_m @ w0.T + b0
    del f_e, f_m
    change = torch.zeros(len(b0), basis.shape[1], requires_grad=True)
    shift = torch.zeros_like(b0, requires_grad=True)
    a_e, a_m, target, const = a_e[:, None], a_m[:, None], target.float(), const.float()
    g = {k: v.float() for k, v in g.items()}
    opt = torch.optim.Adam([change, shift], lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)

    def objective():
        w = a_e * (base_e + z_e @ change.T + shift)  # (M, K)
        own_m = (a_m * (base_m + z_m @ change.T + shift))[:, k_s:]
        return head_objective(w, own_m, g, target, const, loss, k_s)

    for step in range(args.steps + 1):
        total, parts = objective()
        parts = {k: v.detach() for k, v in parts.items()}
        if step == 0:
            initial = parts
        if step % 250 == 0 or step == args.steps:
            print(f"step {step} ({time.time() - t0:.0f} s): " + ", ".join(f"{k} {float(v):.5f}" for k, v in parts.items()), flush=True)
        if step == args.steps:
            break
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        head.weight.copy_(w0 + change @ basis.T)
        head.bias.copy_(b0 + shift)
    args.out.mkdir(parents=True)
    model.save_pretrained(args.out)
    report = {"from": str(args.dfm), "data": args.data, "lambda_sparse": args.lambda_sparse,
              "lambda_invariance": args.lambda_invariance, "mixes": args.mixes, "rank": args.rank, "steps": args.steps, "lr": args.lr,
              "initial": {k: float(v) for k, v in initial.items()}, "final": {k: float(v) for k, v in parts.items()}, "minutes": (time.time() - t0) / 60}
    (args.out / "adapt.json").write_text(json.dumps(report, indent=1))
    print(f"adapted checkpoint in {args.out} ({report['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
