"""Export an `Animation` for other tools: vertex arrays, OBJ sequences, glTF, ARKit curves, FLAME.

| key        | file (stem "animation")   | content                                                       |
|------------|---------------------------|---------------------------------------------------------------|
| npy        | animation.npy             | vertices (T, V, 3) float32, metres                            |
| obj        | animation_obj.zip         | frame_0000.obj ... one OBJ (vertices + faces) per frame       |
| glb        | animation.glb             | base mesh + one morph target per frame (head turned), weights |
| arkit_csv  | animation_arkit.csv       | 52 ARKit curves + head/eye rotations, Live Link Face layout   |
| arkit_json | animation_arkit.json      | {"fps", "names", "frames": (T, 52), "head_rotation", "gaze"}  |

npy and obj hold the head-local vertices (as `Animation.vertices`); the head's rotation is in the
ARKit files, and the glb's frames are posed with it (`head_motion.rotate_head` about
`head_motion.head_pivot(template)`).

Head and eye rotations (Live Link Face columns HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw, ...) are
radians with Live Link Face's signs, which it does not document; they were read off its own
recordings, where eyes turned toward the face's left and up (EyeLookOutLeft, EyeLookInRight and
EyeLookUp high) carry negative LeftEyeYaw/RightEyeYaw and LeftEyePitch/RightEyePitch, at angles
that only radians make anatomical (-0.58 with the look curves near 1). So yaw + turns toward the
face's right and pitch + looks or nods down, the reverse of blendtalk's yaw and eye pitch
(`Animation`); HeadRoll keeps blendtalk's sign (+ tilts toward the face's left), by the same axes.
Eye roll is 0. Both eyes get the same rotation (no vergence: the listener is far away). The JSON
export keeps blendtalk's own signs and says so in "rotation_convention".
| flame      | animation_flame.npz       | the FLAME parameters per frame, plus fps                      |

`arkit_rig_glb` writes another glTF (the app's second 3D view): the rig with its 52 ARKit units as
morph targets, played by the ARKit curves, through `gltf.write_rig_glb`, which also builds the live
page's face.

Every file is written under a hidden temporary name in its folder and renamed when complete, so
a failure never leaves a half-written file. `export_all` skips the formats the animation has no
data for (no ARKit weights, no FLAME parameters, too many frames for a glb) with a logged
warning, or raises with `strict=True`; the `write_*` functions always raise.

glTF: the rig's units and axes are glTF's (metres, +y up, +z out of the face), so no conversion.
Every frame is a morph target holding its offset from the base mesh; the animation keys target k
to weight 1 at time k/fps (STEP: frames hold, as rendered) and lasts T/fps seconds. Blender's glTF
importer turns this into one shape key per frame named `frame_0000`..., keyed over the timeline.
Both the targets (T*V*3 floats) and the key weights (T*T floats) grow with T, hence
GLB_MAX_FRAMES. No normals are stored: viewers compute them (in Blender: Shade Smooth). Audio is
not part of glTF; use the MP4.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..animation import Animation
from ..expression.head_motion import head_pivot, rotate_head
from .files import atomic_path, output_path
from .gltf import accessor, buffer_views, write_glb_file, write_rig_glb

FORMATS = ("npy", "obj", "glb", "arkit_csv", "arkit_json", "flame")
GLB_MAX_FRAMES = 1800  # 60 s at 30 fps: ~90 MB of targets for the 4278-vertex rig; Blender imports slow down past it
OBJ_ZIP_LEVEL = 1  # deflate level: the repeated faces compress well even at the fastest level
_STEM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # no separators, dots or '..': stays in out_dir
_SUFFIX = {"npy": "{}.npy", "obj": "{}_obj.zip", "glb": "{}.glb", "arkit_csv": "{}_arkit.csv",
           "arkit_json": "{}_arkit.json", "flame": "{}_flame.npz"}

# Live Link Face's CSV columns after Timecode and BlendShapeCount: its 52 blendshapes in its order
# and PascalCase spelling, then head and eye rotations (radians, its signs; 0 when the animation has none).
LIVE_LINK_FACE_NAMES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose",
    "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight",
    "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft",
    "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)
LIVE_LINK_FACE_ROTATIONS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                            "RightEyeYaw", "RightEyePitch", "RightEyeRoll")

ROTATION_CONVENTION = ("radians; rig axes +x the face's left, +y up, +z out of the face; head_rotation [pitch (+ nods "
                       "down), yaw (+ toward +x), roll (+ tilts toward +x)], R = R_yaw R_pitch R_roll about the neck; "
                       "gaze [yaw (+ toward +x), pitch (+ up)] of the eyes in the head")

_log = logging.getLogger(__name__)


def offered_formats(animation: Animation) -> list[str]:
    """The formats worth asking for on this animation: all of FORMATS, but FLAME only where the
    animation has FLAME parameters (a configured FLAME mapping), since no user of another rig can
    change its absence. The CLI and the app ask for these."""
    return [fmt for fmt in FORMATS if fmt != "flame" or animation.flame_params]


def unavailable(animation: Animation, formats: Sequence[str] = FORMATS) -> dict[str, str]:
    """{format: why it cannot be exported} for the formats this animation lacks data for."""
    _check_formats(formats)
    reasons = {}
    for fmt in formats:
        if fmt.startswith("arkit") and animation.arkit_weights is None:
            reasons[fmt] = "the animation has no ARKit weights (no mapping to the rig's blendshapes was run)"
        elif fmt == "flame" and not animation.flame_params:
            reasons[fmt] = "the animation has no FLAME parameters (it was not made on a FLAME mesh)"
        elif fmt == "glb" and animation.num_frames > GLB_MAX_FRAMES:
            reasons[fmt] = (f"{animation.num_frames} frames exceed GLB_MAX_FRAMES={GLB_MAX_FRAMES} "
                            "(one morph target per frame); use npy or obj, or a shorter clip")
    return reasons


def export_all(
    animation: Animation,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    stem: str = "animation",
    template: np.ndarray | None = None,
    strict: bool = False,
    dressing=None,
    written: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Write the requested formats into `out_dir` (created if missing); return {format: path}.

    File names are `stem` plus a fixed suffix per format (see the module table); `stem` must be a
    plain name (letters, digits, '_' or '-'), so nothing lands outside `out_dir`. template: (V, 3)
    neutral mesh used as the glb's base (default: the first frame); dressing: the rig's `FaceDressing`
    for a dressed glb (see `write_glb`). Formats the animation has no
    data for are skipped with a warning, or raise a ValueError when `strict`. written: a dict that
    fills as each file is done, so that a caller interrupted midway knows which were.
    """
    _check_formats(formats)
    if not isinstance(stem, str) or not _STEM_RE.fullmatch(stem):
        raise ValueError(f"stem must be 1-64 letters, digits, '_' or '-' (no path parts), got {stem!r}")
    _check_values(animation)  # before anything is written: no format of a broken animation is exported
    missing = unavailable(animation, formats)
    if missing and strict:
        raise ValueError("; ".join(f"cannot export {fmt}: {why}" for fmt, why in missing.items()))
    out_dir = Path(out_dir)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"cannot export into {str(out_dir)!r}: {str(folder)!r} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {} if written is None else written
    for fmt in dict.fromkeys(formats):  # keep order, drop repeats
        if fmt in missing:
            _log.warning("skipping %s export: %s", fmt, missing[fmt])
            continue
        path = out_dir / _SUFFIX[fmt].format(stem)
        if path.resolve().parent != out_dir.resolve():  # belt and braces next to the stem check
            raise ValueError(f"export name {path.name!r} would leave {str(out_dir)!r}")
        if fmt == "glb":
            written[fmt] = write_glb(animation, path, template=template, dressing=dressing)
        else:
            written[fmt] = _WRITERS[fmt](animation, path)
    return written


def write_npy(animation: Animation, path: str | os.PathLike) -> Path:
    """Vertices (T, V, 3) float32 in metres as a .npy file."""
    path = output_path(path, ".npy")
    _check_values(animation)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no suffix
        np.save(f, animation.vertices.astype(np.float32, copy=False), allow_pickle=False)
    return path


def write_obj_zip(animation: Animation, path: str | os.PathLike) -> Path:
    """A zip of one Wavefront OBJ per frame, frame_0000.obj ..., each with all V vertices and F faces."""
    path = output_path(path, ".zip")
    _check_values(animation)
    verts, tri = animation.vertices, _triangles(animation)
    digits = max(4, len(str(len(verts) - 1)))
    # %-formatting a whole frame at once is ~10x faster than np.savetxt; faces are the same every frame.
    faces = ("f %d %d %d\n" * len(tri)) % tuple((tri + 1).ravel().tolist())  # OBJ indices start at 1
    vertex_fmt = "v %.6f %.6f %.6f\n" * verts.shape[1]  # micrometre precision in metres
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=OBJ_ZIP_LEVEL) as z:
        for t, frame in enumerate(verts):
            header = f"# blendtalk frame {t} of {len(verts)} at {animation.fps:g} fps, metres\n"
            z.writestr(f"frame_{t:0{digits}d}.obj", header + vertex_fmt % tuple(frame.ravel().tolist()) + faces)
    return path


def write_arkit_csv(animation: Animation, path: str | os.PathLike) -> Path:
    """The 52 ARKit curves in Live Link Face's CSV layout (Unreal's LiveLinkFace importer, Blender add-ons).

    Columns: Timecode (HH:MM:SS:FF.mmm, FF counted at the animation's fps), BlendShapeCount (61),
    the 52 LIVE_LINK_FACE_NAMES, the 9 LIVE_LINK_FACE_ROTATIONS (`live_link_rotations`). Curves are matched to
    `animation.arkit_names` case-insensitively; curves the animation lacks are 0; values are
    clipped to [0, 1], the range ARKit coefficients have.
    """
    path = output_path(path, ".csv")
    _check_values(animation)
    columns = _live_link_columns(animation)  # (T, 52)
    rotations = live_link_rotations(animation.num_frames, animation.head_rotation, animation.gaze)
    columns = np.concatenate([np.clip(columns, 0.0, 1.0), rotations], 1)  # (T, 61)
    count = len(LIVE_LINK_FACE_NAMES) + len(LIVE_LINK_FACE_ROTATIONS)
    lines = [",".join(("Timecode", "BlendShapeCount") + LIVE_LINK_FACE_NAMES + LIVE_LINK_FACE_ROTATIONS)]
    for t, row in enumerate(columns):
        lines.append(f"{_timecode(t, animation.fps)},{count}," + ",".join(f"{v:.6f}" for v in row))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def live_link_rotations(num_frames: int, head_rotation: np.ndarray | None = None,
                        gaze: np.ndarray | None = None) -> np.ndarray:
    """blendtalk's head_rotation (T, 3) [pitch, yaw, roll] and gaze (T, 2) [yaw, pitch] -> (T, 9)
    in LIVE_LINK_FACE_ROTATIONS order with Live Link Face's signs (module docstring); 0 where None."""
    out = np.zeros((num_frames, len(LIVE_LINK_FACE_ROTATIONS)), dtype=np.float32)
    if head_rotation is not None:
        pitch, yaw, roll = np.asarray(head_rotation, dtype=np.float32).reshape(num_frames, 3).T
        out[:, 0], out[:, 1], out[:, 2] = -yaw, pitch, roll
    if gaze is not None:
        yaw, pitch = np.asarray(gaze, dtype=np.float32).reshape(num_frames, 2).T
        for first in (3, 6):  # left eye, right eye: the same rotation
            out[:, first], out[:, first + 1] = -yaw, -pitch
    return out


def write_arkit_json(animation: Animation, path: str | os.PathLike) -> Path:
    """{"fps": float, "names": [K names], "frames": [[K weights] * T]}, names as in the animation,
    plus "head_rotation" [[pitch, yaw, roll] * T] and "gaze" [[yaw, pitch] * T] in radians (null
    when the animation has none) and "rotation_convention", a line saying the signs."""
    path = output_path(path, ".json")
    _check_values(animation)
    weights = _arkit(animation)

    def rounded(a):
        return None if a is None else np.round(a.astype(np.float64), 6).tolist()

    doc = {"fps": float(animation.fps), "names": list(animation.arkit_names), "frames": rounded(weights),
           "head_rotation": rounded(animation.head_rotation), "gaze": rounded(animation.gaze),
           "rotation_convention": ROTATION_CONVENTION}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    return path


def write_flame(animation: Animation, path: str | os.PathLike) -> Path:
    """The FLAME parameters (e.g. 'expr' (T, n), 'jaw_pose' (T, 3)) and 'fps' as an .npz (no pickle)."""
    path = output_path(path, ".npz")
    _check_values(animation)
    if not animation.flame_params:
        raise ValueError("the animation has no FLAME parameters (it was not made on a FLAME mesh)")
    arrays = {}
    for name, value in animation.flame_params.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)) or name == "fps":
            raise ValueError(f"FLAME parameter names must be identifiers other than 'fps', got {name!r}")
        a = np.asarray(value)
        if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
            raise ValueError(f"FLAME parameter {name!r} must be finite numbers, got {a.dtype} {a.shape}")
        arrays[name] = a
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, fps=np.float32(animation.fps), **arrays)
    return path


def write_glb(
    animation: Animation,
    path: str | os.PathLike,
    template: np.ndarray | None = None,
    interpolation: str = "STEP",
    max_frames: int = GLB_MAX_FRAMES,
    dressing=None,
) -> Path:
    """A binary glTF 2.0: base mesh (template (V, 3), default frame 0) + T morph targets + animation.

    dressing: the rig's `FaceDressing`, to export the dressed face as the video shows it (teeth,
    tongue, lashes and eyes following the face and `animation.gaze`, brows and lips in the vertex
    colours, COLOR_0) instead of the bare face.

    The animation channel drives the mesh node's morph weights: at time t/fps target t has weight
    1 and all others 0; the clip lasts T/fps seconds (the last frame is held). interpolation: 'STEP'
    (hold each frame) or 'LINEAR' (blend neighbours, smoother when a viewer plays at another rate).
    """
    path = output_path(path, ".glb")
    _check_values(animation)
    if interpolation not in ("STEP", "LINEAR"):
        raise ValueError(f"interpolation must be 'STEP' or 'LINEAR', got {interpolation!r}")
    verts = animation.vertices  # (T, V, 3)
    n_frames, n_verts = verts.shape[:2]
    if n_frames > max_frames:
        raise ValueError(f"{n_frames} frames exceed max_frames={max_frames} (one morph target per frame)")
    base = verts[0] if template is None else np.asarray(template, dtype=np.float32)
    if base.shape != (n_verts, 3) or not np.isfinite(base).all():
        raise ValueError(f"template must be finite with shape ({n_verts}, 3), got {base.shape}")
    base, verts, tri, colours = _glb_frames(animation, base, dressing)
    n_verts = len(base)
    deltas = (verts - base).astype(np.float32)  # (T, V, 3)
    # Key k shows target k; one more key at T/fps holds the last frame, so the clip lasts T/fps
    # seconds, as long as the video and its audio, and loops in step with them.
    times = (np.arange(n_frames + 1) / animation.fps).astype(np.float32)  # (T + 1,)
    weights = np.eye(n_frames + 1, n_frames, dtype=np.float32)  # (T + 1 keys, T targets)
    weights[-1, -1] = 1

    blobs = [base.astype(np.float32), tri, deltas, times, weights]
    if colours is not None:
        blobs.append(colours.astype(np.float32))
    views, offset = buffer_views(blobs, (34962, 34963, 34962, None, None, 34962))  # ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER
    views[2]["byteStride"] = 12  # T accessors share this view; glTF then requires an explicit stride
    lo, hi = deltas.min(1), deltas.max(1)  # (T, 3): POSITION accessors must carry min/max
    accessors = [
        accessor(0, 0, n_verts, "VEC3", base.min(0), base.max(0)),
        {"bufferView": 1, "componentType": 5125, "count": tri.size, "type": "SCALAR"},  # UNSIGNED_INT
        *(accessor(2, t * n_verts * 12, n_verts, "VEC3", lo[t], hi[t]) for t in range(n_frames)),
        accessor(3, 0, len(times), "SCALAR", times[:1], times[-1:]),
        accessor(4, 0, weights.size, "SCALAR"),
    ]
    primitive = {"attributes": {"POSITION": 0}, "indices": 1, "mode": 4,
                 "targets": [{"POSITION": 2 + t} for t in range(n_frames)]}
    if colours is not None:
        accessors.append(accessor(5, 0, n_verts, "VEC3"))
        primitive["attributes"]["COLOR_0"] = len(accessors) - 1
        primitive["material"] = 0
    names = [f"frame_{t:0{max(4, len(str(n_frames - 1)))}d}" for t in range(n_frames)]
    doc = {
        "asset": {"version": "2.0", "generator": "blendtalk",
                  "extras": {"fps": float(animation.fps), "frames": n_frames}},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [{
            "name": "face",
            "primitives": [primitive],
            "weights": [0.0] * n_frames,  # at rest: the base mesh
            "extras": {"targetNames": names},  # read by Blender's importer as shape-key names
        }],
        "animations": [{
            "name": "speech",
            "samplers": [{"input": 2 + n_frames, "output": 3 + n_frames, "interpolation": interpolation}],
            "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}],
        }],
        "accessors": accessors,
        **({"materials": [{"name": "dressed face", "pbrMetallicRoughness": {
            "baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": 0.6}}]} if colours is not None else {}),
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    return write_glb_file(path, doc, blobs, offset)


def _glb_frames(animation: Animation, base: np.ndarray, dressing):
    """The glb's base (N, 3), posed frames (T, N, 3), triangles (F, 3) uint32 and linear colours
    (N, 3) or None: the face, or the dressed face when `dressing` is given, turned as rendered."""
    verts, n_verts = animation.vertices, len(base)
    pivot = head_pivot(base)  # of the face, as the renderer turns it
    tri, colours = _triangles(animation).astype(np.uint32), None
    if dressing is not None:
        if dressing.num_face_vertices != n_verts:
            raise ValueError(f"the dressing is for V={dressing.num_face_vertices} face vertices, the animation has {n_verts}")
        base, verts = dressing(base), dressing(verts, animation.gaze)  # (V + H, 3), (T, V + H, 3)
        tri = dressing.triangles.astype(np.uint32)
        import torch

        from .shading import srgb_to_linear

        colours = srgb_to_linear(torch.as_tensor(dressing.colours)).numpy()  # (V + H, 3): glTF vertex colours are linear
    if animation.head_rotation is not None:  # frames posed as rendered; the base stays at rest
        verts = rotate_head(verts, animation.head_rotation, pivot)  # (T, V, 3)
    return base, verts, tri, colours


def arkit_rig_glb(animation: Animation, path: str | os.PathLike, rig, dressing=None) -> Path:
    """The rig with its 52 ARKit blendshapes as morph targets, played by `animation.arkit_weights`
    (T, 52): 1.0 MB bare, 1.6 MB dressed, unlike `write_glb`'s morph target per frame. The head stays still, and the
    curves are the ARKit mapping's, without the residual detail the video shows. dressing: the rig's
    `FaceDressing`, for teeth, eyes, lashes, hair and the painted colours (its parts follow each unit)."""
    return write_rig_glb(path, rig, dressing, _arkit(animation), animation.fps)


def _timecode(frame: int, fps: float) -> str:
    """Frame index -> 'HH:MM:SS:FF.mmm', FF the frame within the second at `fps` (+ a fraction)."""
    seconds = math.floor(frame / fps + 1e-9)
    within = frame - seconds * fps  # frames into this second, fractional for non-integer fps
    whole = int(within + 1e-9)
    milli = min(999, round((within - whole) * 1000))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}:{whole:02d}.{milli:03d}"


def _arkit(animation: Animation) -> np.ndarray:
    if animation.arkit_weights is None:
        raise ValueError("the animation has no ARKit weights (no mapping to the rig's blendshapes was run)")
    w = np.asarray(animation.arkit_weights, dtype=np.float32)
    if not np.isfinite(w).all():
        raise ValueError("ARKit weights contain NaN or infinite values")
    return w


def _live_link_columns(animation: Animation) -> np.ndarray:
    """ARKit weights (T, K) -> (T, 52) in LIVE_LINK_FACE_NAMES order; absent curves are 0."""
    weights = _arkit(animation)
    column = {name.lower(): i for i, name in enumerate(LIVE_LINK_FACE_NAMES)}
    out = np.zeros((len(weights), len(LIVE_LINK_FACE_NAMES)), dtype=np.float32)
    seen = set()
    for k, name in enumerate(animation.arkit_names):
        key = name.lower()
        if key not in column:
            raise ValueError(f"{name!r} is not an ARKit blendshape name; expected names like {LIVE_LINK_FACE_NAMES[:3]}")
        if key in seen:
            raise ValueError(f"ARKit blendshape {name!r} appears twice in arkit_names")
        seen.add(key)
        out[:, column[key]] = weights[:, k]
    return out


def _triangles(animation: Animation) -> np.ndarray:
    tri = animation.triangles
    n = animation.vertices.shape[1]
    if len(tri) == 0 or tri.min() < 0 or tri.max() >= n:
        raise ValueError(f"triangles must be a non-empty (F, 3) array of indices below V={n}")
    return tri


def _check_values(animation: Animation) -> None:
    """Finite vertices and a usable frame rate: NaN or inf would be written into the file as text or bits."""
    fps = animation.fps
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not 0 < fps < math.inf:
        raise ValueError(f"fps must be a finite number of frames per second > 0, got {fps!r}")
    if not np.isfinite(animation.vertices).all():
        raise ValueError("vertices contain NaN or infinite values; the animation is broken, nothing was exported")


def _check_formats(formats: Sequence[str]) -> None:
    if isinstance(formats, str):
        raise ValueError(f"formats must be a sequence of names, e.g. ('npy',), got the string {formats!r}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export formats {bad}; choose from {', '.join(FORMATS)}")


_WRITERS = {"npy": write_npy, "obj": write_obj_zip, "arkit_csv": write_arkit_csv,
            "arkit_json": write_arkit_json, "flame": write_flame}
