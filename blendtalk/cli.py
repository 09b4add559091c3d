"""Command line: `python -m blendtalk info | emotions | animate | live ...`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from .constants import SAMPLE_RATE
from .request import METHODS

# Speech this long or longer is recognised in a process per core while torch imports; shorter clips
# leave this process a core. On two cores a 10 s clip took 7.8-8.4 s with two recognition processes
# and 7.2-7.4 s with one; 30 s took 17.8 s with two and 18.6 s with one, 60 s 31.4 s and 35.2 s.
LONG_CLIP_SECONDS = 20.0

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
    from .face.geometry import load_square_map
    from .face.rig import load_rig

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

    from .render.renderer import Renderer, RenderConfig

    tiles = [np.asarray(Image.fromarray(region_image(smap, rig)).resize((size, size), Image.NEAREST))]
    poses = np.stack([rig.weights(p) for p in PICTURE_POSES.values()])
    tiles += list(Renderer.for_rig(rig, RenderConfig(size=size))(rig(poses)))
    iio.imwrite(path, np.concatenate(tiles, axis=1))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it, or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A mistyped option gets one line (which option, what is wrong, where the help is), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_script(main) -> int:
    """Run a train/ or eval/ script's `main()` as the CLI runs its commands: bad input (a ValueError,
    a missing, unreadable or unwritable file) gets one line and exit status 2 instead of a
    traceback; Ctrl-C gets one line and 130. Anything else is a bug and keeps its traceback."""
    prog = Path(sys.argv[0]).name
    try:
        return main() or 0
    except (ValueError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="blendtalk", formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)  # subcommands' parsers are `Parser`s too
    p = sub.add_parser("info", help="describe the face rig and its geometry map as JSON", formatter_class=HelpFormatter,
                       description="Prints the face rig (vertices, blendshapes, regions) and its square geometry map as JSON.")
    p.add_argument("--map-size", type=int, default=128, help="side N of the square geometry map")
    p.add_argument("--picture", type=Path, help="also draw the map and a few rendered poses into this PNG")
    p.set_defaults(func=info)

    p = sub.add_parser("emotions", help="list the emotions an animation can show",
                       description="Prints the emotion names --emotion, --mix and --timeline take, one per line.")
    p.set_defaults(func=list_emotions)

    p = sub.add_parser("animate", help="speech + emotion -> an mp4 with sound (and exports)", formatter_class=HelpFormatter)
    p.add_argument("speech", nargs="?", type=Path, help="speech audio (wav, flac, ogg, mp3, m4a ...); or use --text")
    p.add_argument("--text", help="words to speak with the built-in TTS instead of an audio file (at most 600 characters)")
    p.add_argument("--transcript", help="the words of the audio: forced alignment gives better lip sync")
    p.add_argument("--emotion", default="neutral", help="one of `python -m blendtalk emotions`")
    p.add_argument("--intensity", type=float, default=1.0, help="0..1 (1: the apex), up to 1.5 to exaggerate")
    p.add_argument("--mix", metavar="EMOTION", help="a second emotion blended in")
    p.add_argument("--mix-ratio", type=float, help="share of --mix (0..1; default: 0.5)")
    p.add_argument("--timeline", help="e.g. 'neutral@0 happy@1.5 sad@4.0:0.7' (overrides --emotion)")
    p.add_argument("--reference", type=Path, help="expression sequence .npy/.npz: ARKit weights (T, 52) or rig vertices (T, V, 3)")
    p.add_argument("--no-blinks", action="store_true", help="no natural blinks")
    p.add_argument("--no-head-motion", action="store_true", help="keep the head and eyes still (no nods, turns, gaze shifts or the emotion's posture)")
    p.add_argument("--seed", type=int, default=0, help="picks the blinks and the head and eye motion (0 .. 2**32-1)")
    p.add_argument("--method", default="ours", choices=METHODS, help="fusion: the DFM keeping what its bases miss (ours), the paper's eq. 13, the naive sum, or speech alone")
    p.add_argument("-o", "--output", type=Path, default=Path("out.mp4"), help="the video (.mp4)")
    p.add_argument("--export-dir", type=Path, help="also write vertices .npy, OBJ zip, GLB, ARKit CSV/JSON into this folder (made if missing)")
    p.add_argument("--size", type=int, default=512, help="video frame size in pixels, 64 to 2048 (H.264 pads an odd size by one)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dfm", help="DFM checkpoint: a folder or a Hub id org/name[@rev] (default: BLENDTALK_DFM, then shipped)")
    p.add_argument("--speech-model", help="speech checkpoint: a folder or Hub id, or 'visemes' for the procedural driver (default: BLENDTALK_SPEECH, then shipped)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=animate)
    from .live.cli import add_parser as add_live_parser

    add_live_parser(sub, HelpFormatter)

    p = sub.add_parser("blender-addon", help="write the Blender add-on (takes and the live stream on a face) and blendtalk's face",
                       formatter_class=HelpFormatter,
                       description="Writes blendtalk_blender.py (install it in Blender: Edit > Preferences > Add-ons > "
                                   "Install from Disk) and blendtalk_face.glb (File > Import > glTF 2.0) into OUT_DIR.")
    p.add_argument("out_dir", type=Path, help="a folder (made if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same names")
    p.set_defaults(func=blender_addon)
    p = sub.add_parser("unity-client", help="write the Unity component that plays the live stream on a face",
                       formatter_class=HelpFormatter,
                       description="Writes BlendtalkLive.cs into OUT_DIR (a folder under your project's Assets/).")
    p.add_argument("out_dir", type=Path, help="a folder (made if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace a file of the same name")
    p.set_defaults(func=unity_client)
    return parser


def blender_addon(args) -> int:
    """Copy the add-on (blendtalk/clients/blender.py) and the live face's GLB into args.out_dir."""
    from .clients import blender
    from .constants import ASSETS_DIR

    targets = _copy_client_files({"blendtalk_blender.py": Path(blender.__file__),
                                  "blendtalk_face.glb": ASSETS_DIR / "live" / "face_arkit.glb"}, args, "Blender files")
    print(f"wrote {targets['blendtalk_blender.py']} (Blender: Edit > Preferences > Add-ons > Install from Disk) and "
          f"{targets['blendtalk_face.glb']} (File > Import > glTF 2.0); the panel is in the 3D view's sidebar, tab blendtalk")
    return 0


def unity_client(args) -> int:
    """Copy the Unity component (blendtalk/clients/unity/BlendtalkLive.cs) into args.out_dir."""
    from . import clients

    targets = _copy_client_files({"BlendtalkLive.cs": Path(clients.__file__).parent / "unity" / "BlendtalkLive.cs"},
                                 args, "Unity component")
    print(f"wrote {targets['BlendtalkLive.cs']}: add the BlendtalkLive component to the character, set its Url to what "
          "`python -m blendtalk live --emit ws://0.0.0.0:8765` prints, and give it the face meshes and head and eye bones")
    return 0


def _copy_client_files(sources: dict, args, what: str) -> dict:
    """{file name: source path} -> {file name: target path} in args.out_dir, copied; ValueError, with
    nothing written, for a missing or unwritable folder or a taken name without --overwrite."""
    import shutil

    folder = args.out_dir
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not an existing folder; create it first")
    targets = {name: folder / name for name in sources}
    taken = [str(t) for t in targets.values() if t.exists()]
    if taken and not args.overwrite:
        raise ValueError(f"{', '.join(taken)} exist{'s' if len(taken) == 1 else ''}; pass --overwrite to replace "
                         f"{'it' if len(taken) == 1 else 'them'}")
    _check_writable(folder, what)
    for name, target in targets.items():
        shutil.copyfile(sources[name], target)
    return targets


def list_emotions(args) -> int:
    from .expression.emotions import EMOTIONS

    print("\n".join(EMOTIONS))
    return 0


def _check_writable(folder: Path, what: str) -> None:
    """Create (and drop) a scratch file in `folder`: os.access says yes to root even where writing
    fails (/proc, read-only mounts)."""
    if not os.access(folder, os.W_OK):
        raise ValueError(f"folder {str(folder)!r} for the {what} is not writable")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"folder {str(folder)!r} for the {what} is not writable ({err.strerror or err})") from None


def _check_output(path: Path, suffix: str, overwrite: bool, what: str) -> None:
    if path.suffix.lower() != suffix:
        raise ValueError(f"{what} {str(path)!r} must end in {suffix}")
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ValueError(f"{what} {str(path)!r} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"folder {str(parent)!r} for the {what} does not exist; create it first")
    _check_writable(parent, what)


def _check_export_dir(folder: Path, overwrite: bool) -> None:
    """The folder exists and is writable, or can be created inside the nearest existing (writable) folder."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--export-dir {str(folder)!r} is a file, not a folder")
    if folder.is_dir():
        if any(folder.glob("animation*")) and not overwrite:
            raise ValueError(f"{str(folder)!r} already holds exports; pass --overwrite or choose another folder")
        _check_writable(folder, "exports")
        return
    ancestor = folder.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--export-dir {str(folder)!r} cannot be created: {str(ancestor)!r} is a file")
    _check_writable(ancestor, "exports")


def recognition_workers(samples: int) -> int:
    """Processes that recognise a clip of `samples` at 16 kHz while torch imports and the models load:
    a short clip leaves this process a core, a long one outlasts the imports and takes it too."""
    from .speech.phonetics import default_phone_workers

    return default_phone_workers(busy_cores=0 if samples >= LONG_CLIP_SECONDS * SAMPLE_RATE else 1)


def animate(args) -> int:
    """Validate every input first (nothing is loaded or written before), then animate, render, export.

    The input needs no torch but for a reference sequence and the device, so the phones of a valid
    speech file are being recognised on the other core while torch imports and the device is checked."""
    from .interrupt import held_interrupt
    from .request import AnimationRequest
    from .speech.phonetics import PhoneAligner

    if (args.speech is None) == (args.text is None):
        raise ValueError("give a speech file or --text (one of the two)")
    if args.text is not None and not args.text.strip():
        raise ValueError("--text is empty; give the words to speak")
    if args.mix_ratio is not None and args.mix is None:
        raise ValueError("--mix-ratio is the share of --mix: give --mix EMOTION too, or leave --mix-ratio out")
    _check_output(args.output, ".mp4", args.overwrite, "output video")
    if args.export_dir is not None:
        _check_export_dir(args.export_dir, args.overwrite)
    # Text, emotions, intensity, mix, timeline, reference, method, size and seed; the audio is read last.
    with held_interrupt():  # a reference is read onto the rig, which imports torch
        request = AnimationRequest.create(
            args.speech, text=args.text, transcript=args.transcript, emotion=args.emotion, intensity=args.intensity,
            mix_with=args.mix, mix_ratio=0.5 if args.mix_ratio is None else args.mix_ratio, timeline=args.timeline, reference=args.reference,
            blinks=not args.no_blinks, method=args.method, head_motion=not args.no_head_motion, seed=args.seed,
            size=args.size)
    aligner = PhoneAligner(recognition_workers(0 if request.audio is None else len(request.audio)))
    if request.audio is not None and request.transcript is None:
        aligner.prefetch(request.audio)

    with held_interrupt():  # torch imports here: Ctrl-C is raised once it is done (blendtalk.interrupt)
        from tqdm import tqdm

        from .models.checkpoint import pick_device
        from .pipeline import Pipeline

    pick_device(args.device)  # a bad --device is refused before any model loads
    bar = tqdm(total=100, desc="animate", unit="%", disable=args.quiet, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def progress(share: float, start: float, span: float):
        def report(fraction, what):
            bar.n = int(100 * (start + span * fraction))
            bar.set_postfix_str(what)
            bar.refresh()
        return report

    try:  # the bar is closed before anything else is printed, an interrupt's line included
        pipe = Pipeline.from_pretrained(dfm=args.dfm, speech=args.speech_model, device=args.device, aligner=aligner)
        pipe.prepare_renderer(request.size)
        anim = pipe.run(request, progress=progress(1, 0.0, 0.3))
        with _disk_full_is_clear(args.output.parent, "the video"):
            pipe.save_video(anim, args.output, size=request.size, progress=progress(1, 0.3, 0.65))
        written = {}
        if args.export_dir is not None:
            from .render.exports import export_all, offered_formats

            bar.set_postfix_str("exports")
            try:
                with _disk_full_is_clear(args.export_dir, "the exports"):
                    export_all(anim, args.export_dir, offered_formats(anim), template=pipe.rig.vertices,
                               dressing=pipe.dressing(), written=written)
            except KeyboardInterrupt:  # the video is whole and stays; each export is whole or absent
                bar.close()
                done = ", ".join(p.name for p in written.values()) or "none"
                print(f"blendtalk: interrupted during the exports; the video {args.output} is complete; written to "
                      f"{args.export_dir}: {done} (run again with --overwrite for all of them)", file=sys.stderr)
                return 130
        bar.n = 100
    finally:
        bar.close()
    timings = {k: round(v, 3) for k, v in anim.meta["timings"].items()}
    print(json.dumps({"video": str(args.output), "exports": {k: str(v) for k, v in written.items()},
                      "frames": anim.num_frames, "seconds": round(anim.duration, 3), "expression": anim.meta["expression"],
                      "speech_driver": anim.meta["speech_driver"], "timings_s": timings}, indent=1))
    return 0


def _disk_full(err: OSError) -> bool:
    """ENOSPC/EDQUOT, or numpy's short write "N requested and M written", which is how np.save meets a full disk."""
    text = str(err)
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or ("requested and" in text and "written" in text)


@contextlib.contextmanager
def _disk_full_is_clear(folder: Path, what: str):
    """Turn a full disk while writing into `folder` into a ValueError saying so (exit 2, one line).

    The writers use temporary names, so nothing half-written is left either way.
    """
    try:
        yield
    except OSError as err:
        if not _disk_full(err):
            raise
        where = str(folder) if str(folder) else "."
        raise ValueError(f"no space left on the device of {where!r} while writing {what}; "
                         "free some space or write somewhere else (nothing was left half-written)") from None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # `kill` (SIGTERM) stops a run like Ctrl-C: the writers' clean-up runs and removes their temporary files.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if on_main else None
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"blendtalk: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # ffmpeg or torch failing mid-run (not the user's input): one line, no traceback
        print(f"blendtalk: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("blendtalk: interrupted; no partial files were left", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
