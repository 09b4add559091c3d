"""Where the leaks go: the DFM's objective studied in the rig's 52-weight space, in under a minute on a CPU.

    python eval/dfm_weight_space.py --data data/synth --json out/weight_space.json
    python eval/dfm_weight_space.py --expression-blendshapes 10 --invariance 10 --speech-upper-face 1

Every frame of the synthetic corpora is the rig's linear displacement of 52 weights, so a DFM whose
two encoders are MLPs on those weights and whose decoder is a (52, K_s + K_e) matrix pushed through
the rig's deltas is the full model minus the geometric map and the convolutions. It trains with the
same reconstruction (lip-weighted) and sparsity losses, so it shows what the objective does with the
leaks, apart from what the encoders can learn. Reported on the held-out cases of eval/disentangle.py
(mean vertex error, mm):

  fused, interpolation   the fused deformation and the naive sum d_s + d_e against the true fusion
  speech_vs_pure         the speech part B_s w_s^s against the pure speech ...
  speech_vs_with_leak    ... and against speech + its leak: near 0 means the leak was kept
  expression_vs_pure, expression_vs_with_leak   the same for B_e w_e^e
  bound                  per-frame MLPs trained on the truth (input -> pure part): what one frame
                         allows a perfect decomposition to reach (--no-bound skips bound and subspace)
  dfm_expression_reconstruction   the expression side as eval/disentangle.py's `reconstruction`:
                         the encoder's reconstruction of the input, B_e w_e^e against the pure
                         expression, and the least-squares fit of the pure expression with B_e
  subspace               the linear per-frame split onto the true speech and expression subspaces
                         (top K_s, K_e right-singular vectors of the pure parts, uncentred; k_s, k_e
                         picked from 6-12 on the validation cases):
                         what linear blendshapes with a per-frame least-squares encoder could reach

Two optional priors, both off by default (the paper has neither): --invariance W trains the
expression encoder's own half not to move when a speech frame (scaled by U(0, --mix)) is added to an
expression frame; --speech-upper-face W penalises speech blendshapes that move the upper face.
The trainer has both (train/train_dfm.py --lambda-invariance, --lambda-speech-upper), in other units
(and its upper-face term is the share of each blendshape's motion, this one the absolute energy), so
the weights do not carry over.
"""

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blendtalk.evaluation.fusion import _truth_names, fusion_cases, synthetic_split
from blendtalk.training.losses import DFMLossConfig
from blendtalk.evaluation.metrics import MM_PER_M
from blendtalk.face.rig import load_rig
from blendtalk.evaluation.reports import JSON_FILE, write_report

NUM_WEIGHTS = 52
SUBSPACE_SIZES = (6, 8, 10, 12)  # K_s and K_e tried for the linear split on the true subspaces


def load_frames(root: Path, kind: str, subset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure part and leak (F, 52) of every frame of `subset` of the speech or expression truth."""
    try:
        by_subject = _truth_names(root / "truth" / kind)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    pure, leak = [], []
    for subject in synthetic_split(list(by_subject)).subjects(subset):
        for path in by_subject[subject]:
            with np.load(path) as z:
                pure.append(z[kind]), leak.append(z["leak"])
    return torch.as_tensor(np.concatenate(pure)), torch.as_tensor(np.concatenate(leak))


class WeightSpaceDFM(nn.Module):
    """MLP encoders on rig weights (..., 52) -> (..., K_s + K_e); decoder columns of unit metric norm."""

    def __init__(self, k_speech: int, k_expression: int, metric: torch.Tensor, hidden: int = 256):
        super().__init__()
        self.k_speech = k_speech

        def mlp(out):
            return nn.Sequential(nn.Linear(NUM_WEIGHTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out))

        self.speech_encoder, self.expression_encoder = mlp(k_speech + k_expression), mlp(k_speech + k_expression)
        self.columns = nn.Parameter(torch.randn(NUM_WEIGHTS, k_speech + k_expression) * 0.05)
        self.register_buffer("metric", metric)

    def decoder(self) -> torch.Tensor:
        """(52, K) rig weights per blendshape, each column 1 mm RMS (lip-weighted) on the face."""
        norm = torch.einsum("kj,kl,lj->j", self.columns, self.metric, self.columns).clamp_min(1e-12).sqrt()
        return self.columns / norm * 1e-3


def metric_norm(r: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the lip-weighted mean squared vertex displacement of weights r (B, 52)."""
    return torch.einsum("bk,kj,bj->b", r, metric, r).mean()


def train(model: WeightSpaceDFM, speech: torch.Tensor, expression: torch.Tensor, args, upper: torch.Tensor,
          deltas: torch.Tensor) -> None:
    """speech, expression: (F, 52) inputs (pure + leak). Adam, batches of 256 frames of each."""
    opt = torch.optim.Adam(model.parameters(), args.lr)
    scale = DFMLossConfig().scale  # the DFM's displacement scale: m -> model units
    k = model.k_speech
    for _ in range(args.steps):
        x_s = speech[torch.randint(len(speech), (args.batch,))]
        x_e = expression[torch.randint(len(expression), (args.batch,))]
        w_s, w_e = model.speech_encoder(x_s), model.expression_encoder(x_e)
        dec = model.decoder()
        loss = (metric_norm(w_s @ dec.T - x_s, model.metric) + metric_norm(w_e @ dec.T - x_e, model.metric)) * scale**2
        loss = loss + args.lambda_sparse * (w_s[:, k:].abs().mean() + w_e[:, :k].abs().mean())
        if args.invariance:
            mixed = x_e + torch.rand(args.batch, 1) * args.mix * x_s[torch.randperm(args.batch)]
            moved = model.expression_encoder(mixed)[:, k:] - w_e[:, k:].detach()
            loss = loss + args.invariance * moved.square().mean()
        if args.speech_upper_face:
            shapes = torch.einsum("kj,kvc->jvc", dec[:, :k], deltas[:, upper])  # (K_s, V_upper, 3)
            loss = loss + args.speech_upper_face * shapes.square().sum((1, 2)).mean() / len(upper) * scale**2
        opt.zero_grad()
        loss.backward()
        opt.step()


def fit_bound(inputs: torch.Tensor, pure: torch.Tensor, metric: torch.Tensor, args) -> nn.Module:
    """A per-frame MLP input (52) -> pure part (52) trained on the truth."""
    net = nn.Sequential(nn.Linear(NUM_WEIGHTS, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, NUM_WEIGHTS))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(args.steps):
        i = torch.randint(len(inputs), (args.batch,))
        loss = metric_norm(net(inputs[i]) - pure[i], metric) * DFMLossConfig().scale ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def subspace_split(speech: torch.Tensor, expression: torch.Tensor, metric: torch.Tensor, k_s: int, k_e: int):
    """parts_fn of the linear per-frame split on the true subspaces: each input frame (T, 52) is solved by
    least squares (lip-weighted metric) on the top-k_s right-singular vectors of the pure speech frames
    `speech` (F, 52) and the top-k_e of the pure expression frames, and keeps its own domain's part."""
    values, vectors = torch.linalg.eigh(metric.double())
    keep = values > values.max() * 1e-12  # rig units that move nothing have no metric
    to_metric = vectors[:, keep] * values[keep].sqrt()  # (52, r): |w @ to_metric|^2 = w metric w^T
    back = (vectors[:, keep] / values[keep].sqrt()).T  # (r, 52): metric coordinates -> weights
    top = [torch.linalg.svd(x.double() @ to_metric, full_matrices=False)[2][:k].T for x, k in ((speech, k_s), (expression, k_e))]
    solve = torch.linalg.pinv(torch.cat(top, 1)).T  # (r, k_s + k_e)

    def parts(s, e):
        c_s, c_e = (s.double() @ to_metric) @ solve, (e.double() @ to_metric) @ solve
        return (c_s[:, :k_s] @ top[0].T @ back).float(), (c_e[:, k_s:] @ top[1].T @ back).float()

    return parts


def weight_error_mm(w: torch.Tensor, deltas: torch.Tensor) -> float:
    """Mean vertex displacement (mm) of a rig-weight difference w (T, 52); deltas (52, V, 3)."""
    return float(torch.einsum("tk,kvc->tvc", w, deltas).norm(dim=-1).mean()) * MM_PER_M


def evaluate(parts_fn, cases, deltas: torch.Tensor) -> dict:
    """parts_fn(speech_in, expr_in) -> (speech part, expression part), all (T, 52); mean errors in mm."""
    mve = partial(weight_error_mm, deltas=deltas)
    rows = []
    with torch.no_grad():
        for c in cases:
            s, ls, e, le = (torch.as_tensor(a) for a in (c.speech, c.speech_leak, c.expression, c.expression_leak))
            ps, pe = parts_fn(s + ls, e + le)
            rows.append({"fused": mve(ps + pe - s - e), "interpolation": mve(ls + le),
                         "speech_vs_pure": mve(ps - s), "speech_vs_with_leak": mve(ps - s - ls),
                         "expression_vs_pure": mve(pe - e), "expression_vs_with_leak": mve(pe - e - le)})
    if not rows:
        raise SystemExit("no held-out cases: the corpus is too small to leave a test speaker and subject")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def reconstruction(model: WeightSpaceDFM, cases, deltas: torch.Tensor) -> dict:
    """Mean vertex errors (mm) of the model's expression side, as eval/disentangle.py's `reconstruction`:
    encoder (reconstruction of the expression input), own_part (B_e w_e^e vs the pure expression) and
    own_blendshapes_floor (the least-squares fit of the pure expression with B_e)."""
    dec, k = model.decoder().detach(), model.k_speech
    shapes = torch.einsum("kj,kvc->jvc", dec[:, k:], deltas).reshape(dec.shape[1] - k, -1).T.double()  # (V*3, K_e)
    solve = torch.linalg.pinv(shapes)

    mve = partial(weight_error_mm, deltas=deltas)
    rows = []
    with torch.no_grad():
        for c in cases:
            e, le = torch.as_tensor(c.expression), torch.as_tensor(c.expression_leak)
            w = model.expression_encoder(e + le)
            pure = torch.einsum("tk,kvc->tvc", e, deltas)
            fit = (pure.reshape(len(e), -1).double() @ solve.T @ shapes.T).reshape(pure.shape)
            rows.append({"encoder": mve(w @ dec.T - e - le), "own_part": mve(w[:, k:] @ dec[:, k:].T - e),
                         "own_blendshapes_floor": float((fit - pure.double()).norm(dim=-1).mean()) * MM_PER_M})
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/synth"), help="synthetic corpus root (python -m blendtalk.data.synth)")
    p.add_argument("--speech-blendshapes", type=int, default=16, help="K_s")
    p.add_argument("--expression-blendshapes", type=int, default=16, help="K_e")
    p.add_argument("--lambda-sparse", type=float, default=DFMLossConfig().lambda_sparse, help="L1 on cross-domain weights")
    p.add_argument("--invariance", type=float, default=0.0, help="weight of the expression-invariance prior (0: off)")
    p.add_argument("--mix", type=float, default=1.0, help="largest scale of the speech frame added for --invariance")
    p.add_argument("--speech-upper-face", type=float, default=0.0, help="weight of the upper-face penalty on B_s (0: off)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-sentences", type=int, default=10, help="held-out sentences per speaker (as eval/disentangle.py)")
    p.add_argument("--no-bound", action="store_true", help="skip the supervised per-frame bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=JSON_FILE, default=None)
    args = p.parse_args(argv)
    for name in ("speech_blendshapes", "expression_blendshapes", "steps", "batch", "max_sentences"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.lambda_sparse, args.invariance, args.mix, args.speech_upper_face) < 0 or args.lr <= 0:
        p.error("weights and --mix must be >= 0, --lr > 0")

    torch.manual_seed(args.seed)
    rig = load_rig()
    deltas = torch.as_tensor(rig.deltas, dtype=torch.float32)  # (52, V, 3)
    m = torch.ones(rig.num_vertices)
    m[torch.as_tensor(rig.mask("lips"))] = DFMLossConfig().lip_weight
    metric = torch.einsum("kvc,v,jvc->kj", deltas, m, deltas) / m.sum()  # w^T metric w = weighted mean |d_v|^2
    upper = torch.as_tensor(np.flatnonzero(rig.mask("upper_face")))
    speech_pure, speech_leak = load_frames(args.data, "speech", "train")
    expr_pure, expr_leak = load_frames(args.data, "expression", "train")
    cases = list(fusion_cases(args.data, "test", max_sentences=args.max_sentences))

    start = time.perf_counter()
    model = WeightSpaceDFM(args.speech_blendshapes, args.expression_blendshapes, metric)
    train(model, speech_pure + speech_leak, expr_pure + expr_leak, args, upper, deltas)
    dec, k = model.decoder().detach(), model.k_speech
    report = {"args": vars(args),
              "dfm": evaluate(lambda s, e: (model.speech_encoder(s)[:, :k] @ dec[:, :k].T,
                                            model.expression_encoder(e)[:, k:] @ dec[:, k:].T), cases, deltas),
              "dfm_expression_reconstruction": reconstruction(model, cases, deltas)}
    if not args.no_bound:
        to_speech = fit_bound(speech_pure + speech_leak, speech_pure, metric, args)
        to_expr = fit_bound(expr_pure + expr_leak, expr_pure, metric, args)
        report["bound"] = evaluate(lambda s, e: (to_speech(s), to_expr(e)), cases, deltas)
        val_cases = list(fusion_cases(args.data, "val", max_sentences=args.max_sentences))
        k_s, k_e = min(((a, b) for a in SUBSPACE_SIZES for b in SUBSPACE_SIZES), key=lambda k: evaluate(
            subspace_split(speech_pure, expr_pure, metric, *k), val_cases, deltas)["fused"])
        report["subspace"] = evaluate(subspace_split(speech_pure, expr_pure, metric, k_s, k_e), cases, deltas) | {"k_s": k_s, "k_e": k_e}
    report["seconds"] = time.perf_counter() - start
    for name in ("dfm", "dfm_expression_reconstruction", "bound", "subspace"):
        if name in report:
            print(f"{name:8s}", "  ".join(f"{metric} {v:.3f}" if isinstance(v, float) else f"{metric} {v}"
                                          for metric, v in report[name].items()))
    if args.json:
        write_report(args.json, report)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
