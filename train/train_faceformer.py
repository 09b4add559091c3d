"""Train the speech-driven FaceFormer.

    python train/train_faceformer.py                                   # synthetic corpus (generated if missing), CPU or GPU
    python train/train_faceformer.py --cache-features feats.npz        # only compute the phonetic features (CPU, pocketsphinx)
    python train/train_faceformer.py --features feats.npz              # train from them (no pocketsphinx/librosa needed)
    python train/train_faceformer.py --data vocaset ROOT --flame-masks FLAME_masks.pkl
    python train/train_faceformer.py --encoder wav2vec2 --wav2vec2 facebook/wav2vec2-base-960h
    python train/train_faceformer.py --resume runs/faceformer-...      # continue a run
    torchrun --nproc_per_node=2 train/train_faceformer.py              # DistributedDataParallel
"""

import argparse
from dataclasses import replace
from pathlib import Path

from blendtalk.training.faceformer import (
    FaceFormerTrainConfig, cache_features, load_train_config, train_faceformer,
)


def parse_mix(text: str) -> dict:
    """'aligned=0.5,recognized=0.3,exact=0.2' -> dict."""
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected source=share,... (e.g. aligned=0.7,recognized=0.3), got {text!r}")


def main(argv=None) -> int:
    d = FaceFormerTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", default=[d.data], metavar="ROOT",
                   help="synthetic corpus root (generated there if missing), or `vocaset ROOT` for real VOCASET")
    p.add_argument("--features", help="phonetic feature cache (default: ROOT/phonetic_features.npz, built if missing)")
    p.add_argument("--cache-features", metavar="FILE", help="compute the feature cache into FILE and exit")
    p.add_argument("--flame-masks", help="FLAME_masks.pkl: lip / upper-face vertices for LVE/FDD on VOCASET")
    p.add_argument("--encoder", choices=("phonetic", "wav2vec2"), default=d.encoder)
    p.add_argument("--wav2vec2", help="pretrained wav2vec2 (Hub id or local folder); default: random init")
    p.add_argument("--phone-mix", type=parse_mix, default=d.phone_mix, help="share of training windows per phone source")
    p.add_argument("--out", default=d.out, help="folder in which a new run folder is created")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--max-minutes", type=float, help="stop and save after this many minutes")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--window", type=float, nargs=2, default=(d.min_seconds, d.max_seconds), metavar=("MIN", "MAX"),
                   help="seconds of the random windows")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--cosine-lr", action="store_true", help="decay the learning rate to 0 over the run")
    p.add_argument("--self-feed", type=float, default=d.self_feed, help="share of steps fed their own predictions")
    p.add_argument("--mel-warp", type=float, default=d.mel_warp, help="log-mel frequency stretch, 1 +- up to this")
    p.add_argument("--mel-masks", type=int, default=d.mel_masks, help="SpecAugment bands and spans blanked per window")
    p.add_argument("--mel-dropout", type=float, default=d.mel_dropout,
                   help="share of windows with aligned/exact phones trained without their log-mel")
    p.add_argument("--lip-weight", type=float, default=d.lip_weight)
    p.add_argument("--lambda-velocity", type=float, default=d.lambda_velocity)
    p.add_argument("--lambda-lip-gap", type=float, default=d.lambda_lip_gap, help="L1 on the rig's lip-seam gap")
    p.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations (0: every epoch)")
    p.add_argument("--val-sequences", type=int, default=d.val_sequences)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: min(4, cores / processes))")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    for name in ("epochs", "batch_size", "lr", "val_sequences"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.val_every < 0 or min(args.lip_weight, args.lambda_velocity, args.lambda_lip_gap) < 0:
        p.error("--val-every, --lip-weight and the loss weights must be >= 0")
    if len(args.data) == 2 and args.data[0] == "vocaset":
        data, vocaset = d.data, args.data[1]
    elif len(args.data) == 1:
        data, vocaset = args.data[0], None
    else:
        p.error("--data takes a synthetic corpus ROOT or `vocaset ROOT`")

    if vocaset is None and not (Path(data) / "speech").is_dir():
        from blendtalk.data.synth import generate

        print(f"no corpus in {data}: generating the synthetic one there first")
        generate(data)
    try:
        config = FaceFormerTrainConfig(
            data=data, vocaset=vocaset, features=args.features, flame_masks=args.flame_masks, out=args.out,
            encoder=args.encoder, wav2vec2=args.wav2vec2, phone_mix=args.phone_mix, lr=args.lr,
            lr_schedule="cosine" if args.cosine_lr else "constant", batch_size=args.batch_size,
            min_seconds=args.window[0], max_seconds=args.window[1], self_feed=args.self_feed,
            mel_warp=args.mel_warp, mel_masks=args.mel_masks, mel_dropout=args.mel_dropout,
            lip_weight=args.lip_weight, lambda_velocity=args.lambda_velocity, lambda_lip_gap=args.lambda_lip_gap, epochs=args.epochs,
            max_minutes=args.max_minutes, val_every=args.val_every, val_sequences=args.val_sequences,
            seed=args.seed, device=args.device, threads=args.threads,
        )
    except ValueError as err:
        p.error(str(err))
    if args.cache_features:
        print(f"phonetic features saved in {cache_features(config, args.cache_features)}")
        return 0
    if args.resume is not None:  # go on as the run was configured; only the time budget and device may change
        config = replace(load_train_config(args.resume), max_minutes=args.max_minutes, device=args.device,
                         threads=args.threads)
    elif config.encoder == "phonetic" and not config.feature_path().is_file():
        print(f"no phonetic feature cache at {config.feature_path()}: computing it first (pocketsphinx, a few minutes)")
        cache_features(config)
    run = train_faceformer(config, run_dir=args.resume, resume=args.resume is not None)
    if run is not None:  # under torchrun only rank 0 writes a run
        print(f"run saved in {run}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
