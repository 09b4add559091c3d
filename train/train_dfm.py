"""Train the deformation fusion module (DFM).

    python train/train_dfm.py                         # synthetic corpora (generated if missing), CPU or GPU
    python train/train_dfm.py --no-sparsity           # an ablation
    python train/train_dfm.py --resume runs/dfm-...   # continue a run
    torchrun --nproc_per_node=2 train/train_dfm.py    # DistributedDataParallel
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

from blendtalk.training.losses import DFMLossConfig
from blendtalk.models.dfm import DFMConfig
from blendtalk.face.rig import load_rig
from blendtalk.training.dfm import DFMTrainConfig, load_train_config, train_dfm

PAPER_EPOCHS = 4000


def main(argv=None) -> int:
    d, dl = DFMTrainConfig(), DFMLossConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=d.data, help="synthetic corpus root; generated there if missing")
    p.add_argument("--vocaset", help="real VOCASET root (raw or FaceFormer layout) for the speech corpus")
    p.add_argument("--florence", help="real Florence4D root for the expression corpus")
    p.add_argument("--out", default=d.out, help="folder in which a new run folder is created")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--init", type=Path, help="DFM checkpoint folder to start from (its model settings are used): "
                                             "adapts a trained model to new data")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--paper-schedule", action="store_true", help=f"train {PAPER_EPOCHS} epochs as in the paper")
    p.add_argument("--max-minutes", type=float, help="stop and save after this many minutes")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--blendshapes", "-K", type=int, default=DFMConfig.num_blendshapes, help="blendshapes per domain")
    p.add_argument("--expression-blendshapes", type=int, help="K_e, expression blendshapes (default: same as -K)")
    p.add_argument("--map-size", type=int, default=DFMConfig.map_size)
    p.add_argument("--lambda-sparse", type=float, default=dl.lambda_sparse)
    p.add_argument("--speech-cross-share", type=float, default=dl.speech_cross_share,
                   help="share of --lambda-sparse that the speech inputs' cross half pays (not in the paper: below 1 "
                        "lets speech shed its emotion leak while expressions keep their open mouths)")
    p.add_argument("--lambda-lap", type=float, default=dl.lambda_lap)
    p.add_argument("--lambda-orth", type=float, default=dl.lambda_orth, help="keep expression blendshapes out of the speech span")
    p.add_argument("--lambda-invariance", type=float, default=dl.lambda_invariance,
                   help="prior (not in the paper): expression weights unchanged when speech is added to an expression frame")
    p.add_argument("--invariance-mix", type=float, default=dl.invariance_mix, help="largest scale of that added speech frame")
    p.add_argument("--lambda-speech-upper", type=float, default=dl.lambda_speech_upper,
                   help="prior (not in the paper): keep speech blendshapes off the upper face")
    p.add_argument("--crop-loss", action="store_true", help="score reconstruction only inside the face crop")
    p.add_argument("--cosine-lr", action="store_true", help="decay the learning rate to 0 over the run")
    p.add_argument("--no-sparsity", action="store_true", help="ablation: lambda_sparse = 0")
    p.add_argument("--no-laplacian", action="store_true", help="ablation: lambda_lap = 0")
    p.add_argument("--no-geometric-map", action="store_true", help="ablation: MLP encoders on the flat vertex vector")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "lr", "blendshapes", "val_every"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.expression_blendshapes is not None and args.expression_blendshapes < 1:
        p.error("--expression-blendshapes must be positive")
    if min(args.lambda_sparse, args.speech_cross_share, args.lambda_lap, args.lambda_orth, args.lambda_invariance,
           args.lambda_speech_upper) < 0:
        p.error("loss weights must be >= 0")
    if not args.invariance_mix > 0:
        p.error("--invariance-mix must be positive")
    if args.max_minutes is not None and not args.max_minutes > 0:
        p.error(f"--max-minutes must be positive, got {args.max_minutes:g}; leave it out to train all epochs")
    if args.resume is not None:  # a run goes on as it was configured: only the time budget and device may change
        defaults = vars(p.parse_args([]))
        changed = ["--" + name.replace("_", "-") for name, value in vars(args).items()
                   if name not in ("resume", "max_minutes", "device") and value != defaults[name]]
        if changed:
            p.error(f"--resume continues a run as it was configured; leave out {', '.join(changed)} "
                    "(only --max-minutes and --device may change)")
        config = replace(load_train_config(args.resume), max_minutes=args.max_minutes, device=args.device)
        print(f"run saved in {train_dfm(config, run_dir=args.resume, resume=True)}")
        return 0

    try:
        if args.init is not None:  # the starting checkpoint fixes the model's shape
            if not (args.init / "config.json").is_file():
                p.error(f"--init {args.init} is not a DFM checkpoint folder (no config.json)")
            model = DFMConfig(**{k: v for k, v in json.loads((args.init / "config.json").read_text()).items()
                                 if k != "model_type"})
        else:
            model = DFMConfig(num_vertices=load_rig().num_vertices, num_blendshapes=args.blendshapes,
                              num_expression_blendshapes=args.expression_blendshapes,
                              map_size=args.map_size, use_geometric_map=not args.no_geometric_map)
        config = DFMTrainConfig(
            data=args.data, speech_root=args.vocaset, expression_root=args.florence, out=args.out, model=model,
            loss=DFMLossConfig(lambda_sparse=0.0 if args.no_sparsity else args.lambda_sparse,
                               speech_cross_share=args.speech_cross_share,
                               lambda_lap=0.0 if args.no_laplacian else args.lambda_lap, lambda_orth=args.lambda_orth,
                               lambda_invariance=args.lambda_invariance, invariance_mix=args.invariance_mix,
                               lambda_speech_upper=args.lambda_speech_upper),
            lr=args.lr, lr_schedule="cosine" if args.cosine_lr else "constant", crop_loss=args.crop_loss, batch_size=args.batch_size, epochs=PAPER_EPOCHS if args.paper_schedule else args.epochs,
            max_minutes=args.max_minutes, val_every=args.val_every, seed=args.seed, device=args.device,
            init=None if args.init is None else str(args.init),
        )
    except ValueError as err:  # a model or loss setting out of range
        p.error(str(err))
    data = Path(args.data)
    if not args.vocaset and not (data / "speech").is_dir():
        if data.exists() and (not data.is_dir() or any(data.iterdir())):  # not a typo to fill with 1.8 GB
            p.error(f"--data {args.data} holds no synthetic corpus (speech/ and expression/); give a corpus, "
                    "or a new or empty folder to generate one in")
        from blendtalk.data.synth import generate

        print(f"no corpora in {args.data}: generating the synthetic ones there first")
        generate(args.data)
    print(f"run saved in {train_dfm(config)}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
