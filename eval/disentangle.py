"""Disentanglement and fusion on held-out synthetic speakers/subjects, against the exact truth.

    python eval/disentangle.py --dfm assets/dfm --ablation no_sparsity=runs/... --json out.json
    python eval/disentangle.py --dfm assets/dfm --blendshapes blendshapes.png

Methods: the full DFM (eq. 13), the same model keeping the inputs' residuals (the app's "ours",
blendtalk.evaluation.fusion.fuse_keeping_residuals; not in the paper), each ablation checkpoint
given, interpolation of inputs (d_s + d_e) and speech only. Writes JSON, a markdown table (beside the JSON) and a bar chart PNG. The
JSON also holds the paper's Table-1 check (lve_through_dfm) and, for the full model, where its
reconstruction error comes from (reconstruction: its encoder against the best its blendshapes allow).
"""

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

from blendtalk.constants import FPS
from blendtalk.expression.emotions import EMOTIONS
from blendtalk.evaluation.fusion import evaluate_fusion, expression_kept, fuse_keeping_residuals, fusion_cases
from blendtalk.evaluation.metrics import MM_PER_M, lip_vertex_error, mean_vertex_error
from blendtalk.models.checkpoint import pick_device
from blendtalk.models.dfm import interpolate_inputs, load_dfm
from blendtalk.speech.phones import Phone
from blendtalk.face.rig import load_rig
from blendtalk.speech.visemes import visemes_to_weights
from blendtalk.evaluation.reports import JSON_FILE, PNG_FILE, write_report

COLUMNS = ("fused_mve", "fused_lve", "lip_mve", "upper_face_mve", "bilabial_gap", "bilabial_gap_error")
UNITS = {"fused_lve": "mm²"}


def held_out_sequences(data: Path, max_sentences: int | None):
    """Each distinct test sequence of the fusion cases once: (domain, name, pure (T, 52), leak (T, 52)),
    domain "speech" or "expression" (an expression take as tiled to the first case that uses it)."""
    seen = set()
    for case in fusion_cases(data, "test", max_sentences=max_sentences):
        speech_name, expression_name = case.name.split("+")
        for domain, name, pure, leak in (("speech", speech_name, case.speech, case.speech_leak),
                                         ("expression", expression_name, case.expression, case.expression_leak)):
            if name not in seen:
                seen.add(name)
                yield domain, name, pure, leak


def displacements(weights: np.ndarray, deltas: torch.Tensor) -> torch.Tensor:
    """Rig weights (T, 52) -> displacements (T, V, 3) on deltas' device."""
    return torch.einsum("tk,kvc->tvc", torch.as_tensor(weights, device=deltas.device), deltas)


def lve_through_dfm(fuses: dict, data: Path, rig, device, max_sentences: int | None) -> dict:
    """The paper's Table 1 check: LVE of a speech prediction vs LVE after passing it through the DFM.

    The 'speech prediction' is the procedural viseme driver (default speaker style) on the true
    phones, scored against the corpus capture (the test speaker's own style plus leak), as the
    paper scores FaceFormer's output against VOCASET. fuses: name -> `fuse(d_s, d_e)` (a DFM's fuse
    method), each given a neutral expression input; one pass over the sequences serves them all.
    Returns name -> the check's figures.
    """
    lips = rig.mask("lips")
    deltas = torch.as_tensor(rig.deltas, device=device)
    lve_in, lve_out = [], {name: [] for name in fuses}
    for domain, name, pure, leak in held_out_sequences(data, max_sentences):
        if domain != "speech":
            continue
        with np.load(data / "truth" / "speech" / f"{name}.npz") as z:
            phones = [Phone(str(s), float(a), float(b)) for s, (a, b) in zip(z["phone_symbols"], z["phone_times"])]
        gt = displacements(pure + leak, deltas)
        pred = displacements(visemes_to_weights(phones, len(pure), rig), deltas)
        lve_in.append(lip_vertex_error(pred, gt, lips))
        with torch.no_grad():
            for fuse_name, fuse in fuses.items():
                lve_out[fuse_name].append(lip_vertex_error(fuse(pred, torch.zeros_like(pred)), gt, lips))
    a = float(np.mean(lve_in))
    report = {}
    for fuse_name, values in lve_out.items():
        b = float(np.mean(values))
        report[fuse_name] = {"lve_speech_input_mm2": a * MM_PER_M**2, "lve_after_dfm_mm2": b * MM_PER_M**2,
                             "increase_mm2": (b - a) * MM_PER_M**2, "increase_percent": 100 * (b - a) / a,
                             "sequences": len(lve_in)}
    return report


def reconstruction_report(model, data: Path, rig, device, max_sentences: int | None) -> dict:
    """What limits a DFM's parts: its encoder, or its blendshapes? Mean vertex errors (mm) per domain.

    encoder: decode(encode(d)) against the input d (pure part + leak); least_squares: the best fit of
    d with all the blendshapes [B_s | B_e]; own_part: the own-domain part (B_s w_s^s or B_e w_e^e) against
    the pure part; own_blendshapes_floor: the best fit of the pure part with the own-domain blendshapes,
    what `own_part` would reach with perfect weights.
    """
    deltas = torch.as_tensor(rig.deltas, device=device)
    b = model.blendshapes.detach().double()  # (V*3, K_s + K_e)
    own_shapes = dict(zip(("speech", "expression"), model.split(b)))
    pinv = {"all": torch.linalg.pinv(b)} | {name: torch.linalg.pinv(x) for name, x in own_shapes.items()}
    sums = {domain: {k: [] for k in ("encoder", "least_squares", "own_part", "own_blendshapes_floor")}
            for domain in own_shapes}

    def fit(x, which):  # least squares of x (T, V, 3) on the `which` blendshapes -> (T, V, 3)
        flat = x.reshape(len(x), -1).double()
        shapes = b if which == "all" else own_shapes[which]
        return ((flat @ pinv[which].T) @ shapes.T).reshape(x.shape).to(x)

    with torch.no_grad():
        for domain, _, pure, leak in held_out_sequences(data, max_sentences):
            d, clean = displacements(pure + leak, deltas), displacements(pure, deltas)
            w = (model.encode_speech if domain == "speech" else model.encode_expression)(d)
            w_s, w_e = model.split(w)
            own = model.decode_speech(w_s) if domain == "speech" else model.decode_expression(w_e)
            for key, pred, target in (("encoder", model.decode(w), d), ("least_squares", fit(d, "all"), d),
                                      ("own_part", own, clean), ("own_blendshapes_floor", fit(clean, domain), clean)):
                sums[domain][key].append(mean_vertex_error(pred, target) * MM_PER_M)
    return {domain: {k: float(np.mean(v)) for k, v in rows.items()} | {"sequences": len(rows["encoder"])}
            for domain, rows in sums.items()}


def markdown(report: dict) -> str:
    head = "| method | " + " | ".join(f"{c} ({UNITS.get(c, 'mm')})" for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in report.items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("fused_mve", "lip_mve", "upper_face_mve", "bilabial_gap_error")
    names = [n for n in report if n != "truth"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5))
    for ax, m in zip(axes, metrics):
        ax.bar(range(len(names)), [report[n][m] for n in names], color=plt.cm.tab10(np.arange(len(names))))
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{m} (mm)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def blendshape_picture(model, rig, data: Path, path: Path, top: int = 6, size: int = 192) -> None:
    """The most used speech and expression blendshapes, rendered at a typical weight (paper Fig. 4)."""
    import imageio.v3 as iio

    from blendtalk.render.renderer import render

    deltas = torch.as_tensor(rig.deltas)
    top = min(top, *model.num_blendshapes)  # both rows the same width
    rows = []
    for domain, own in (("speech", 0), ("expression", 1)):
        weights = []
        for case in fusion_cases(data, "test", max_sentences=4):
            w = case.speech + case.speech_leak if domain == "speech" else case.expression + case.expression_leak
            d = torch.einsum("tk,kvc->tvc", torch.as_tensor(w), deltas).to(model.blendshape_weight.device)
            with torch.no_grad():
                enc = model.encode_speech(d) if domain == "speech" else model.encode_expression(d)
            weights.append(model.split(enc)[own].cpu())
        w = torch.cat(weights)  # (frames, K)
        order = w.abs().mean(0).argsort(descending=True)[:top]
        shapes = (model.speech_blendshapes if domain == "speech" else model.expression_blendshapes).detach().cpu()
        amp = w.abs().quantile(0.95, dim=0)
        sign = torch.sign(w.mean(0))
        verts = torch.as_tensor(rig.vertices) + torch.stack([shapes[k] * amp[k] * sign[k] for k in order])
        rows.append(np.concatenate(list(render(verts.numpy(), rig.triangles, size=size)), axis=1))
    iio.imwrite(path, np.concatenate(rows, axis=0))


def expression_kept_report(model, data: Path, rig, device, max_sentences: int | None) -> dict:
    """Share of each emotion (intensity 1) that survives fusion, per method, on the held-out speech."""
    deltas = torch.as_tensor(rig.deltas, device=device)
    speech = [displacements(pure + leak, deltas) for domain, _, pure, leak in held_out_sequences(data, max_sentences)
              if domain == "speech"]
    emotions = tuple(e for e in EMOTIONS if e != "neutral")
    return {name: expression_kept(fuse, speech, rig, device, emotions)
            for name, fuse in (("dfm", model.fuse), ("dfm_keeping_residuals", partial(fuse_keeping_residuals, model)))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/synth"), help="synthetic corpus root (with truth/)")
    p.add_argument("--dfm", type=Path, default=Path("assets/dfm"), help="the full model's checkpoint folder")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=FOLDER", help="an ablation checkpoint")
    p.add_argument("--json", type=JSON_FILE, help="write the report here (plus .md and .png beside it)")
    p.add_argument("--blendshapes", type=PNG_FILE, help="render the top learned blendshapes into this PNG")
    p.add_argument("--max-sentences", type=int, default=None, help="per test speaker (default: all)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.json is None and args.blendshapes is None:
        p.error("give --json (the report) and/or --blendshapes (the picture): there is nothing to write otherwise")
    if args.max_sentences is not None and args.max_sentences < 1:
        p.error(f"--max-sentences must be at least 1, got {args.max_sentences}; leave it out for all")
    if not (args.data / "truth").is_dir():
        p.error(f"{args.data} holds no synthetic corpus with truth/; make one with python -m blendtalk.data.synth --out {args.data}")
    device = pick_device(args.device)
    rig = load_rig()
    model = load_dfm(args.dfm, rig, device)
    if args.blendshapes:
        args.blendshapes.parent.mkdir(parents=True, exist_ok=True)
        blendshape_picture(model, rig, args.data, args.blendshapes)
        print(f"blendshapes drawn in {args.blendshapes}")
    if args.json is None:
        return 0
    methods = {"dfm": model.fuse, "dfm_keeping_residuals": partial(fuse_keeping_residuals, model)}
    for spec in args.ablation:
        name, _, folder = spec.partition("=")
        if not folder:
            p.error(f"--ablation takes NAME=FOLDER, got {spec!r}")
        methods[name] = load_dfm(Path(folder), rig, device).fuse
    methods |= {"interpolation": interpolate_inputs, "speech_only": lambda d_s, d_e: d_s}
    cases = fusion_cases(args.data, "test", max_sentences=args.max_sentences)
    through = lve_through_dfm({name: methods[name] for name in ("dfm", "dfm_keeping_residuals")}, args.data, rig, device,
                              args.max_sentences)
    report = {"fusion": evaluate_fusion(methods, cases, rig, device),
              **{f"lve_through_{name}": figures for name, figures in through.items()},
              "reconstruction": reconstruction_report(model, args.data, rig, device, args.max_sentences),
              "expression_kept": expression_kept_report(model, args.data, rig, device, args.max_sentences),
              "fps": FPS, "checkpoint": str(args.dfm)}
    write_report(args.json, report)
    table = markdown(report["fusion"])
    args.json.with_suffix(".md").write_text(table)
    bar_chart(report["fusion"], args.json.with_suffix(".png"))
    print(table)
    print(json.dumps({k: v for k, v in report.items() if k.startswith(("lve_through", "reconstruction", "expression_kept"))},
                     indent=2))
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
