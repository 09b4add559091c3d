"""Interactive Plotly figures: the animated face mesh, a single pose, and the blendshape weight curves.

The animation is one `Mesh3d` trace whose triangles (i, j, k) are sent once; each frame of the
figure updates only x, y, z of trace 0 (`go.Frame(traces=[0])`: plotly.js merges a frame's trace
into the existing one, so i, j, k, colours and lighting carry over). Mesh3d is not an "animatable"
trace type, so frames are shown with `redraw=True`. A dressed rig's neck travels in that trace too
(its vertices after the face's, moved with it: one surface, shaded without a seam); the scene's box
is framed on the face, and plotly cuts the neck's shoulders at the box, as the video's frame does.

Payload: coordinates are sent as int16 in units of `COORD_QUANTUM` (0.01 mm), relative to the
centre of the mesh's bounding box. Plotly serialises numpy arrays as base64 typed arrays, so a
coordinate costs 2 bytes (about 3 characters of JSON: base64, with plotly escaping '/') instead of
about 7 as decimal text; 150 frames of the 4278-vertex rig are about 6 MB. The scene's units are
therefore 0.01 mm; the axes are hidden and hover is off, so only shape and proportion show, with
aspect ratio 'data'. `figure_html` sends less again: only the vertices that move, as int8 steps
from the first frame, rebuilt into frames in the browser (about 1.3 MB for 90 frames).

Plotly's scene light position is in camera space (+x right, +y up, +z toward the viewer), like
`RenderConfig.lights`, so the key light stays up-left-front however the face is turned.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..animation import Animation
from ..constants import FPS
from ..face.dressing import FaceDressing
from .renderer import RenderConfig, dressing_config
from .undressed import plain_dressing
from ..face.rig import FaceRig

MAX_FRAMES = 150  # frames in an animation figure by default: about 6 MB of JSON for the rig
COORD_QUANTUM = 1e-5  # m per int16 unit (0.01 mm): far finer than a screen pixel; int16 spans +-0.33 m
_INT16_LIMIT = 32_000  # largest |coordinate| in units; a bigger mesh gets a coarser quantum
RANGE_MARGIN = 0.08  # fraction of the reference extent added around it, so poses that move stay in view
MAX_ARKIT_CURVES = 10  # ARKit units drawn in the weights figure: the most active ones stay readable
LIGHT_DISTANCE = 1e5  # scene units: plotly's largest light distance, i.e. a directional light
CAMERA_EYE = (0.0, 0.12, 1.9)  # scene-normalised; from the front (+z), slightly above, like the renderer
_STYLE = RenderConfig()  # colours and key light shared with the video renderer
LIGHTING = dict(ambient=0.35, diffuse=0.75, specular=0.12, roughness=0.6, fresnel=0.05)  # soft skin


def _rgb(colour) -> str:
    """sRGB triple in [0, 1] -> 'rgb(r, g, b)'."""
    r, g, b = (int(round(255 * float(c))) for c in colour)
    return f"rgb({r},{g},{b})"


def _as_numpy(x) -> np.ndarray:
    """numpy or torch (any device) -> numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_mesh(vertices: np.ndarray, triangles, frames: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate (T, V, 3) (frames=True) or (V, 3) vertices and (F, 3) triangles; returns float64, int64."""
    want = "(T, V, 3) with T > 0" if frames else "(V, 3)"
    ndim = 3 if frames else 2
    if vertices.ndim != ndim or vertices.shape[-1] != 3 or vertices.shape[0] == 0 or vertices.shape[-2] < 3:
        raise ValueError(f"vertices must have shape {want} and at least 3 vertices, got {vertices.shape}")
    if not np.issubdtype(vertices.dtype, np.number) or not np.isfinite(vertices).all():
        raise ValueError(f"vertices of shape {vertices.shape} must be finite numbers")
    if triangles is None:
        raise ValueError("triangles (F, 3) are required with a vertex array")
    tri = _as_numpy(triangles)
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0 or not np.issubdtype(tri.dtype, np.integer):
        raise ValueError(f"triangles must be integer indices of shape (F, 3) with F > 0, got {tri.shape} {tri.dtype}")
    num_vertices = vertices.shape[-2]
    if tri.min() < 0 or tri.max() >= num_vertices:
        raise ValueError(
            f"triangle indices must lie in [0, {num_vertices}), got [{int(tri.min())}, {int(tri.max())}]"
        )
    return vertices.astype(np.float64, copy=False), tri.astype(np.int64, copy=False)


class _Scene:
    """Scene coordinates: int16 units of `step` metres, relative to `centre`, with fixed axis ranges.

    Fixed ranges (the reference's box plus a margin, grown to cover every shown pose) keep the view
    from rescaling as the mouth opens.
    """

    def __init__(self, reference: np.ndarray, shown: np.ndarray):
        lo, hi = reference.min(0), reference.max(0)  # (3,)
        self.centre = (lo + hi) / 2
        margin = RANGE_MARGIN * float(np.linalg.norm(hi - lo))
        lo = np.minimum(lo - margin, shown.reshape(-1, 3).min(0))
        hi = np.maximum(hi + margin, shown.reshape(-1, 3).max(0))
        reach = float(np.max(np.abs(np.stack([lo, hi]) - self.centre)))
        self.step = max(COORD_QUANTUM, reach / _INT16_LIMIT)
        self.ranges = [(float(a), float(b)) for a, b in zip(self.units(lo), self.units(hi))]

    def units(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) metres -> (..., 3) int16 scene units (clamped: parts far outside the view, a neck's shoulders, stay in range)."""
        return np.clip(np.round((points - self.centre) / self.step), -32767, 32767).astype(np.int16)


def _indices(triangles: np.ndarray, num_vertices: int) -> dict[str, np.ndarray]:
    """i, j, k in the smallest integer type that holds them (base64 in the JSON)."""
    dtype = np.uint16 if num_vertices <= np.iinfo(np.uint16).max else np.int32
    return {name: np.ascontiguousarray(triangles[:, c], dtype=dtype) for c, name in enumerate("ijk")}


@dataclass(frozen=True, eq=False)
class RigLook:
    """How figures dress a rig's mesh, computed once by `rig_look` (about 30 ms) and reusable.

    lip_tint: (V,) in [0, 1], 0 skin to 1 lip colour (the renderer's lip region). eyes: the
    attached parts shown at rest (eyeballs and lashes of a dressed rig, else eyeballs for open eye
    sockets) as (vertices (E, 3) metres, triangles (G, 3), sRGB colours (E, 3)), or None. The teeth
    and tongue are left out: hidden at rest, and they keep the payload lean. template: (V, 3) the
    rig's neutral vertices, which fix the framing. brow: (V,) in [0, 1] painted brow, 0 skin to 1 brow colour.
    neck: the dressing's neck as part of the face's own trace (one surface: no seam in its shading),
    moved with every frame of the face, or None: `Neck`.
    """

    lip_tint: np.ndarray
    eyes: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    template: np.ndarray
    brow: np.ndarray | None = None
    neck: "Neck | None" = None


@dataclass(frozen=True, eq=False)
class Neck:
    """A dressing's neck appended to the face mesh: N vertices after the face's V.

    rest: (N, 3) m at rest; anchor: (N,) face vertex each follows (-1: none); weight: (N,) share of
    its anchor's displacement it takes; triangles: (G, 3) over the face's V vertices then these N
    (the top ring is the face's own boundary). The neck carries no unit deltas, so this is exactly
    what `FaceDressing` does with it.
    """

    rest: np.ndarray
    anchor: np.ndarray
    weight: np.ndarray
    triangles: np.ndarray

    def attach(self, vertices: np.ndarray, template: np.ndarray) -> np.ndarray:
        """Face vertices (..., V, 3) and the face at rest (V, 3) -> (..., V + N, 3) with the neck."""
        follow = self.anchor >= 0
        neck = np.broadcast_to(self.rest, (*vertices.shape[:-2], *self.rest.shape)).copy()
        neck[..., follow, :] += self.weight[follow, None] * (vertices[..., self.anchor[follow], :] - template[self.anchor[follow]])
        return np.concatenate([vertices, neck], axis=-2)


def rig_look(rig: FaceRig) -> RigLook:
    """The lip tint and eyeballs of `rig`, as the video renderer draws them."""
    if getattr(rig, "dressing", None):
        return _dressed_look(rig)
    colours, eyes = plain_dressing(rig, _STYLE)  # (V, 3) sRGB, eyeballs or None
    tint = np.subtract(_STYLE.lips, _STYLE.skin)
    # The renderer's colours are skin + t * (lips - skin); recover t and let a colour scale apply it.
    amount = np.clip((colours - np.array(_STYLE.skin)) @ tint / float(tint @ tint), 0, 1).astype(np.float32)
    return RigLook(lip_tint=amount, eyes=eyes, template=np.asarray(rig.vertices, dtype=np.float64))


def _dressed_look(rig: FaceRig) -> RigLook:
    """RigLook of a rig with a dressing: lip tint, painted brow, and its eyes, lashes and hair at rest."""
    from ..face.dressing import lip_tint

    dressing = FaceDressing.for_rig(rig, dressing_config(_STYLE))
    rest = dressing.neutral()  # (V + H + 2E, 3)
    names = [n for n in ("lashes", "hair", "left_eye", "right_eye") if n in dressing.ranges]
    verts, tris, cols, offset = [], [], [], 0
    for name in names:
        a, b = dressing.ranges[name]
        ta, tb = dressing.triangle_ranges[name]
        verts.append(rest[a:b])
        tris.append(dressing.triangles[ta:tb] - a + offset)
        cols.append(dressing.colours[a:b])
        offset += b - a
    eyes = (np.concatenate(verts), np.concatenate(tris), np.concatenate(cols)) if names else None
    brow = np.clip(dressing_config(_STYLE).brow_opacity * rig.dressing["face_brow"], 0, 1).astype(np.float32)
    tint = lip_tint(rig.masks["lips"], rig.triangles).astype(np.float32) if "lips" in rig.masks else np.zeros(len(brow), np.float32)
    return RigLook(lip_tint=tint, eyes=eyes, template=np.asarray(rig.vertices, dtype=np.float64), brow=brow,
                   neck=_neck(dressing))


def _neck(dressing: FaceDressing) -> Neck | None:
    """The dressing's neck without its copies of the face's boundary (its triangles use the face's own)."""
    if "neck" not in dressing.ranges:
        return None
    a, b = dressing.ranges["neck"]
    ta, tb = dressing.triangle_ranges["neck"]
    tri = dressing.triangles[ta:tb]
    face_v = dressing.num_face_vertices
    used = np.unique(tri[tri >= face_v])  # the copies are not used
    index = np.arange(dressing.num_vertices)
    index[used] = face_v + np.arange(len(used))
    h = used - face_v  # rows of the helper buffers
    return Neck(rest=dressing.neutral()[used].astype(np.float64), anchor=dressing.helper_anchor.numpy()[h],
                weight=dressing.anchor_weight.numpy()[h].astype(np.float64), triangles=index[tri])


def _look(rig: FaceRig | RigLook | None, num_vertices: int) -> RigLook | None:
    look = rig_look(rig) if isinstance(rig, FaceRig) else rig
    if look is not None and not isinstance(look, RigLook):
        raise ValueError(f"rig must be a FaceRig, a RigLook from rig_look(rig) or None, got {type(rig).__name__}")
    if look is not None and len(look.template) != num_vertices:
        raise ValueError(f"rig has {len(look.template)} vertices but the mesh has {num_vertices}")
    return look


def _with_neck(verts: np.ndarray, tri: np.ndarray, look: RigLook | None) -> tuple[np.ndarray, np.ndarray]:
    """The rig's face vertices (..., V, 3) and triangles (F, 3) with the look's neck attached
    (..., V + N, 3), (F + G, 3); unchanged without one."""
    if look is None or look.neck is None:
        return verts, tri
    return look.neck.attach(verts, look.template), np.concatenate([tri, look.neck.triangles])


def _dressing(look: RigLook | None, scene: _Scene) -> tuple[dict[str, Any], list[go.Mesh3d]]:
    """Colour keywords for the face trace (a skin-to-lip intensity when the mesh is the rig, skin on
    its neck) and static eyeball traces for the rig's open eye sockets."""
    skin = np.zeros(0 if look is None or look.neck is None else len(look.neck.rest), np.float32)  # (N,)
    if look is None or not look.lip_tint.any():
        keywords = dict(color=_rgb(_STYLE.skin))
    elif look.brow is not None:
        # One intensity per vertex keeps the payload small: 0 brow, 0.5 skin, 1 lips.
        brow_colour = dressing_config(_STYLE).brow
        keywords = dict(
            intensity=np.concatenate([0.5 + 0.5 * look.lip_tint - 0.5 * look.brow, skin + 0.5]), intensitymode="vertex", cmin=0.0, cmax=1.0,
            showscale=False, colorscale=[[0.0, _rgb(brow_colour)], [0.5, _rgb(_STYLE.skin)], [1.0, _rgb(_STYLE.lips)]],
        )
    else:
        keywords = dict(
            intensity=np.concatenate([look.lip_tint, skin]), intensitymode="vertex", cmin=0.0, cmax=1.0, showscale=False,
            colorscale=[[0.0, _rgb(_STYLE.skin)], [1.0, _rgb(_STYLE.lips)]],
        )
    traces = []
    if look is not None and look.eyes is not None:
        verts, tris, eye_colours = look.eyes
        xyz = scene.units(np.asarray(verts, dtype=np.float64))
        traces.append(go.Mesh3d(
            x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], **_indices(np.asarray(tris), len(verts)),
            vertexcolor=[_rgb(c) for c in eye_colours], flatshading=False, hoverinfo="skip",
            lighting=LIGHTING, lightposition=_light_position(), name="eyes", showlegend=False,
        ))
    return keywords, traces


def _light_position() -> dict[str, float]:
    x, y, z = np.array(_STYLE.lights[0]) / np.linalg.norm(_STYLE.lights[0]) * LIGHT_DISTANCE
    return dict(x=float(x), y=float(y), z=float(z))


def _face_trace(xyz: np.ndarray, triangles: np.ndarray, colour: dict[str, Any]) -> go.Mesh3d:
    return go.Mesh3d(
        x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], **_indices(triangles, len(xyz)), **colour,
        flatshading=False, lighting=LIGHTING, lightposition=_light_position(), hoverinfo="skip", name="face",
    )


def _scene_layout(scene: _Scene, height: int, title: str | None) -> dict[str, Any]:
    axis = dict(visible=False, showbackground=False, showgrid=False, zeroline=False, autorange=False)
    background = _rgb(_STYLE.background)
    return dict(
        title=dict(text=title, font=dict(color="white")) if title else None,
        height=height,
        margin=dict(l=0, r=0, t=40 if title else 0, b=0),
        paper_bgcolor=background,
        plot_bgcolor=background,
        template="none",  # no default template: a smaller payload, and nothing overrides the dark scene
        uirevision="face",  # keep the user's camera when the app replaces the figure
        scene=dict(
            xaxis=dict(axis, range=scene.ranges[0]),
            yaxis=dict(axis, range=scene.ranges[1]),
            zaxis=dict(axis, range=scene.ranges[2]),
            aspectmode="data",
            bgcolor=background,
            # Not "turntable": plotly.js's turntable keeps +z up and shows this y-up face upside down.
            dragmode="orbit",
            camera=dict(
                eye=dict(zip("xyz", CAMERA_EYE)), up=dict(x=0, y=1, z=0), center=dict(x=0, y=0, z=0),
                projection=dict(type="perspective"),
            ),
            uirevision="face",
        ),
    )


def mesh_figure(
    vertices,
    triangles,
    *,
    rig: FaceRig | RigLook | None = None,
    reference=None,
    title: str | None = None,
    height: int = 520,
) -> go.Figure:
    """A static, lit Plotly mesh of one pose, seen from the front.

    vertices: (V, 3) metres, numpy or torch. triangles: (F, 3) int. rig: the `FaceRig` the mesh
    belongs to (its V must match), for lip colour and eyeballs; pass `rig_look(rig)` instead when
    drawing many poses, to dress it once. reference: (V', 3) vertices that fix the centre and axis
    ranges (default: the rig's template, else the pose itself), so that poses of one rig shown one
    after another keep the same framing. Builds in about 15 ms with a RigLook (5 ms bare).
    """
    verts, tri = _check_mesh(_as_numpy(vertices), triangles, frames=False)
    look = _look(rig, len(verts))
    if reference is None:
        reference = look.template if look is not None else verts
    ref = _as_numpy(reference).astype(np.float64)
    if ref.ndim != 2 or ref.shape[1] != 3 or len(ref) == 0:
        raise ValueError(f"reference must have shape (V, 3), got {ref.shape}")
    scene = _Scene(ref, verts)  # framed on the face: a neck reaches out of the view's box, as out of the video's frame
    colour, extras = _dressing(look, scene)
    verts, tri = _with_neck(verts, tri, look)
    return go.Figure([_face_trace(scene.units(verts), tri, colour), *extras], layout=_scene_layout(scene, height, title))


def frame_indices(num_frames: int, max_frames: int) -> np.ndarray:
    """Indices of at most `max_frames` frames spread evenly over [0, num_frames - 1], both ends kept.

    With max_frames <= num_frames the spacing is at least one frame, so the rounded indices are
    distinct and increasing.
    """
    if num_frames < 1 or max_frames < 1:
        raise ValueError(f"num_frames and max_frames must be >= 1, got {num_frames} and {max_frames}")
    count = min(num_frames, max_frames)
    return np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64)


def animation_figure(
    animation_or_vertices,
    triangles=None,
    fps: float | None = None,
    max_frames: int = MAX_FRAMES,
    *,
    rig: FaceRig | RigLook | None = None,
    title: str | None = None,
    height: int = 560,
) -> go.Figure:
    """An animated, lit Plotly mesh with play/pause buttons and a time slider (seconds).

    An Animation with `head_rotation` is shown with its head (and eyeballs) turned about the neck.

    animation_or_vertices: an `Animation` (its triangles and fps are used; don't pass them), or
    vertices (T, V, 3) metres, numpy or torch, with triangles (F, 3) and fps (default FPS).
    max_frames: at most this many frames, spread evenly over the clip (first and last kept); each
    is shown for the real time between them, so playback runs at the clip's speed where the
    browser keeps up. rig: the `FaceRig` (or its `rig_look`) the mesh belongs to, for lip colour,
    eyeballs and framing.
    The payload is about 3 characters per coordinate per frame (6.1 MB for the rig at 150 frames).
    """
    if isinstance(animation_or_vertices, Animation):
        if triangles is not None or fps is not None:
            raise ValueError("pass triangles and fps only with a vertex array; an Animation carries its own")
        animation = animation_or_vertices
        vertices, triangles, fps = animation.vertices, animation.triangles, animation.fps
    else:
        vertices = _as_numpy(animation_or_vertices)
        fps = FPS if fps is None else fps
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
    verts, tri = _check_mesh(np.asarray(vertices), triangles, frames=True)
    num_frames = len(verts)
    picks = frame_indices(num_frames, max_frames)
    shown = verts[picks]  # (n, V, 3)
    look = _look(rig, verts.shape[1])
    # The head stays still here (head and eye motion are in the video and the exports): the viewer
    # turns it at will, and the eyes, lashes and hair are sent once instead of in every frame.
    scene = _Scene(look.template if look is not None else verts[0], shown)
    colour, extras = _dressing(look, scene)
    shown, tri = _with_neck(shown, tri, look)  # (n, V + N, 3)
    xyz = scene.units(shown)  # (n, V + N, 3) int16

    times = picks / fps  # (n,) s
    # One frame lasts the mean real-time gap between shown frames: the last lands at its real time.
    step_ms = 1000 * (picks[-1] / (len(picks) - 1) if len(picks) > 1 else 1) / fps
    names = [str(k) for k in range(len(picks))]
    def moved(p):
        return go.Mesh3d(x=np.ascontiguousarray(p[:, 0]), y=np.ascontiguousarray(p[:, 1]), z=np.ascontiguousarray(p[:, 2]))

    frames = [go.Frame(data=[moved(p)], traces=[0], name=name) for name, p in zip(names, xyz)]
    layout = _scene_layout(scene, height, title)
    still = dict(frame=dict(duration=0, redraw=True), mode="immediate", transition=dict(duration=0))
    layout["updatemenus"] = [dict(
        type="buttons", direction="left", x=0.02, y=0.02, xanchor="left", yanchor="bottom",
        pad=dict(r=8, t=8), showactive=False, bgcolor="#3a3d46", font=dict(color="white"),
        buttons=[
            dict(label="▶ play", method="animate", args=[None, dict(
                frame=dict(duration=step_ms, redraw=True), fromcurrent=True,
                transition=dict(duration=0), mode="immediate")]),
            dict(label="❚❚ pause", method="animate", args=[[None], dict(still, frame=dict(duration=0, redraw=False))]),
        ],
    )]
    layout["sliders"] = [dict(
        active=0, x=0.2, len=0.78, y=0.02, yanchor="bottom", pad=dict(t=8, b=8),
        # Per-step labels would overlap (up to 150 of them): draw them transparent and show the
        # current time instead.
        font=dict(color="rgba(0,0,0,0)"), tickcolor="rgba(255,255,255,0.3)", ticklen=3,
        currentvalue=dict(prefix="t = ", suffix=" s", font=dict(color="white")),
        steps=[dict(label=f"{t:.2f}", method="animate", args=[[name], still]) for name, t in zip(names, times)],
    )]
    layout["margin"]["b"] = 70
    return go.Figure(data=[_face_trace(xyz[0], tri, colour), *extras], layout=layout, frames=frames)


def figure_html(figure: go.Figure, height: int | None = None, include_plotlyjs: str | bool = "cdn") -> str:
    """A self-contained `<iframe>` that shows `figure` with its animation frames, for `gr.HTML`.

    Gradio's `gr.Plot` (6.x) hands plotly.js only data, layout and config (`Plotly.react`), so an
    animation figure's frames are dropped there and play/slider do nothing; inside this iframe
    `Plotly.newPlot` + `addFrames` run as in a notebook. include_plotlyjs: "cdn" loads plotly.js
    from its CDN in the viewer's browser; True inlines it (about 4.6 MB, works offline).
    height: of the iframe in px; default the figure's height plus room for the page margin.
    The frames of an `animation_figure` travel compactly (`_compact_frames`) and are rebuilt in the browser.
    """
    height = height or (figure.layout.height or 580) + 20
    figure, script = _compact_frames(figure)
    page = figure.to_html(include_plotlyjs=include_plotlyjs, full_html=True, auto_play=False,
                          config=dict(displaylogo=False), post_script=script)
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{height}px;border:0" '
            'sandbox="allow-scripts"></iframe>')


def _compact_frames(figure: go.Figure) -> tuple[go.Figure, str | None]:
    """(the figure without its frames, a script that rebuilds them in the browser), or (figure, None).

    An `animation_figure`'s frames each resend all V x 3 int16 coordinates of trace 0, though the
    back of the head never moves and a frame is viewed at about 0.4 mm per pixel. Here only the
    vertices that move travel, once per frame, as int8 offsets from the first frame in steps of
    `step` scene units (the smallest that holds the largest offset; sub-pixel in the viewer), which
    cuts the page about 4x (3.8 -> about 1 MB for 90 frames of the rig).
    """
    frames = figure.frames
    if not frames or any(list(f.traces or []) != [0] or len(f.data) != 1 for f in frames):
        return figure, None
    base = np.stack([np.asarray(getattr(figure.data[0], c), dtype=np.int32) for c in "xyz"], axis=-1)  # (V, 3)
    shown = np.stack([np.stack([np.asarray(getattr(f.data[0], c), dtype=np.int32) for c in "xyz"], axis=-1)
                      for f in frames])  # (n, V, 3)
    if shown.shape[1:] != base.shape:
        return figure, None
    delta = shown - base  # (n, V, 3) scene units
    step = max(1, int(np.ceil(np.abs(delta).max() / 127)))
    offsets = np.round(delta / step).astype(np.int8)  # (n, V, 3)
    moving = np.flatnonzero(np.abs(offsets).max(axis=(0, 2)) > 0).astype("<u4")  # (M,)
    packed = np.ascontiguousarray(offsets[:, moving])  # (n, M, 3)
    script = (
        "const gd = document.getElementById('{plot_id}');"
        "const raw = s => Uint8Array.from(atob(s), c => c.charCodeAt(0)).buffer;"
        f"const idx = new Uint32Array(raw('{base64.b64encode(moving.tobytes()).decode()}'));"
        f"const q = new Int8Array(raw('{base64.b64encode(packed.tobytes()).decode()}'));"
        f"const names = {json.dumps([f.name for f in frames])}, step = {step}, M = idx.length;"
        # plotly.js keeps a typed array of the figure's JSON as {dtype, bdata} in gd.data: decode it.
        "const T = {i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array, u4: Uint32Array,"
        " f4: Float32Array, f8: Float64Array};"
        "const arr = a => Float32Array.from(a.bdata === undefined ? a : new T[a.dtype](raw(a.bdata)));"
        "const t = gd.data[0], bx = arr(t.x), by = arr(t.y), bz = arr(t.z);"
        "const frames = names.map((name, f) => {"
        " const x = bx.slice(), y = by.slice(), z = bz.slice();"
        " for (let m = 0, o = f * M * 3; m < M; m++, o += 3) {"
        "  const v = idx[m]; x[v] += q[o] * step; y[v] += q[o + 1] * step; z[v] += q[o + 2] * step; }"
        ' return {"name": name, "data": [{"x": x, "y": y, "z": z}], "traces": [0]}; });'
        "return Plotly.addFrames(gd, frames);"
    )
    return go.Figure(data=figure.data, layout=figure.layout), script


def _curves(fig, row: int, times: np.ndarray, weights: np.ndarray, names, group: str) -> None:
    for k, name in enumerate(names):
        fig.add_trace(go.Scatter(
            x=times, y=weights[:, k].astype(np.float32), mode="lines", name=name, line=dict(width=1.4),
            legendgroup=group, legendgrouptitle_text=group if k == 0 else None,
            hovertemplate=f"{name}: %{{y:.3f}} at %{{x:.2f}} s<extra></extra>",
        ), row=row, col=1)


def weights_figure(animation: Animation, max_arkit: int = MAX_ARKIT_CURVES, *, height: int | None = None) -> go.Figure:
    """Blendshape weight curves over time (x in seconds), one stacked panel per kind.

    Panels: the DFM's speech weights (T, K_s), its expression weights (T, K_e), and the ARKit
    curves (T, 52) reduced to the `max_arkit` units with the largest RMS weight. A missing kind
    (None) has no panel; the title says which are missing, and with none at all the figure is a note.
    Legend entries are grouped per panel (click a group title to hide it).
    """
    if not isinstance(animation, Animation):
        raise ValueError(f"weights_figure expects an Animation, got {type(animation).__name__}")
    if max_arkit < 1:
        raise ValueError(f"max_arkit must be >= 1, got {max_arkit}")
    panels = []  # (title, weights (T, K), names)
    missing = []
    for label, weights, prefix in (("speech", animation.speech_weights, "s"),
                                   ("expression", animation.expression_weights, "e")):
        if weights is None:
            missing.append(f"{label} weights (no DFM)")
            continue
        weights = np.asarray(weights, dtype=np.float64)
        panels.append((f"{label} blendshapes", weights, [f"{prefix}{k}" for k in range(weights.shape[1])]))
    if animation.arkit_weights is None:
        missing.append("ARKit curves (no mapping)")
    else:
        arkit = np.asarray(animation.arkit_weights, dtype=np.float64)
        rms = np.sqrt((arkit**2).mean(0))  # (52,)
        keep = [k for k in np.argsort(-rms, kind="stable")[:max_arkit] if rms[k] > 0]
        title = f"ARKit (top {len(keep)} of {arkit.shape[1]} by RMS)"
        panels.append((title, arkit[:, keep], [animation.arkit_names[k] for k in keep]))
    note = "not available: " + ", ".join(missing) if missing else None

    if not panels:
        fig = go.Figure()
        fig.add_annotation(text=f"No blendshape weights in this animation.<br>{note}", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
        fig.update_layout(template="plotly_white", height=height or 200, xaxis_visible=False, yaxis_visible=False)
        return fig

    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[p[0] for p in panels])
    times = (np.arange(animation.num_frames) / animation.fps).astype(np.float32)  # (T,) s
    for row, (label, weights, names) in enumerate(panels, start=1):
        _curves(fig, row, times, weights, names, group=label.split(" ")[0])
        fig.update_yaxes(title_text="weight", row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(panels), col=1)
    fig.update_layout(
        template="plotly_white", height=height or 230 * len(panels) + 80, hovermode="closest",
        title=dict(text=note, font=dict(size=12)) if note else None,
        margin=dict(l=60, r=20, t=70 if note else 40, b=50),
        legend=dict(groupclick="togglegroup", tracegroupgap=12),
    )
    return fig
