"""Build assets/live/face_arkit.glb (the dressed rig with the 52 ARKit units as morph targets, with
normal offsets) and assets/live/face_look.json (the file renderer's look baked for the page:
`blendtalk.live.look`), and report how far the ARKit-driven face is from the fused face the file
path renders.

    python tools/build_live_glb.py            # writes both assets and prints the mapping error
    python tools/build_live_glb.py --json docs/benchmarks/live_arkit_mapping.json

The error is measured on the ARCTIC sentence streamed through a LiveSession under a few emotions:
per frame the rig driven by the frame's 52 ARKit weights against the frame's fused vertices.
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("assets/live/face_arkit.glb"))
    p.add_argument("--emotions", nargs="+", default=["neutral", "happy", "sad", "surprised"])
    p.add_argument("--json", type=Path, help="also write the mapping error here")
    args = p.parse_args(argv)

    import numpy as np

    from blendtalk.speech.audio import load_audio
    from blendtalk.constants import ASSETS_DIR
    from blendtalk.evaluation.metrics import arkit_mapping_error
    from blendtalk.pipeline import Pipeline
    from blendtalk.live.look import write_look
    from blendtalk.render.gltf import write_rig_glb

    pipe = Pipeline.from_pretrained(device="cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = write_rig_glb(args.out, pipe.rig, pipe.dressing(), posable=True, morph_normals=True)
    # The look of the file path's own renderer (its camera, lights and material), at the page's size.
    look = write_look(args.out.with_name("face_look.json"), pipe.rig, pipe.renderer(512))
    audio = load_audio(ASSETS_DIR / "audio" / "arctic_a0009.wav")
    report = {"glb": str(args.out), "bytes": path.stat().st_size, "look": str(look), "look_bytes": look.stat().st_size,
              "mapping_error": {}}
    for emotion in args.emotions:
        session = pipe.live(emotion)
        frames = []
        for i in range(0, len(audio), 320):
            frames += session.push(audio[i:i + 320])
        frames += session.finish()
        report["mapping_error"][emotion] = arkit_mapping_error(
            pipe.rig, np.stack([f.vertices for f in frames]), np.stack([f.arkit for f in frames]))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
