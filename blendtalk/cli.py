"""Command line: `python -m blendtalk info | emotions | animate ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REGION_COLOURS = {  # RGB for the map picture, drawn in this order (later wins)
    "face_crop": (200, 170, 150),
    "upper_face": (120, 160, 220),
    "mouth": (230, 150, 120),
    "lips": (200, 40, 60),
    "eyes": (60, 170, 90),
}
PICTURE_POSES = {
    "neutral": {},
    "jawOpen": {"jawOpen": 1.0},
    "smile": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
    "pucker": {"mouthPucker": 1.0},
}


def region_image(square_map, rig) -> np.ndarray:
    """Colour every covered pixel of the map by the region of its heaviest vertex: (N, N, 3) uint8."""
    n = square_map.size
    dominant = square_map.indices[np.arange(n * n), square_map.weights.argmax(1)]  # (N*N,)
    img = np.full((n * n, 3), 255, np.uint8)
    for region, colour in REGION_COLOURS.items():
        img[rig.mask(region)[dominant]] = colour
    img[~square_map.mask.reshape(-1)] = 255
    return img.reshape(n, n, 3)


def info(args) -> int:
    from .geometry import load_square_map
    from .rig import load_rig

    rig = load_rig()
    smap = load_square_map(rig, size=args.map_size)
    report = {
        "rig": rig.name,
        "vertices": rig.num_vertices,
        "triangles": int(len(rig.triangles)),
        "blendshapes": list(rig.blendshape_names),
        "regions": {r: int(m.sum()) for r, m in rig.masks.items()},
        "lip_pairs": int(len(rig.lip_pairs)),
        "map_size": smap.size,
        "map_coverage": round(float(smap.coverage), 4),
        "map_symmetry_error": float(smap.symmetry_error),
    }
    print(json.dumps(report, indent=2))
    if args.picture:
        write_picture(args.picture, rig, smap)
        print(f"picture written to {args.picture}", file=sys.stderr)
    return 0


def write_picture(path: Path, rig, smap, size: int = 256) -> None:
    """The map coloured by region beside renders of the neutral face and a few blendshapes."""
    import imageio.v3 as iio
    from PIL import Image

    from .render import Renderer, RenderConfig

    tiles = [np.asarray(Image.fromarray(region_image(smap, rig)).resize((size, size), Image.NEAREST))]
    poses = np.stack([rig.weights(p) for p in PICTURE_POSES.values()])
    tiles += list(Renderer.for_rig(rig, RenderConfig(size=size))(rig(poses)))
    iio.imwrite(path, np.concatenate(tiles, axis=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blendtalk", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="describe the face rig and its geometry map as JSON",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--map-size", type=int, default=128, help="side N of the square geometry map")
    p.add_argument("--picture", type=Path, help="also draw the map and a few rendered poses into this PNG")
    p.set_defaults(func=info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"blendtalk: error: {e}", file=sys.stderr)
        return 2
