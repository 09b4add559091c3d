"""Live look: the page's face beside the file renderer's on the same ARKit weights.

    python eval/live_look.py --emotions happy disgusted --json docs/benchmarks/live_look.json --sheet docs/images/live_look.png

The file path's ARKit frames of the clip (every --stride-th, head still, gaze ahead) are drawn by
the live page without a microphone (`window.liveShow`, headless Chromium, SwiftShader) and by the
file renderer at the page's 480 px (`Pipeline.renderer(480)`) on the ARKit-driven face. Per emotion:
the mean absolute difference over the frame (grey levels, 0-255), and on the pixels the renderer's
nasolabial folds darken by more than 2 levels, how far the page is from the renderer and how far it
would be without folds (the renderer with `fold_strength=0`). The sheet holds, per emotion, the
frame of the deepest fold: page, renderer, renderer without folds, and the page's difference x8.
Also the bake's fold depth (`live.look.blend_folds`, what the page computes) against the renderer's
(`Wrinkles.attributes`) at the worst vertex, and the same for the alternative the bake does not use:
per-unit fold depths (after the ramp) at the lines' weight levels, summed and clipped to 1.
"""

import argparse
import socket
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python eval/X.py`: its sibling scripts import as eval.*

from blendtalk.constants import ASSETS_DIR
from blendtalk.expression.emotions import EMOTIONS
from blendtalk.evaluation.reports import JSON_FILE, PNG_FILE, write_report

ARCTIC = ASSETS_DIR / "audio" / "arctic_a0009.wav"
FOLD_PIXEL = 2.0  # grey levels the renderer's fold must darken a pixel by to count as the fold's


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audio", type=Path, default=ARCTIC, help="speech whose file-path ARKit frames are drawn (wav)")
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS))
    p.add_argument("--stride", type=int, default=3, help="draw every n-th frame")
    p.add_argument("--json", type=JSON_FILE, required=True)
    p.add_argument("--sheet", type=PNG_FILE, help="PNG: per emotion, the deepest fold's frame side by side")
    args = p.parse_args(argv)
    if not args.audio.is_file():
        p.error(f"--audio: no such file {args.audio}")
    if args.stride < 1:
        p.error("--stride must be >= 1")
    from eval.live_legibility import checked_emotions, require_chromium, serve_live

    emotions = checked_emotions(p, args.emotions)

    import numpy as np
    import torch
    from PIL import Image

    from blendtalk.evaluation import browser
    from blendtalk.live.look import WRINKLE_LEVELS, bake_look, blend_folds
    from blendtalk.pipeline import Pipeline
    from blendtalk.render.renderer import Renderer
    from blendtalk.speech.audio import load_audio

    require_chromium(p)
    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained(device="cpu")
    rig, names, audio = pipe.rig, list(pipe.rig.blendshape_names), load_audio(args.audio)
    drawn = pipe.renderer(480)
    plain = Renderer.for_rig(rig, replace(drawn.config, fold_strength=0.0))  # the same without folds
    folds = pipe.renderer(512).wrinkles
    look = bake_look(rig, pipe.renderer(512))
    levels = np.array([0.0, *WRINKLE_LEVELS])
    base, deltas = torch.as_tensor(rig.vertices), torch.as_tensor(rig.deltas, dtype=torch.float32)
    with torch.inference_mode():  # (K, L+1, 2) each unit's fold depths alone, from weight 0
        unit_depth = np.stack([np.zeros((len(deltas), 2))] + [folds.fold_depths(base + level * deltas).numpy()
                                                               for level in WRINKLE_LEVELS], 1)
    clips, bake = {}, {}
    for emotion in emotions:
        weights = pipe.animate(audio, emotion=emotion).arkit_weights[::args.stride]  # (T, 52)
        faces = (rig.vertices[None] + np.einsum("tk,kvc->tvc", weights, rig.deltas)).astype(np.float32)
        still = (np.zeros((len(faces), 2)), np.zeros((len(faces), 3)))
        with torch.inference_mode():
            depth = folds.fold_depths(torch.as_tensor(faces)).numpy().max(1)  # (T,) the deeper fold
        clips[emotion] = (weights, np.asarray(drawn(faces, *still)), np.asarray(plain(faces, *still)), depth)
        with torch.inference_mode():
            exact = folds.attributes(torch.as_tensor(faces), folds.num_vertices)[..., 5].numpy()  # (T, V)
        line = folds.fold_line.cpu().numpy()
        side = np.asarray(folds.folds.side)
        error, alternative = [], []
        for w, e in zip(weights.astype(np.float64), exact):
            error.append(np.abs(blend_folds(look, w)[:, 1] - e).max())
            j = np.clip(np.searchsorted(levels, w, side="right") - 1, 0, len(levels) - 2)  # (K,) segment per unit
            f = ((w - levels[j]) / (levels[j + 1] - levels[j]))[:, None]
            k = np.arange(len(w))
            summed = np.where(w[:, None] > 0, unit_depth[k, j] + f * (unit_depth[k, j + 1] - unit_depth[k, j]), 0).sum(0)
            alternative.append(np.abs(np.clip(summed, 0, 1)[side] * line - e).max())
        bake[emotion] = {"fold_bake_error_max": float(np.max(error)),
                         "fold_unit_depth_sum_error_max": round(float(np.max(alternative)), 3),
                         "fold_unit_depth_sum_error_mean": round(float(np.mean(alternative)), 3)}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, server = serve_live(pipe, port)
    try:
        frames = [{"arkit": dict(zip(names, map(float, w))), "head": [0.0, 0.0, 0.0], "eyes": [0.0, 0.0]}
                  for weights, *_ in clips.values() for w in weights]
        shots = np.stack(browser.page_frames_of_weights(url, frames)).astype(np.float64)
    finally:
        server.should_exit = True

    rows, sheet, start = [], [], 0
    for emotion, (weights, file, no_fold, depth) in clips.items():
        page = shots[start:start + len(weights)]
        start += len(weights)
        file, no_fold = file.astype(np.float64), no_fold.astype(np.float64)
        diff = np.abs(page - file).mean(-1)  # (T, H, W)
        fold = np.abs(file - no_fold).mean(-1) > FOLD_PIXEL
        rows.append({"emotion": emotion, "frames": len(weights), "mean_abs_diff": round(float(diff.mean()), 3),
                     "max_frame_mean_abs_diff": round(float(diff.mean((1, 2)).max()), 3),
                     "fold_pixels_per_frame": round(float(fold.sum() / len(weights)), 1),
                     "fold_darkening": round(float((no_fold - file).mean(-1)[fold].mean()), 2) if fold.any() else 0.0,
                     "fold_page_vs_file": round(float(diff[fold].mean()), 2) if fold.any() else 0.0,
                     "fold_page_vs_file_without_fold": round(float(np.abs(page - no_fold).mean(-1)[fold].mean()), 2)
                     if fold.any() else 0.0,
                     "deepest_fold": round(float(depth.max()), 3)} | bake[emotion])
        print(" ".join(f"{k} {v}" for k, v in rows[-1].items()))
        t = int(depth.argmax())
        sheet.append(np.concatenate([page[t], file[t], no_fold[t], np.clip(8 * np.abs(page[t] - file[t]), 0, 255)], 1))
    write_report(args.json, {"clip": args.audio.name, "stride": args.stride, "size": 480, "rows": rows,
                             "command": "python eval/live_look.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    if args.sheet:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(sheet, 0).astype(np.uint8)).save(args.sheet)
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
