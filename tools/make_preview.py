"""The README's preview: every emotion on one sentence, side by side, as a looping animated WebP.

    python tools/make_preview.py --out docs/images/emotions.webp

Each emotion is rendered with the CLI (`python -m blendtalk animate ... --emotion E`, as a user would),
its frames are read back with imageio-ffmpeg's ffmpeg, and the tiles are laid out in a grid with the
emotion's name under each. Needs only requirements.txt.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blendtalk import EMOTIONS  # noqa: E402

ARCTIC = ROOT / "assets" / "audio" / "arctic_a0009.wav"
LABEL_PX = 22  # height of the name strip under each tile


def render(emotion: str, audio: Path, transcript: str, size: int, seed: int, out: Path) -> Path:
    video = out / f"{emotion}.mp4"
    subprocess.run([sys.executable, "-m", "blendtalk", "animate", str(audio), "--transcript", transcript,
                    "--emotion", emotion, "--size", str(size), "--seed", str(seed), "-o", str(video), "--quiet", "--overwrite"],
                   check=True, cwd=ROOT)
    return video


def frames(video: Path, fps: int, tile: int) -> np.ndarray:
    """(F, tile, tile, 3) uint8 frames of `video` at `fps`, scaled to `tile` px, through the bundled ffmpeg."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video), "-vf", f"fps={fps},scale={tile}:{tile}",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, tile, tile, 3)  # (F, tile, tile, 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "emotions.webp", help="animated WebP")
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS), help="one tile each, in this order")
    p.add_argument("--columns", type=int, default=4, help="tiles per row")
    p.add_argument("--tile", type=int, default=192, help="tile side in pixels")
    p.add_argument("--fps", type=int, default=15, help="frames per second of the WebP")
    p.add_argument("--quality", type=int, default=80, help="WebP quality (0-100, lossy; below about 80 the teeth take a cyan cast)")
    args = p.parse_args(argv)
    transcript = (ARCTIC.with_suffix(".txt")).read_text().strip()
    with tempfile.TemporaryDirectory(prefix="blendtalk-preview-") as tmp:
        # One seed per tile: blinks and head motion differ, as they would between takes.
        clips = [frames(render(e, ARCTIC, transcript, 256, seed, Path(tmp)), args.fps, args.tile)
                 for seed, e in enumerate(args.emotions)]
    n = min(len(c) for c in clips)
    background = tuple(int(c) for c in clips[0][0, 0, 0])  # the renderer's: tiles and labels merge
    rows = -(-len(clips) // args.columns)
    font = ImageFont.load_default(size=16)
    sheet = []
    for f in range(n):
        canvas = Image.new("RGB", (args.columns * args.tile, rows * (args.tile + LABEL_PX)), background)
        draw = ImageDraw.Draw(canvas)
        for i, (emotion, clip) in enumerate(zip(args.emotions, clips)):
            x, y = (i % args.columns) * args.tile, (i // args.columns) * (args.tile + LABEL_PX)
            canvas.paste(Image.fromarray(clip[f]), (x, y))
            draw.text((x + args.tile / 2, y + args.tile + LABEL_PX / 2), emotion, fill="white", font=font, anchor="mm")
        sheet.append(canvas)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet[0].save(args.out, save_all=True, append_images=sheet[1:], duration=round(1000 / args.fps), loop=0,
                  quality=args.quality, method=6)
    print(f"{args.out}: {n} frames, {sheet[0].size[0]}x{sheet[0].size[1]}, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
