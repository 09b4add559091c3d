"""Distil the speech model's encoder into the one live mode streams (blendtalk.models.stream_encoder).

    python train/train_stream_encoder.py                     # the synthetic corpus, the shipped speech model
    python train/train_stream_encoder.py --publish            # ... and copy the best student to assets/live/stream_encoder
"""

import argparse
import shutil
from pathlib import Path

from blendtalk.models.stream_encoder import STREAM_ENCODER_DIR
from blendtalk.training.stream_encoder import StreamEncoderTrainConfig, train_stream_encoder


def main(argv=None) -> int:
    d = StreamEncoderTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=d.data, help="synthetic corpus root (python -m blendtalk.data.synth makes one)")
    p.add_argument("--speech", help="speech model folder (default: the shipped one)")
    p.add_argument("--out", default=d.out, help="folder in which a new run folder is created")
    p.add_argument("--lookaheads", type=int, nargs="+", default=d.lookaheads, help="look-ahead windows (frames) to distil for")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--clips-per-step", type=int, default=d.clips_per_step)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--max-minutes", type=float, help="stop and save after this many minutes")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--publish", action="store_true", help=f"copy the run's best student to {STREAM_ENCODER_DIR}")
    args = p.parse_args(argv)
    if not (Path(args.data) / "speech").is_dir():
        p.error(f"--data {args.data}: no speech corpus there (make one with python -m blendtalk.data.synth)")
    try:
        config = StreamEncoderTrainConfig(args.data, args.speech, args.out, args.lookaheads, args.steps, args.clips_per_step,
                                          args.lr, args.val_every, max_minutes=args.max_minutes, seed=args.seed, device=args.device)
    except ValueError as err:
        p.error(str(err))
    run = train_stream_encoder(config)
    print(f"run: {run}")
    if args.publish:
        shutil.copytree(run / "best", STREAM_ENCODER_DIR, dirs_exist_ok=True)
        print(f"published to {STREAM_ENCODER_DIR}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
