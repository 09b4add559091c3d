"""Fit the linear map from a DFM's blendshape weights to ARKit or FLAME parameters (paper eqs. 14-15).

    python train/fit_mapping.py --dfm assets/dfm --target arkit --picture arkit_map.png
    python train/fit_mapping.py --dfm runs/dfm-voca/best --target flame --flame-model generic_model.pkl \\
        --vocaset VOCASET --florence FLORENCE4D --flame-masks FLAME_masks.pkl --picture flame_map.png

Weights to fit on: DFM-encoded training-split frames of the corpora, combined as at inference
(speech own half + intensity * expression own half), plus sampled ones; held-out errors come from
the --eval-subset split. Without corpora (or, for a FLAME-topology DFM, without a geometric map
to encode them) only sampled weights are used, and the report says so. Writes
<dfm>/mapping_<target>/ (config.json with the held-out errors + model.safetensors).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from blendtalk.models.checkpoint import file_sha256, pick_device
from blendtalk.models.mapping import mapping_dir, save_mapping
from blendtalk.training.mapping import (SAMPLE_RMS, MappingFitConfig, corpus_frames, fit_arkit_mapping,
                                        fit_flame_mapping, flame_displacement, observed_weights, sample_weights)
from blendtalk.models.dfm import DeformationFusionModule, check_pretrained, load_dfm
from blendtalk.face.rig import load_rig

PAIRS_PER_ROW_MAX = 4  # blendshape pairs per row of the picture


def load_fitting_dfm(folder: Path, rig, device) -> tuple[DeformationFusionModule, bool]:
    """The DFM in eval mode, and whether it can encode frames (its geometric map is known)."""
    config = check_pretrained(folder)
    if not config.use_geometric_map or config.num_vertices == rig.num_vertices:
        return load_dfm(folder, rig, device), True
    # Another topology (FLAME): we have no square map for it, so the decoder (the blendshapes) is
    # all we can use; an all-zero map only lets the checkpoint load, the encoders are never called.
    n = config.map_size
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n * n, config.num_vertices),
                                    check_invariants=True)
    return DeformationFusionModule.from_pretrained(folder, empty, pick_device(device)).eval(), False


def fitting_weights(dfm, can_encode: bool, args, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    """(train weights, held-out weights, a note on where they came from, named train parts to score)."""
    k = dfm.config.k_total
    speech_root = Path(args.vocaset or Path(args.data) / "speech")
    expr_root = Path(args.florence or Path(args.data) / "expression")
    have_corpus = not args.no_corpus and speech_root.is_dir() and expr_root.is_dir()
    train = held = None
    if can_encode and have_corpus:
        frames = corpus_frames(speech_root, expr_root, "train", args.frames, args.seed)
        if frames is not None:
            train = observed_weights(dfm, *frames, args.observed, gen).cpu()
        frames = corpus_frames(speech_root, expr_root, args.eval_subset, args.frames, args.seed + 1)
        if frames is not None:
            held = observed_weights(dfm, *frames, max(args.observed // 4, 1), gen).cpu()
    sampled = sample_weights(k, args.samples, gen, reference=train)
    note = {"observed_train": 0 if train is None else len(train), "sampled_train": len(sampled),
            "corpus": f"{speech_root} + {expr_root}" if train is not None else None,
            "heldout": f"{args.eval_subset} split of the corpus" if held is not None else "sampled"}
    if train is None:
        why = ("the DFM's topology has no geometric map here to encode frames" if not can_encode
               else "--no-corpus" if args.no_corpus else f"no corpus at {speech_root} and {expr_root}")
        print(f"fitting on sampled weights only ({why}); scale {SAMPLE_RMS * 1e3:.1f} mm RMS", file=sys.stderr)
    if held is None:
        held = sample_weights(k, max(args.samples // 4, 1), gen, reference=train)
    parts = {"train_sampled": sampled} if train is None else {"train_observed": train, "train_sampled": sampled}
    train = sampled if train is None else torch.cat([train, sampled])
    return train, held, note, parts


def picture(dfm, mapping, displacement, renderer, template: torch.Tensor, amplitude: torch.Tensor,
            path: Path, title: str, tile: int) -> None:
    """Each learned blendshape (at a typical weight) beside the target rig's reconstruction of it,
    cropped to the part of the face that moves in any of them, tiles `tile` px high."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    k_s, k = dfm.config.k_speech, dfm.config.k_total
    w = torch.diag(amplitude.float())  # (K, K): blendshape k alone at its amplitude
    with torch.no_grad():
        ours = dfm.decode(w.to(dfm.blendshape_weight.device)).cpu()  # (K, V, 3)
        theirs = displacement(mapping.apply(w)).cpu()
    frames = renderer(torch.cat([torch.zeros_like(ours[:1]), ours, theirs]) + template)  # (1 + 2K, H, W, 3)
    change = np.abs(frames[1:].astype(np.int16) - frames[:1]).max(-1).max(0)  # (H, W) largest change of a pixel
    moving = change > max(8, 0.3 * np.percentile(change, 99.5))  # where the strong motion is, not stray shading
    ys, xs = np.nonzero(moving) if moving.any() else np.nonzero(np.ones_like(moving))
    pad = frames.shape[1] // 20
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad, frames.shape[1])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad, frames.shape[2])
    tile_w = max(1, round(tile * (x1 - x0) / (y1 - y0)))
    tiles = [Image.fromarray(f[y0:y1, x0:x1]).resize((tile_w, tile)) for f in frames[1:]]
    label_h, gap = 14, 6
    per_row = max(1, min(PAIRS_PER_ROW_MAX, 900 // (2 * tile_w + gap)))
    rows = -(-k // per_row)
    canvas = Image.new("RGB", (max(per_row * (2 * tile_w + gap), 640), 22 + rows * (tile + label_h)), (30, 31, 36))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(235, 235, 235))
    for i in range(k):
        r, c = divmod(i, per_row)
        x, y = c * (2 * tile_w + gap), 22 + r * (tile + label_h)
        canvas.paste(tiles[i], (x, y + label_h))
        canvas.paste(tiles[k + i], (x + tile_w, y + label_h))
        name = f"S{i}" if i < k_s else f"E{i - k_s}"
        draw.text((x + 2, y + 1), f"{name} w={amplitude[i] * 1e3:+.2f} mm", fill=(220, 220, 220))
    iio.imwrite(path, np.asarray(canvas))


def save_picture(args, dfm, mapping, displacement, rig, template, train, note, flame) -> None:
    """args.picture: each learned blendshape at its 95th-percentile training weight beside its reconstruction."""
    from blendtalk.render.renderer import RenderConfig, Renderer

    rc = RenderConfig(size=3 * args.picture_size)  # rendered large, then cropped to the moving part
    if args.target == "arkit":
        renderer = Renderer.for_rig(rig, rc)
    else:
        renderer = Renderer(flame.faces.cpu(), template, rc)
    ref = train[: note["observed_train"]] if note["observed_train"] else train
    amp = ref.abs().quantile(0.95, dim=0) * torch.sign(ref.mean(0) + 1e-12)
    amp = torch.where(amp.abs() > 0, amp, torch.full_like(amp, SAMPLE_RMS)) * args.picture_gain
    held_row = mapping.info["metrics"]["heldout"]
    gain = f" x{args.picture_gain:g}" if args.picture_gain != 1 else ""
    title = (f"left: DFM blendshape (95th-pct weight{gain})  right: {args.target.upper()} reconstruction   "
             f"held-out error {held_row['mean_mm']:.3f} mm mean, relative {held_row['relative']:.3f}")
    picture(dfm, mapping, displacement, renderer, template, amp, args.picture, title, args.picture_size)
    print(f"wrote {args.picture}")


def build_parser() -> argparse.ArgumentParser:
    d = MappingFitConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dfm", type=Path, required=True, help="DFM checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--target", choices=("arkit", "flame"), required=True)
    p.add_argument("--flame-model", type=Path, help="FLAME 2020 generic_model.pkl or FLAME 2023 flame2023_Open.pkl")
    p.add_argument("--flame-masks", type=Path, help="FLAME_masks.pkl: lip weighting ('lips') and scoring region ('face')")
    p.add_argument("--num-expression", type=int, default=100, help="FLAME expression coefficients to fit (<= 100)")
    p.add_argument("--data", default="data/synth", help="corpus root with speech/ and expression/")
    p.add_argument("--vocaset", help="real VOCASET root instead of <data>/speech")
    p.add_argument("--florence", help="real Florence4D root instead of <data>/expression")
    p.add_argument("--no-corpus", action="store_true", help="fit on sampled weights alone (no speech or expression frames)")
    p.add_argument("--frames", type=int, default=1024, help="frames per domain encoded from each split")
    p.add_argument("--observed", type=int, default=4096, help="observed weight combinations (speech x expression frames)")
    p.add_argument("--samples", type=int, default=1024,
                   help="sampled weight vectors added to the observed ones (coverage of combinations the corpus lacks)")
    p.add_argument("--eval-subset", default="val", choices=("val", "test"), help="split of the held-out errors")
    p.add_argument("--steps", type=int, default=d.steps, help="Adam refinement steps (0: closed form only)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lambda-reg", type=float, default=d.lambda_reg, help="L2 on output deformations")
    p.add_argument("--lambda-params", type=float, default=d.lambda_params, help="ridge on the target parameters")
    p.add_argument("--lip-weight", type=float, default=d.lip_weight)
    p.add_argument("--crop-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="fit only the face crop (default: as the DFM run was trained, from its train_config.json)")
    p.add_argument("--unbounded", action="store_true", help="ARKit: plain linear map, weights may leave [0, 1]")
    p.add_argument("--out", type=Path, help="output folder (default <dfm>/mapping_<target>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing mapping folder's files")
    p.add_argument("--picture", type=Path, help="PNG: each learned blendshape beside its reconstruction")
    p.add_argument("--picture-size", type=int, default=128, help="px height of each face tile")
    p.add_argument("--picture-gain", type=float, default=1.0, help="multiply the shown weights (small motions are hard to see)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("frames", "observed", "samples", "num_expression", "picture_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps < 0 or min(args.lambda_reg, args.lambda_params, args.lip_weight) < 0:
        p.error("--steps and the loss weights must be >= 0")
    if args.target == "flame" and args.flame_model is None:
        p.error("--target flame needs --flame-model (FLAME is licence-gated: download it from https://flame.is.tue.mpg.de)")
    if args.lr <= 0:
        p.error(f"--lr must be positive, got {args.lr:g}")
    # A corpus the user named must be there: sampled weights alone fit a far worse map, so that takes --no-corpus.
    for name in ("vocaset", "florence") + (("data",) if args.data != p.get_default("data") else ()):
        if not args.no_corpus and getattr(args, name) is not None and not Path(getattr(args, name)).is_dir():
            p.error(f"--{name} {getattr(args, name)} is not a folder (--no-corpus fits on sampled weights alone)")
    if args.picture is not None and (args.picture.suffix.lower() != ".png" or not args.picture.parent.is_dir()):
        p.error(f"--picture must be a .png file in an existing folder, got {str(args.picture)!r}")
    out = args.out or mapping_dir(args.dfm, args.target)
    if (out / "config.json").exists() and not args.overwrite:
        p.error(f"{out} already holds a mapping; pass --overwrite to replace it or --out for another folder")

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rig = load_rig()
    dfm, can_encode = load_fitting_dfm(args.dfm, rig, args.device)
    crop_loss = args.crop_loss
    if crop_loss is None:  # a run folder holds <run>/train_config.json beside best/ and checkpoint/
        run_config = args.dfm.resolve().parent / "train_config.json"
        crop_loss = bool(json.loads(run_config.read_text()).get("crop_loss", False)) if run_config.is_file() else False
    config = MappingFitConfig(crop_loss=crop_loss, lambda_reg=args.lambda_reg, lambda_params=args.lambda_params, lip_weight=args.lip_weight,
                              bounded=not args.unbounded, steps=args.steps, lr=args.lr, seed=args.seed)
    if args.target == "arkit":
        if dfm.config.num_vertices != rig.num_vertices:
            p.error(f"--target arkit maps onto the shipped face rig (V={rig.num_vertices}) but this DFM has "
                    f"V={dfm.config.num_vertices}; use --target flame for a FLAME-topology DFM")
        train, held, note, parts = fitting_weights(dfm, can_encode, args, gen)
        mapping = fit_arkit_mapping(dfm, rig, train, held, config, progress=True, also_score=parts)
        displacement = rig.displacement
        template = torch.as_tensor(rig.vertices)
    else:
        from blendtalk.face.flame import load_flame, read_flame_masks

        flame = load_flame(args.flame_model, num_expression=args.num_expression, device=args.device)
        if dfm.config.num_vertices != flame.num_vertices:
            p.error(f"a FLAME mapping needs a DFM trained on FLAME-topology data (V={flame.num_vertices}); "
                    f"this DFM has V={dfm.config.num_vertices}")
        lips = region = None
        if args.flame_masks:
            masks = read_flame_masks(args.flame_masks)
            to_mask = lambda idx: np.isin(np.arange(flame.num_vertices), idx)  # noqa: E731
            lips = to_mask(masks["lips"]) if "lips" in masks else None
            region = to_mask(masks["face"]) if "face" in masks else None
        train, held, note, parts = fitting_weights(dfm, can_encode, args, gen)
        mapping = fit_flame_mapping(dfm, flame, train, held, config, lips, region, progress=True, also_score=parts)
        mapping.info["flame_model"] = {"file": args.flame_model.name, "sha256": file_sha256(args.flame_model),
                                       "masks": args.flame_masks.name if args.flame_masks else None}
        displacement = flame_displacement(flame)
        template = flame.v_template.cpu()
    mapping.info["data"] = note
    mapping.info["dfm"] = str(args.dfm)
    save_mapping(mapping, out, args.dfm)
    metrics = mapping.info["metrics"]
    print(f"saved {out}")
    for name, row in metrics.items():
        extra = f", lips {row['lip_mm']:.3f} mm, LVE {row['lve_mm2']:.4f} mm^2" if "lip_mm" in row else ""
        clamp = f", clamped {100 * row['clamped_fraction']:.1f}%" if "clamped_fraction" in row else ""
        print(f"  {name:32s} mean {row['mean_mm']:.3f} mm{extra}, relative {row['relative']:.3f}"
              f" (DFM motion {row['target_mm']:.3f} mm){clamp}")

    if args.picture:
        save_picture(args, dfm, mapping, displacement, rig, template, train, note,
                     flame if args.target == "flame" else None)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
