"""LVE and FDD of the speech model on the test split, next to the procedural driver and no motion.

    python eval/lvefdd.py --checkpoint runs/faceformer-.../best --json out/lvefdd.json
    python eval/lvefdd.py --checkpoint DIR --data vocaset ROOT --flame-masks FLAME_masks.pkl --json out/voca.json

Metrics (blendtalk.evaluation.faceformer), on displacements from the subject template:
* lve_mm2: per frame the max over lip vertices of the squared L2 error, averaged over all test
  frames (FaceFormer / CodeTalker protocol), mm^2.
* fdd_mm: per upper-face vertex, |std over time of ||d_pred|| - std of ||d_true|||, mean over
  vertices and sequences (blendtalk.evaluation.metrics), mm. fdd_codetalker_mm2: CodeTalker's signed variant on
  squared norms (truth - prediction; > 0 = too little upper-face motion), mm^2.
* mve_mm: mean vertex L2 error over the whole mesh, mm.
* bilabial_closure (rig only): share of /p b m/ phones (true TTS phones) where the lips close below 1 mm.
Vertex sets: on the shipped rig its pinned masks 'lips' and 'upper_face' (assets/face_rig.npz);
on VOCASET FLAME's 'lips' and 'forehead' + 'eye_region' (FLAME_masks.pkl). Unseen test subjects
are animated with every training style and the metrics averaged (--styles all, CodeTalker) or
with their mixture (--styles mean). Phone sources: forced-aligned (transcript), recognised
(no transcript), exact TTS phones (the text path; synthetic corpus only).
"""

import argparse
import time

from blendtalk.training.faceformer import FaceFormerTrainConfig
from blendtalk.speech.features import PHONE_SOURCES
from blendtalk.evaluation.reports import JSON_FILE, write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", help="FaceFormer folder or Hub id (default: BLENDTALK_SPEECH, then assets/speech); "
                                        "'none' scores only the procedural driver")
    p.add_argument("--data", nargs="+", default=[FaceFormerTrainConfig.data], metavar="ROOT",
                   help="synthetic corpus root, or `vocaset ROOT`")
    p.add_argument("--features", help="phonetic feature cache (default: ROOT/phonetic_features.npz)")
    p.add_argument("--flame-masks", help="FLAME_masks.pkl (VOCASET: lip and upper-face vertices)")
    p.add_argument("--subset", choices=("test", "val"), default="test")
    p.add_argument("--sources", nargs="+", choices=PHONE_SOURCES, default=list(PHONE_SOURCES),
                   help="phone sources to score (those in the cache)")
    p.add_argument("--styles", choices=("all", "mean"), default="all")
    p.add_argument("--max-sequences", type=int, help="score only the first N test sequences")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", type=JSON_FILE, required=True, help="where to write the report")
    args = p.parse_args(argv)
    if args.max_sequences is not None and args.max_sequences < 1:
        p.error(f"--max-sequences must be at least 1, got {args.max_sequences}; leave it out for all")
    if len(args.data) == 2 and args.data[0] == "vocaset":
        config = FaceFormerTrainConfig(vocaset=args.data[1], features=args.features, flame_masks=args.flame_masks)
    elif len(args.data) == 1:
        config = FaceFormerTrainConfig(data=args.data[0], features=args.features, flame_masks=args.flame_masks)
    else:
        p.error("--data takes a synthetic corpus ROOT or `vocaset ROOT`")

    import torch

    from blendtalk.evaluation.faceformer import evaluate_driver, evaluate_model, evaluate_procedural, region_masks
    from blendtalk.training.faceformer import load_sequences
    from blendtalk.face.rig import load_rig
    from blendtalk.speech.features import FeatureCache

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = None
    if (args.checkpoint or "").lower() != "none":
        from blendtalk.hub import resolve_checkpoint
        from blendtalk.models.faceformer import load_speech_model

        ckpt = resolve_checkpoint("speech", args.checkpoint)
        model = load_speech_model(ckpt.path, device)
        config.encoder = model.config.encoder.kind
    cache = FeatureCache.load(config.feature_path()) if config.feature_path().is_file() or config.encoder == "phonetic" else None
    sources = [s for s in args.sources if cache is not None and s in cache.sources]
    data = load_sequences(config, args.subset, device, cache, max_sequences=args.max_sequences)
    masks = region_masks(config, data.motion.shape[1])
    rig = load_rig()
    report = {"subset": args.subset, "sequences": len(data), "frames": int(data.lengths.sum()), "styles": args.styles,
              "data": config.vocaset or config.data,
              "vertex_sets": None if masks is None else {k: int(len(v)) for k, v in masks.items()},
              "units": {"lve_mm2": "mm^2", "fdd_mm": "mm", "fdd_codetalker_mm2": "mm^2", "mve_mm": "mm",
                        "bilabial_closure": "share of /p b m/ phones with lip gap < 1 mm at some frame"}}
    if model is not None:
        started = time.time()
        report["faceformer"] = evaluate_model(model, data, masks, sources or ["aligned"], styles=args.styles, rig=rig)
        report["faceformer_checkpoint"] = str(ckpt.path)
        report["faceformer_seconds"] = time.time() - started
    if data.motion.shape[1] == rig.num_vertices and sources:
        report["procedural"] = evaluate_procedural(data, rig, masks, sources)
    report["no_motion"] = evaluate_driver(lambda n, s: torch.zeros_like(data.motion[data.rows(n)])[None], data, masks,
                                          ["template"], rig=rig)["template"]
    report["ground_truth"] = evaluate_driver(lambda n, s: data.motion[data.rows(n)][None], data, masks, ["data"], rig=rig)["data"]
    write_report(args.json, report)
    print(f"{args.subset}: {report['sequences']} sequences, {report['frames']} frames; LVE mm^2 / FDD mm / MVE mm")
    rows = [("ground truth (data)", report["ground_truth"]), ("no motion", report["no_motion"])]
    for driver in ("faceformer", "procedural"):
        rows += [(f"{driver} ({s})", r) for s, r in report.get(driver, {}).items()]
    for name, r in rows:
        print(f"  {name:26s} LVE {r.get('lve_mm2', float('nan')):8.3f}  FDD {r.get('fdd_mm', float('nan')):7.4f}  "
              f"MVE {r['mve_mm']:7.4f}  /p b m/ closed {r.get('bilabial_closure', float('nan')):.3f}")
    print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
