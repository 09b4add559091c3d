"""Headless renderer: a pure-torch z-buffer rasterizer with smooth shading, on CPU or CUDA.

No OpenGL, OSMesa or pytorch3d. Per chunk of frames: project the vertices; cut every triangle into
pixel rows and solve its edges for the covered span of each row; pad the spans to a few widths so
each width is one dense grid; pack (quantised depth, triangle id) into one integer key and keep the
nearest per pixel with a single `scatter_reduce(amin)`. Only the covered pixels are then shaded:
perspective-correct interpolated vertex normals, Lambert from two lights + ambient + a soft
Blinn-Phong sheen.

The camera is fixed from the *template* so the frames of an animation do not jitter: it looks down
-z at the face (+z is out of the face), centred on the template's bounding box, which it frames
with a margin, from a slight elevation.

There are no teeth, so an open mouth must read as a dark opening. Two per-vertex terms computed
once on the template do it: ambient occlusion (the cavity and inner lips are closed in) and hidden
depth (how far behind the template's visible surface, seen from the render camera, a vertex lies),
which tints toward a dark cavity colour. Surfaces seen from behind (the inside of a mesh with no
mouth cavity, such as FLAME, or a cut neck) are shaded dark too. `Renderer.for_rig` dresses a rig
that carries a dressing (`blendtalk.face.dressing`: teeth, tongue, lashes, eyeballs following the gaze,
painted brows, lip tint), moved per frame from the face vertices; for other rigs it tints the lips
and, where the template has open eye sockets, places two static eyeballs in them. Creases that the
animation makes (a frown, a nose wrinkle) darken with the per-frame concavity of the skin, and skin
that an expression squeezes shows fine lines (`render.wrinkles`: the forehead of raised brows).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf

from ..face.dressing import DressingConfig, FaceDressing, eyeball_cap, lip_tint
from ..face.geometry import CACHE_ENV, DEFAULT_CACHE_DIR, ring_edges, ring_mean, smooth, vertex_normals
from ..expression.head_motion import head_pivot, rotate_head
from .wrinkles import WrinkleConfig, Wrinkles, darkening, line_masks

logger = logging.getLogger(__name__)

_EDGE_EPS = 1e-4  # barycentric slack: float32 round-off must not open one-pixel cracks on shared edges
_SPAN_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # px; row spans are padded to these widths
_SHININESS_SQUARINGS = 4  # Blinn-Phong exponent 2**4 = 16: a broad, soft sheen
_BACK_FACE_LIGHT = 0.35  # surfaces seen from behind (the inside of the head) get a third of the light
_AO_DIRECTIONS = 48  # view directions sampled over the sphere for ambient occlusion
_AO_SIZE = 160  # px, resolution of the ambient-occlusion depth maps
_CPU_CANDIDATES = 1_000_000  # pixel-row candidates per chunk on CPU: small tensors stay cache- and allocator-friendly
_CUDA_CANDIDATES = 32_000_000  # per chunk on CUDA: big launches amortise kernel overhead
_PLAN_FRAMES = 256  # frames moved to the device and planned into chunks at a time
_DRESSING_SHEEN = 2.0  # eyes and teeth are wet: twice the skin's sheen
_HAIR_SHEEN = 0.3  # short hair scatters light: a third of the skin's sheen, never a plastic gloss
SHADING_CACHE_VERSION = 1  # bump when _ambient_occlusion or _hidden_depth change what they compute
_GL_FRAMES = 32  # frames whose vertex attributes go to OpenGL at a time (about 20 MB for a dressed head)
BACKENDS = ("auto", "gl", "torch")


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded colour in [0, 1] -> linear light, elementwise."""
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB encoding, elementwise."""
    c = c.clamp(0, 1)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp(min=1e-8) ** (1 / 2.4) - 0.055)


@dataclass(frozen=True)
class RenderConfig:
    """How frames look. Colours are sRGB in [0, 1]; light directions are in camera space (+z to viewer)."""

    size: int = 512  # px, frames are square
    background: tuple[float, float, float] = (0.17, 0.18, 0.21)  # dark slate: skin stands out
    skin: tuple[float, float, float] = (0.90, 0.72, 0.62)  # light skin albedo
    lips: tuple[float, float, float] = (0.78, 0.45, 0.45)  # lip tint, used by `Renderer.for_rig`
    cavity: tuple[float, float, float] = (0.45, 0.16, 0.15)  # mouth-interior albedo (there are no teeth)
    eyes: bool = True  # `Renderer.for_rig` puts eyeballs in open eye sockets
    hair: bool = True  # `Renderer.for_rig` puts short hair on a rig whose dressing carries it
    iris: tuple[float, float, float] = (0.38, 0.26, 0.17)  # hazel-brown
    sclera: tuple[float, float, float] = (0.86, 0.84, 0.80)  # off-white: eyes sit in the lids' shade
    # Key light up-left-front, weaker fill from the right; directions point from surface to light.
    lights: tuple[tuple[float, float, float], ...] = ((-0.7, 0.5, 0.6), (0.8, 0.1, 0.6))
    light_intensities: tuple[float, ...] = (1.0, 0.25)  # a 4:1 key-to-fill ratio models the face
    ambient: float = 0.08  # keeps shadowed skin from going black
    specular: float = 0.12  # soft sheen; skin is not glossy
    occlusion_strength: float = 0.8  # how much ambient occlusion darkens creases and cavities, 0..1
    crease_strength: float = 0.6  # darkening per mm of new concavity (frown lines, nose wrinkles), 0 off
    wrinkle_strength: float = 0.35  # depth of the fine lines squeezed skin shows (`render.wrinkles`), 0 off
    fov_deg: float = 18.0  # vertical field of view, deg (a portrait lens); 0 means orthographic
    yaw_deg: float = 0.0  # camera orbit about the vertical axis, deg (+ toward the face's left)
    pitch_deg: float = 4.0  # camera orbit above the face, deg: a slight look down reads naturally
    margin: float = 0.06  # fraction of the frame left empty on each side of the template
    cavity_depth: float = 0.006  # template units (m) behind the visible surface for full cavity tint
    supersample: int = 1  # render at k x size and average k x k blocks (anti-aliasing, k^2 cost)
    max_candidates: int | None = None  # pixel-row candidates per chunk of frames; None: by device
    # Who draws: "auto" is OpenGL on a CPU device (llvmpipe, several times faster) where it works and
    # supersample is 1, else the torch rasterizer; "torch" always the rasterizer; "gl" OpenGL or an error.
    backend: str = "auto"

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"size must be at least 8 px, got {self.size}")
        if len(self.lights) != len(self.light_intensities):
            raise ValueError(
                f"lights ({len(self.lights)}) and light_intensities ({len(self.light_intensities)}) differ in length"
            )
        if not 0 <= self.fov_deg < 170:
            raise ValueError(f"fov_deg must be in [0, 170), got {self.fov_deg}")
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


def _rotation(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """World -> camera rotation (3, 3) float64 for a camera orbited by yaw, then raised by pitch."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = torch.tensor([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return (rx @ ry).double()


def _look_rotation(direction: torch.Tensor) -> torch.Tensor:
    """Rotations (K, 3, 3) whose third row is each unit `direction` (K, 3): camera +z = direction."""
    up = torch.where(direction[:, 1:2].abs() > 0.9, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    right = nnf.normalize(torch.cross(up.expand_as(direction), direction, dim=-1), dim=-1)
    true_up = torch.cross(direction, right, dim=-1)
    return torch.stack([right, true_up, direction], 1)


def _sphere_directions(count: int) -> torch.Tensor:
    """(count, 3) unit vectors spread evenly over the sphere (Fibonacci lattice), deterministic."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / count
    phi = i * math.pi * (3 - math.sqrt(5))
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1).float()


class Rasterizer:
    """Nearest-triangle z-buffer for one triangle list, any resolution, CPU or CUDA.

    triangles: (F, 3) long on the target device. Keys pack a quantised depth code above the
    triangle id, so one integer `amin` per pixel performs the depth test.
    """

    def __init__(self, triangles: torch.Tensor):
        self.triangles = triangles
        self.tri_bits = max(1, int(len(triangles) - 1).bit_length())
        self.tri_mask = (1 << self.tri_bits) - 1
        # int32 keys (17+ depth bits: micrometre steps on a head) halve the memory traffic; very
        # large meshes fall back to int64.
        self.dtype = torch.int32 if self.tri_bits <= 14 else torch.int64
        self.empty = torch.iinfo(self.dtype).max
        self.levels = (1 << ((31 if self.dtype == torch.int32 else 63) - self.tri_bits)) - 4  # room for the tie bias
        self.span_widths = torch.tensor(_SPAN_WIDTHS, device=triangles.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, q: torch.Tensor, n: int):
        """Rasterise T frames into n x n z-buffers.

        x, y: (T, V) screen position in px (pixel (i, j) covers [j, j+1) x [i, i+1)). q: (T, V) depth
        code in [0, 1], smaller = nearer, affine in screen space (1/depth for a perspective camera).
        Returns keys (T*n*n,) (`self.empty` where uncovered, else `key >> tri_bits` is the depth code
        and `key & tri_mask` the triangle), barycentric planes (T*F, 6) (b0 = p0 x + p1 y + p2 and
        b1 from p3..p5, at pixel centres x = j + 0.5) and twice the signed screen area (T*F,).
        """
        tri = self.triangles
        t_count, f_count = x.shape[0], len(tri)
        dev = x.device
        xs, ys = x[:, tri].reshape(-1, 3), y[:, tri].reshape(-1, 3)  # (T*F, 3) corners
        qs = (q.clamp(0, 1) * self.levels)[:, tri].reshape(-1, 3)  # clamped at corners: stays in range
        bx0 = torch.ceil(xs.amin(-1) - 0.5).clamp(0, n)  # first and last pixel columns and rows
        bx1 = torch.floor(xs.amax(-1) - 0.5).clamp(-1, n - 1)  # whose centres the triangle may cover
        by0 = torch.ceil(ys.amin(-1) - 0.5).clamp(0, n)
        by1 = torch.floor(ys.amax(-1) - 0.5).clamp(-1, n - 1)
        # Edge functions in coordinates local to the box corner: small numbers, no cancellation.
        lx, ly = xs - bx0[:, None], ys - by0[:, None]
        x0, x1, x2 = lx.unbind(-1)
        y0, y1, y2 = ly.unbind(-1)
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)  # (T*F,), twice the signed area
        good = area.abs() > 1e-8
        inv = torch.where(good, 1 / torch.where(good, area, torch.ones_like(area)), torch.zeros_like(area))
        # b0 is the edge function of (v1, v2), b1 that of (v2, v0), each normalised by the area.
        local = torch.stack(
            [(y1 - y2) * inv, (x2 - x1) * inv, (x1 * y2 - x2 * y1) * inv,
             (y2 - y0) * inv, (x0 - x2) * inv, (x2 * y0 - x0 * y2) * inv], -1,
        ).reshape(-1, 2, 3)  # (T*F, 2, 3)
        planes = local.clone()  # the same planes in frame coordinates, for shading
        planes[..., 2] -= local[..., 0] * bx0[:, None] + local[..., 1] * by0[:, None]
        planes = planes.reshape(-1, 6)
        zbuf = torch.full((t_count * n * n,), self.empty, dtype=self.dtype, device=dev)
        rows = ((by1 - by0 + 1).clamp(min=0) * ((bx1 >= bx0) & good)).long()  # (T*F,)
        ids = torch.nonzero(rows).squeeze(1)  # (K,) flat frame * F + triangle, on screen
        if len(ids) == 0:
            return zbuf, planes, area

        # In box row r the covered columns j satisfy b_k >= -eps for the 3 edges, i.e. a_k j >=
        # -eps - e_k(r): a lower bound on j where a_k > 0, an upper bound where a_k < 0.
        p = local[ids]  # (K, 2, 3)
        a = torch.cat([p[:, :, 0], -p[:, :, 0].sum(1, keepdim=True)], 1)  # (K, 3) d(b_k)/dx
        eb = torch.cat([p[:, :, 1], -p[:, :, 1].sum(1, keepdim=True)], 1)  # d(b_k)/dy
        ec = torch.cat([p[:, :, 2], 1 - p[:, :, 2].sum(1, keepdim=True)], 1)
        a = torch.where(a == 0, torch.full_like(a, 1e-20), a)  # a row-parallel edge bounds all or nothing
        # Bound in row r: j = (e_k(r) * s + o) with e_k(r) = eb r + (ec + eb / 2) at the pixel centre.
        slot = torch.stack([eb, ec + 0.5 * eb, -1 / a, -_EDGE_EPS / a - 0.5], -1)  # (K, 3, 4)
        lower = a > 0
        order = torch.sort((~lower).to(torch.uint8), dim=-1, stable=True).indices  # lower bounds first
        slot = slot.gather(1, order[..., None].expand(-1, -1, 4))
        # Every real triangle has 1 or 2 lower and 1 or 2 upper bounds: sorted edge 0 is lower, edge
        # 2 upper, edge 1 either; the empty slot gets a bound that never binds.
        mid_lower = lower.gather(1, order)[:, 1:2]  # (K, 1)
        inf = float("inf")
        free_lo = torch.tensor([0.0, 0.0, 0.0, -inf], device=dev)
        free_hi = torch.tensor([0.0, 0.0, 0.0, inf], device=dev)
        lo2 = torch.where(mid_lower, slot[:, 1], free_lo)
        hi2 = torch.where(mid_lower, free_hi, slot[:, 1])
        code = qs[ids]  # (K, 3)
        d0, d1 = code[:, 0] - code[:, 2], code[:, 1] - code[:, 2]
        qa = p[:, 0, 0] * d0 + p[:, 1, 0] * d1  # depth code = qa x + qb y + qc, box coordinates
        qb = p[:, 0, 1] * d0 + p[:, 1, 1] * d1
        # Back faces lose depth ties to front faces (folds where they touch, e.g. eyelid corners).
        qc = p[:, 0, 2] * d0 + p[:, 1, 2] * d1 + code[:, 2] + 1.5 * (area[ids] > 0)
        table = torch.cat(
            [slot[:, 0], lo2, hi2, slot[:, 2],
             torch.stack([(bx1 - bx0)[ids], qb, 0.5 * (qa + qb) + qc, qa], -1)], -1,
        )  # (K, 20): at box row r, column j the depth code is qa j + qb r + (qa + qb) / 2 + qc
        frame = torch.div(ids, f_count, rounding_mode="floor")
        corner = frame * (n * n) + (by0[ids] * n + bx0[ids]).long()  # flat pixel of the box corner
        ints = torch.stack([corner, ids - frame * f_count], -1)  # (K, 2)

        # One unit per (triangle, pixel row): far fewer than pixels, so per-unit work is cheap.
        count = rows[ids]
        total = int(count.sum())
        owner = torch.repeat_interleave(torch.arange(len(ids), device=dev), count, output_size=total)
        row = torch.arange(total, device=dev) - (torch.cumsum(count, 0) - count).index_select(0, owner)
        t = table.index_select(0, owner)  # (R, 20)
        ti = ints.index_select(0, owner)  # (R, 2)
        r = row.float()
        bound = [torch.addcmul(t[:, 4 * k + 3], torch.addcmul(t[:, 4 * k + 1], t[:, 4 * k], r), t[:, 4 * k + 2])
                 for k in range(4)]  # lower, lower, upper, upper
        first = torch.ceil(torch.maximum(bound[0], bound[1])).clamp_(min=0)  # (R,) first, last column
        last = torch.minimum(torch.floor(torch.minimum(bound[2], bound[3])), t[:, 16])
        row_code = torch.addcmul(t[:, 18], t[:, 17], r)  # depth code at column 0
        row_pixel = ti[:, 0] + row * n  # flat index of the row's column 0
        # Pad each span to the next width in a short list, so each width is one dense (U_c, w) grid;
        # empty spans fall in class -1 and are skipped.
        width = (last - first + 1).clamp(min=0)
        cls = torch.bucketize(width.clamp(max=_SPAN_WIDTHS[-1]), self.span_widths.to(width.dtype))
        cls = torch.where(width > 0, cls, -1)
        cls, order = torch.sort(cls)
        counts = torch.bincount(cls + 1, minlength=len(_SPAN_WIDTHS) + 1).tolist()
        floats = torch.stack([first, last, row_code, t[:, 19]], -1).index_select(0, order)  # (R, 4)
        ints = torch.stack([row_pixel, ti[:, 1]], -1).index_select(0, order)  # (R, 2)
        start = counts[0]
        for c, count in enumerate(counts[1:]):
            if count == 0:
                continue
            f, i = floats[start : start + count], ints[start : start + count]
            start += count
            span = _SPAN_WIDTHS[c] if c < len(_SPAN_WIDTHS) - 1 else int((f[:, 1] - f[:, 0]).max()) + 1
            steps = torch.arange(span, device=dev, dtype=f.dtype)
            # Columns past a span's end repeat its last pixel with the same key: harmless for amin.
            col = torch.minimum(f[:, :1] + steps, f[:, 1:2])  # (U_c, span)
            depth_code = torch.addcmul(f[:, 2:3], f[:, 3:4], col).to(self.dtype)
            key = torch.add(i[:, 1:2].to(self.dtype), depth_code, alpha=1 << self.tri_bits)
            zbuf.scatter_reduce_(0, (i[:, :1] + col.long()).reshape(-1), key.reshape(-1), reduce="amin")
        return zbuf, planes, area


class Renderer:
    """Render vertex sequences of one topology with a camera framed once on the template.

    triangles: (F, 3) int. template_vertices: (V, 3) float, in the units of the frames to render.
    vertex_colours: optional (V, 3) sRGB albedo in [0, 1]; default `config.skin` everywhere.
    static_mesh: optional (vertices (E, 3), triangles (G, 3) indexing them, sRGB colours (E, 3)),
    drawn unchanged in every frame (e.g. eyeballs).
    dressing: optional `FaceDressing` for this face (V must match): its parts are moved per frame
    from the face vertices (and gaze) and drawn in its colours, which replace `vertex_colours`.
    Ambient occlusion and the cavity tint come from the face alone; attached parts keep their colour.
    Building one takes a few tenths of a second (ambient occlusion of the template): reuse it.
    """

    def __init__(
        self,
        triangles,
        template_vertices,
        config: RenderConfig | None = None,
        device: str | torch.device | None = None,
        vertex_colours=None,
        static_mesh=None,
        dressing: FaceDressing | None = None,
        wrinkle_mask=None,
    ):
        self.config = config = config or RenderConfig()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        tri = _host_tensor(triangles).long()
        tmpl = _host_tensor(template_vertices).double()
        if tmpl.ndim != 2 or tmpl.shape[1] != 3 or len(tmpl) < 3:
            raise ValueError(f"template_vertices must have shape (V, 3), got {tuple(tmpl.shape)}")
        if not torch.isfinite(tmpl).all():
            raise ValueError("template_vertices contain NaN or infinite values")
        if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
            raise ValueError(f"triangles must have shape (F, 3), got {tuple(tri.shape)}")
        if tri.min() < 0 or tri.max() >= len(tmpl):
            raise ValueError(f"triangle indices must lie in [0, {len(tmpl)}), got [{int(tri.min())}, {int(tri.max())}]")
        colours = config.skin if vertex_colours is None else vertex_colours
        colours = _host_tensor(colours).float()
        colours = colours.expand(len(tmpl), 3) if colours.ndim == 1 else colours
        if colours.shape != (len(tmpl), 3):
            raise ValueError(f"vertex_colours must have shape ({len(tmpl)}, 3), got {tuple(colours.shape)}")
        self.num_vertices = len(tmpl)
        face_tri = tri
        static_v = torch.zeros(0, 3, dtype=torch.float64)
        self.dressing = dressing
        if dressing is not None:
            if dressing.num_face_vertices != len(tmpl):
                raise ValueError(f"dressing is for V={dressing.num_face_vertices} face vertices, the template has {len(tmpl)}")
            dressed = torch.as_tensor(dressing(tmpl.float()), dtype=torch.float64)  # (V+H, 3) at rest
            tri = torch.as_tensor(dressing.triangles).long()
            colours = torch.as_tensor(dressing.colours).float()
            tmpl = dressed
        elif static_mesh is not None:
            static_v, static_t, static_c = (_host_tensor(a) for a in static_mesh)
            if static_v.ndim != 2 or static_v.shape[1] != 3 or static_c.shape != static_v.shape:
                raise ValueError(
                    "static_mesh needs vertices (E, 3) and colours (E, 3), "
                    f"got {tuple(static_v.shape)} and {tuple(static_c.shape)}"
                )
            if static_t.ndim != 2 or static_t.shape[1] != 3 or static_t.min() < 0 or static_t.max() >= len(static_v):
                raise ValueError(
                    f"static_mesh triangles must be (G, 3) indices below E={len(static_v)}, got {tuple(static_t.shape)}"
                )
            static_v = static_v.double()
            tri = torch.cat([tri, static_t.long() + len(tmpl)])
            colours = torch.cat([colours, static_c.float()])
            tmpl = torch.cat([tmpl, static_v])
        self.static_vertices = static_v.float().to(self.device)  # (E, 3)
        self.pivot = torch.as_tensor(head_pivot(tmpl[: self.num_vertices].numpy()), dtype=torch.float32, device=self.device)
        self.triangles = tri.to(self.device)
        self.raster = Rasterizer(self.triangles)
        face = tmpl[: self.num_vertices]  # (V, 3): framing, occlusion and cavity come from the face alone

        # Camera: centred on the face's bounding box, at the distance where the box just fits.
        centre = (face.amin(0) + face.amax(0)) / 2
        rot = _rotation(config.yaw_deg, config.pitch_deg)
        local = (face - centre) @ rot.T  # (V, 3), +z toward the camera
        reach = local[:, :2].abs().amax(1)  # (V,)
        fill = 1 - 2 * config.margin
        extent = float((face.amax(0) - face.amin(0)).norm())
        if config.fov_deg > 0:
            tan = math.tan(math.radians(config.fov_deg) / 2)
            self.distance = float((reach / (tan * fill) + local[:, 2]).max())
            self.focal = 1 / tan  # half-frames per unit of x / depth
        else:
            self.distance = float(local[:, 2].max()) + extent
            self.focal = fill / float(reach.max())  # half-frames per unit, orthographic
        depth = self.distance - local[:, 2]
        # Depth-code range: the template's plus room for the animation to move.
        self.depth_near = max(float(depth.min()) - 0.5 * extent, 0.05 * float(depth.min()))
        self.depth_far = float(depth.max()) + 0.5 * extent
        self.rotation = rot.float().to(self.device)
        self.centre = centre.float().to(self.device)
        self.max_candidates = config.max_candidates or (
            _CUDA_CANDIDATES if self.device.type == "cuda" else _CPU_CANDIDATES
        )

        dev = self.device
        lights = nnf.normalize(torch.tensor(config.lights, dtype=torch.float32), dim=-1)
        halfway = nnf.normalize(lights + torch.tensor([0.0, 0.0, 1.0]), dim=-1)  # Blinn-Phong
        self.light_matrix = torch.cat([lights, halfway]).T.contiguous().to(dev)  # (3, 2L)
        self.light_intensities = torch.tensor(config.light_intensities, dtype=torch.float32, device=dev)
        self.srgb_table = (linear_to_srgb(torch.linspace(0, 1, 4096, device=dev)) * 255 + 0.5).to(torch.uint8)
        self.background_linear = srgb_to_linear(torch.tensor(config.background, dtype=torch.float32)).to(dev)
        self.background = self._encode(self.background_linear)  # (3,) uint8
        cavity = srgb_to_linear(torch.tensor(config.cavity, dtype=torch.float32)).to(dev)
        self.white = torch.ones(3, device=dev)

        # Per-vertex material, fixed on the template so per pixel only lighting remains: albedo
        # toward the cavity colour where hidden, darkened by occlusion; the sheen fades in cavities.
        # Both come from the face alone; attached parts (teeth, eyeballs) keep their own colour.
        self.face_triangles = face_tri.to(dev)
        face_raster = Rasterizer(self.face_triangles)
        face32 = face.float().to(dev)
        albedo = srgb_to_linear(colours.clamp(0, 1)).to(dev)  # (V+E, 3)
        extra = len(tmpl) - self.num_vertices
        occlusion, hidden = self._template_shading(face32, face_raster)
        occlusion, hidden = nnf.pad(occlusion, (0, extra)), nnf.pad(hidden, (0, extra))
        base = torch.lerp(albedo, cavity.expand_as(albedo), hidden[:, None])
        base = base * (1 - config.occlusion_strength * occlusion)[:, None]
        sheen = config.specular * (1 - occlusion) * (1 - hidden)
        sheen[self.num_vertices :] *= _DRESSING_SHEEN
        if dressing is not None and "hair" in dressing.ranges:
            a, b = dressing.ranges["hair"]
            sheen[a:b] = config.specular * _HAIR_SHEEN
        self.material = torch.cat([base, sheen[:, None]], -1).contiguous()  # (V+E, 4)
        # Reference concavity of the face at rest: only creases the animation adds darken.
        self.ring = ring_edges(self.face_triangles, self.num_vertices)
        rest_normals = vertex_normals(face32[None], self.face_triangles)
        self.rest_concavity = _concavity(face32[None], rest_normals, self.ring)[0]  # (V,)
        self.wrinkle_config = WrinkleConfig(strength=config.wrinkle_strength)
        self.wrinkles = None
        if wrinkle_mask is not None and config.wrinkle_strength > 0:
            mask = _host_tensor(wrinkle_mask).float()
            if mask.shape != (self.num_vertices, 2):
                raise ValueError(f"wrinkle_mask must have shape ({self.num_vertices}, 2), got {tuple(mask.shape)}")
            self.wrinkles = Wrinkles(face32, self.face_triangles, mask.to(dev), self.wrinkle_config)
        self.gl = self._gl_drawer()

    @property
    def backend(self) -> str:
        """Who draws the frames: "gl" (OpenGL) or "torch" (the rasterizer)."""
        return "gl" if self.gl is not None else "torch"

    def _gl_drawer(self):
        """A `gl.GLDrawer` for this renderer where the config and the machine allow one, else None."""
        cfg = self.config
        if cfg.backend == "torch" or (cfg.backend == "auto" and (self.device.type != "cpu" or cfg.supersample > 1)):
            return None
        from . import gl

        ok, why = gl.gl_status()
        if not ok:
            if cfg.backend == "gl":
                raise RuntimeError(f"OpenGL rendering is not available ({why}); use backend='torch'")
            gl.log_fallback(why)
            return None
        if cfg.supersample > 1:
            raise ValueError("the OpenGL backend draws supersample=1 only; use backend='torch' to supersample")
        count = len(self.light_intensities)
        return gl.GLDrawer(
            self.triangles.cpu().numpy(), len(self.material), cfg.size, focal=self.focal, distance=self.distance,
            near=self.depth_near, far=self.depth_far, ortho=cfg.fov_deg == 0, lights=self.light_matrix[:, :count].T.cpu().numpy(),
            halfways=self.light_matrix[:, count:].T.cpu().numpy(), intensities=self.light_intensities.cpu().numpy(),
            ambient=cfg.ambient, back_light=_BACK_FACE_LIGHT, background=self.background.cpu().numpy(),
            tie_bias=1.5 / self.raster.levels, wrinkle=(self.wrinkle_config.strength, self.wrinkle_config.sharpness),
        )

    @classmethod
    def for_rig(cls, rig, config: RenderConfig | None = None, device=None) -> "Renderer":
        """A renderer for a `FaceRig`, framed on its neutral template. A rig that carries a
        dressing is dressed (`FaceDressing.for_rig`, in this config's skin, lip, iris and sclera
        colours); others get tinted lips (from the 'lips' region) and static eyeballs in open eye
        sockets (found from the 'eyes' region)."""
        config = config or RenderConfig()
        if getattr(rig, "dressing", None):
            dressing = FaceDressing.for_rig(rig, dressing_config(config))
            return cls(rig.triangles, rig.vertices, config, device=device, dressing=dressing, wrinkle_mask=line_masks(rig))
        colours, static_mesh = _rig_dressing(rig, config)
        return cls(rig.triangles, rig.vertices, config, device=device, vertex_colours=colours, static_mesh=static_mesh)

    @torch.inference_mode()
    def __call__(self, vertices, gaze=None, head_rotation=None) -> np.ndarray:
        """vertices (T, V, 3) or (V, 3), numpy or torch -> uint8 frames (T, H, W, 3) or (H, W, 3).

        gaze: optional (T, 2) eye rotation in radians [yaw (+ toward the face's left), pitch (+ up)]
        for a dressed renderer; None looks straight ahead. head_rotation: optional (T, 3) radians
        [pitch, yaw, roll] turning the whole dressed head about the neck (`head_motion.rotate_head`);
        the vertices themselves stay head-local, as metrics and exports want them."""
        verts = vertices if isinstance(vertices, torch.Tensor) else torch.as_tensor(np.asarray(vertices))
        shape = tuple(verts.shape)
        if verts.ndim not in (2, 3) or shape[-2:] != (self.num_vertices, 3):
            raise ValueError(
                f"vertices must have shape (T, {self.num_vertices}, 3) or ({self.num_vertices}, 3), got {shape}"
            )
        if not torch.isfinite(verts).all():
            raise ValueError(f"vertices of shape {shape} contain NaN or infinite values")
        verts = verts.reshape(-1, self.num_vertices, 3)
        per_frame = {}
        for name, value, width in (("gaze", gaze, 2), ("head_rotation", head_rotation, 3)):
            if value is not None:
                value = _host_tensor(value).float()
                if value.shape[-1:] != (width,) or value.numel() != len(verts) * width or not torch.isfinite(value).all():
                    raise ValueError(f"{name} must have shape ({len(verts)}, {width}) with finite radians, "
                                     f"got {tuple(value.shape)}")
                value = value.reshape(len(verts), width)
            per_frame[name] = value
        gaze, head_rotation = per_frame["gaze"], per_frame["head_rotation"]
        size = self.config.size
        out = np.empty((len(verts), size, size, 3), dtype=np.uint8)
        for first in range(0, len(verts), _PLAN_FRAMES):  # long clips: plan chunks a block at a time
            block = verts[first : first + _PLAN_FRAMES].to(self.device, torch.float32)
            if self.dressing is not None:
                look = None if gaze is None else gaze[first : first + _PLAN_FRAMES].to(self.device)
                block = self.dressing(block, look)  # (T, V+H, 3)
            elif len(self.static_vertices):
                block = torch.cat([block, self.static_vertices.expand(len(block), -1, -1)], 1)  # (T, V+E, 3)
            if head_rotation is not None:  # after dressing: teeth, eyes and lashes turn with the head
                block = rotate_head(block, head_rotation[first : first + _PLAN_FRAMES].to(self.device), self.pivot)
            if self.gl is not None:
                for start in range(0, len(block), _GL_FRAMES):
                    end = min(start + _GL_FRAMES, len(block))
                    out[first + start : first + end] = self._draw_gl(block[start:end])
                continue
            for start, end in self._chunks(block):
                out[first + start : first + end] = self._render_chunk(block[start:end]).cpu().numpy()
        return out[0] if len(shape) == 2 else out

    def _project(self, verts: torch.Tensor, n: int):
        """World (T, V, 3) -> screen x, y in px of an n-px frame, depth, depth code: each (T, V)."""
        cam = (verts - self.centre) @ self.rotation.T  # (T, V, 3)
        depth = self.distance - cam[..., 2]
        half = 0.5 * n
        if self.config.fov_deg > 0:
            inv = 1 / depth.clamp(min=1e-6 * self.distance)
            lo, hi = 1 / self.depth_far, 1 / self.depth_near
            q = (hi - inv) / (hi - lo)  # 1/depth is affine in screen space
            scale = half * self.focal * inv
        else:
            q = (depth - self.depth_near) / (self.depth_far - self.depth_near)
            scale = half * self.focal
        return half + cam[..., 0] * scale, half - cam[..., 1] * scale, depth, q

    def _chunks(self, verts: torch.Tensor) -> list[tuple[int, int]]:
        """Frame ranges of at most `max_candidates` pixel rows x bounding-box widths in all."""
        n = self.config.size * self.config.supersample
        x, y, _, _ = self._project(verts, n)
        xs, ys = x[:, self.triangles], y[:, self.triangles]  # (T, F, 3)
        w = (xs.amax(-1).clamp(0, n) - xs.amin(-1).clamp(0, n) + 1).clamp(min=0)
        h = (ys.amax(-1).clamp(0, n) - ys.amin(-1).clamp(0, n) + 1).clamp(min=0)
        counts = (w * h).sum(-1).tolist()  # (T,) an upper bound of the pixels enumerated per frame
        chunks, start, total = [], 0, 0.0
        for t, c in enumerate(counts):
            if t > start and total + c > self.max_candidates:
                chunks.append((start, t))
                start, total = t, 0.0
            total += c
        if counts:
            chunks.append((start, len(counts)))
        return chunks

    def _render_chunk(self, verts: torch.Tensor) -> torch.Tensor:
        """Vertices (T, V, 3) -> uint8 frames (T, H, W, 3)."""
        cfg = self.config
        t_count = verts.shape[0]
        n = cfg.size * cfg.supersample
        x, y, depth, q = self._project(verts, n)
        zbuf, planes, area = self.raster(x, y, q, n)
        pix = torch.nonzero(zbuf != self.raster.empty).squeeze(1)  # (M,) covered pixels
        colour = self._shade_pixels(verts, depth, zbuf, planes, area, pix, n)  # (M, 3) linear
        if cfg.supersample == 1:  # encode only the covered pixels; the background is constant
            image = self.background.expand(t_count * n * n, 3).clone()
            image[pix] = self._encode(colour)
            return image.reshape(t_count, n, n, 3)
        image = self.background_linear.expand(t_count * n * n, 3).clone()
        image[pix] = colour
        k = cfg.supersample
        image = image.reshape(t_count, cfg.size, k, cfg.size, k, 3).mean((2, 4))
        return self._encode(image)

    def _encode(self, linear: torch.Tensor) -> torch.Tensor:
        """Linear RGB (..., 3) -> sRGB uint8 through a lookup table (much cheaper than a power)."""
        return self.srgb_table[(linear.clamp(0, 1) * (len(self.srgb_table) - 1) + 0.5).long()]

    def _draw_gl(self, verts: torch.Tensor) -> np.ndarray:
        """Vertices (T, V, 3) -> uint8 frames (T, H, W, 3) drawn by OpenGL from the same per-vertex
        camera-space positions, normals and material the torch path interpolates."""
        cam = (verts - self.centre) @ self.rotation.T  # (T, V, 3)
        attributes = torch.cat([cam, *self._vertex_attributes(verts)], -1)  # (T, V, 14)
        return self.gl(attributes.cpu().numpy())

    def _vertex_attributes(self, verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vertices (T, V, 3) -> camera-space normals (T, V, 3), material (T, V, 4): linear albedo
        after the cavity tint, occlusion and this frame's crease darkening, and sheen; and the
        wrinkle attributes (T, V, 4) that the shading turns into fine lines (zeros: none)."""
        world = vertex_normals(verts, self.triangles)  # (T, V, 3)
        normals = world @ self.rotation.T  # (T, V, 3) camera space
        material = self.material.expand(verts.shape[0], -1, -1)
        if self.config.crease_strength > 0:
            # New concavity (mm) darkens the albedo: the folds of a frown or a nose wrinkle.
            v = self.num_vertices
            crease = _concavity(verts[:, :v], world[:, :v], self.ring) - self.rest_concavity
            dark = (1 - self.config.crease_strength * 1000 * crease.clamp(min=0)).clamp(min=0.35)  # (T, V)
            dark = nnf.pad(dark, (0, verts.shape[1] - self.num_vertices), value=1.0)
            material = torch.cat([material[..., :3] * dark[..., None], material[..., 3:]], -1)
        if self.wrinkles is None:
            wrinkle = torch.zeros(*verts.shape[:2], 4, device=verts.device)
        else:
            wrinkle = self.wrinkles.attributes(verts[:, : self.num_vertices], verts.shape[1])
        return normals, material, wrinkle

    def _shade_pixels(self, verts, depth, zbuf, planes, area, pix, n: int) -> torch.Tensor:
        """Shade the covered pixels `pix` (M,) of the flat z-buffer `zbuf`: -> linear RGB (M, 3)."""
        t_count, f_count = verts.shape[0], len(self.triangles)
        if len(pix) == 0:
            return torch.zeros(0, 3, device=verts.device)
        # One row per (frame, triangle) holding everything shading needs, so that each pixel does
        # a single contiguous gather: 3 perspective-weighted barycentric planes (9), a back-facing
        # flag (1) and per corner the camera-space normal (3), base colour (3), sheen (1) and wrinkle (4).
        per_vertex = torch.cat(self._vertex_attributes(verts), -1)  # (T, V, 11)
        width = per_vertex.shape[-1]
        corners = per_vertex[:, self.triangles].reshape(t_count * f_count, 3 * width)
        # Perspective-correct barycentrics are ratios of affine functions: b_k / depth_k, renormalised.
        if self.config.fov_deg > 0:
            weight = (1 / depth)[:, self.triangles].reshape(-1, 3, 1)  # (T*F, 3, 1)
        else:
            weight = torch.ones(t_count * f_count, 3, 1, device=verts.device)
        p = planes.reshape(-1, 2, 3)
        bary = torch.cat([p, torch.tensor([0.0, 0.0, 1.0], device=p.device) - p.sum(1, keepdim=True)], 1)
        bary = bary * weight  # (T*F, 3 corners, 3 coefficients)
        bary[..., 2] += 0.5 * (bary[..., 0] + bary[..., 1])  # evaluate at pixel centres from indices
        # Screen y points down, so an outward (counter-clockwise) triangle facing us has area < 0.
        table = torch.cat([bary.reshape(-1, 9), (area > 0).float()[:, None], corners], -1)  # (T*F, 10 + 3 * width)

        tri_id = (zbuf[pix] & self.raster.tri_mask).long()
        frame = torch.div(pix, n * n, rounding_mode="floor")
        rest = pix - frame * (n * n)
        row_i = torch.div(rest, n, rounding_mode="floor")
        cx, cy = (rest - row_i * n).float(), row_i.float()
        row = table.index_select(0, frame * f_count + tri_id)  # (M, 10 + 3 * width)
        w = [torch.addcmul(torch.addcmul(row[:, 3 * k + 2], row[:, 3 * k], cx), row[:, 3 * k + 1], cy).clamp_(min=0)
             for k in range(3)]
        norm = (w[0] + w[1] + w[2]).clamp_(min=1e-20).reciprocal_()
        a, b, c = (10 + k * width for k in range(3))
        attr = row[:, a:b] * (w[0] * norm)[:, None]  # (M, width) interpolated corner attributes
        attr.addcmul_(row[:, b:c], (w[1] * norm)[:, None]).addcmul_(row[:, c:], (w[2] * norm)[:, None])
        base = attr[:, 3:6] * darkening(attr[:, 7:11], self.wrinkle_config)[:, None]
        return self._shade(attr[:, :3], base, attr[:, 6], row[:, 9] > 0)

    def _shade(self, nrm, base, sheen, back) -> torch.Tensor:
        """Camera-space normals (M, 3) (any length), base colour (M, 3), sheen (M,) and back-facing
        flags (M,) -> linear RGB (M, 3)."""
        # Seen from behind: the inside of the head through an opening; light it from our side.
        scale = torch.rsqrt((nrm * nrm).sum(-1).clamp_(min=1e-20))
        scale = torch.where(back, -scale, scale)
        dots = (nrm @ self.light_matrix).mul_(scale[:, None]).clamp_(min=0)  # (M, 2L): lights, half-vectors
        count = len(self.light_intensities)
        diffuse = dots[:, :count] @ self.light_intensities  # (M,)
        spec = dots[:, count:]
        for _ in range(_SHININESS_SQUARINGS):  # spec ** (2 ** squarings) without a slow pow
            spec = spec * spec
        spec = spec @ self.light_intensities  # (M,)
        # Back faces take their vertex colour, already the dark cavity colour where the template hides
        # them (the inside of the head); thin folds at the surface (eyelid corners) stay skin.
        light = diffuse.add_(self.config.ambient) * torch.where(back, _BACK_FACE_LIGHT, 1.0)
        return torch.addcmul(base * light[:, None], (sheen * spec * ~back)[:, None], self.white)

    def _surface_code(self, zbuf: torch.Tensor, n: int, raster: Rasterizer) -> torch.Tensor:
        """Keys (T*n*n,) -> (T, n, n) depth code of the visible surface in [0, 1]; 1 where empty."""
        code = (zbuf >> raster.tri_bits).float() / raster.levels
        return torch.where(zbuf != raster.empty, code, torch.ones_like(code)).reshape(-1, n, n)

    @staticmethod
    def _sample_furthest(surface: torch.Tensor, x: torch.Tensor, y: torch.Tensor, radius: int) -> torch.Tensor:
        """Furthest surface code within `radius` px of each point: (T, n, n), x, y (T, V) -> (T, V).
        Taking the furthest neighbour keeps silhouettes and steep slopes from counting as hidden."""
        n = surface.shape[-1]
        far = nnf.max_pool2d(surface[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
        px, py = x.floor().long().clamp(0, n - 1), y.floor().long().clamp(0, n - 1)
        return far.reshape(len(far), -1).gather(1, py * n + px)

    def _template_shading(self, face: torch.Tensor, raster: Rasterizer) -> tuple[torch.Tensor, torch.Tensor]:
        """Ambient occlusion and hidden depth of the face template, each (V,): computed once per face,
        camera and size, then read from the cache folder ($BLENDTALK_CACHE, else ~/.cache/blendtalk)
        because they are most of the time a renderer takes to build. An unwritable cache is skipped."""
        cfg = self.config
        key = hashlib.sha256()
        for part in (face.cpu().numpy(), raster.triangles.cpu().numpy().astype(np.int64)):
            key.update(str(part.shape).encode() + np.ascontiguousarray(part).tobytes())
        key.update(repr((SHADING_CACHE_VERSION, _AO_DIRECTIONS, _AO_SIZE, min(cfg.size * cfg.supersample, 256),
                         self.distance, self.focal, self.depth_near, self.depth_far, cfg.cavity_depth, cfg.fov_deg,
                         cfg.yaw_deg, cfg.pitch_deg, self.centre.tolist())).encode())
        path = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser() / f"shading_{key.hexdigest()[:24]}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                occlusion, hidden = z["occlusion"], z["hidden"]
            if occlusion.shape == hidden.shape == (len(face),):
                return torch.from_numpy(occlusion).to(face.device), torch.from_numpy(hidden).to(face.device)
        except (OSError, KeyError, ValueError):
            pass  # not cached yet (or unreadable): compute it
        occlusion, hidden = self._ambient_occlusion(face, raster), self._hidden_depth(face, raster)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # atomic: concurrent processes may write it too
            np.savez(tmp, occlusion=occlusion.cpu().numpy(), hidden=hidden.cpu().numpy())
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: compute it again next time
        return occlusion, hidden

    def _ambient_occlusion(self, tmpl: torch.Tensor, raster: Rasterizer) -> torch.Tensor:
        """(V,) share of each vertex's cosine-weighted hemisphere that the template itself blocks.

        Orthographic depth maps of the template from `_AO_DIRECTIONS` directions; a vertex counts
        as lit from a direction if it is no deeper than the surface around its pixel there."""
        n = _AO_SIZE
        dirs = _sphere_directions(_AO_DIRECTIONS)  # (K, 3) toward each viewer
        rot = _look_rotation(dirs).to(tmpl.device)  # (K, 3, 3)
        dirs = dirs.to(tmpl.device)
        centre = (tmpl.amin(0) + tmpl.amax(0)) / 2
        radius = float((tmpl - centre).norm(dim=-1).max())
        local = torch.einsum("kij,vj->kvi", rot, tmpl - centre)  # (K, V, 3)
        scale = 0.5 * n * 0.98 / radius
        x, y = 0.5 * n + local[..., 0] * scale, 0.5 * n - local[..., 1] * scale
        q = (radius - local[..., 2]) / (2 * radius)  # nearer the viewer = smaller
        zbuf, _, _ = raster(x, y, q, n)
        far = self._sample_furthest(self._surface_code(zbuf, n, raster), x, y, radius=1)  # (K, V)
        visible = (q <= far + 1.5 / scale / (2 * radius)).float()  # (K, V), 1.5 px of depth slack
        weight = (vertex_normals(tmpl, raster.triangles) @ dirs.T).clamp(min=0).T  # (K, V) cosine weights
        lit = (weight * visible).sum(0) / weight.sum(0).clamp(min=1e-6)
        # Open convex skin still loses a little to the finite slack: rescale so that it reads as 0.
        return smooth(((0.9 - lit) / 0.8).clamp(0, 1), raster.triangles, steps=2)

    def _hidden_depth(self, tmpl: torch.Tensor, raster: Rasterizer) -> torch.Tensor:
        """(V,) in [0, 1]: how far each vertex lies behind the template's visible surface as the
        render camera sees it, relative to `cavity_depth`. Hidden at rest, exposed when the jaw
        opens: the mouth cavity and inner lips."""
        cfg = self.config
        n = min(cfg.size * cfg.supersample, 256)  # the tint is smooth; a coarse map is enough
        x, y, depth, q = self._project(tmpl[None], n)
        zbuf, _, _ = raster(x, y, q, n)
        far = self._sample_furthest(self._surface_code(zbuf, n, raster), x, y, radius=1)[0]  # (V,)
        if cfg.fov_deg > 0:
            lo, hi = 1 / self.depth_far, 1 / self.depth_near
            surface = 1 / (hi - far * (hi - lo)).clamp(min=1e-12)
        else:
            surface = self.depth_near + far * (self.depth_far - self.depth_near)
        behind = (depth[0] - surface).nan_to_num(0.0)
        tint = ((behind - 0.2 * cfg.cavity_depth) / (0.8 * cfg.cavity_depth)).clamp(0, 1)
        return smooth(tint, raster.triangles, steps=2)


def _rig_dressing(rig, config: RenderConfig):
    """Per-vertex sRGB colours (V, 3) with tinted lips, and eyeballs (vertices, triangles, colours)
    for the template's open eye sockets, or None."""
    skin = torch.tensor(config.skin, dtype=torch.float32)
    colours = skin.expand(rig.num_vertices, 3).clone()
    if "lips" in rig.masks:
        lips = torch.as_tensor(lip_tint(rig.masks["lips"], rig.triangles))
        colours += lips[:, None] * (torch.tensor(config.lips) - skin)
    static_mesh = None
    if config.eyes and "eyes" in rig.masks:
        parts = [_eyeball(c, r, config) for c, r in _eye_sockets(rig)]
        if parts:
            offsets = np.cumsum([0] + [len(v) for v, _, _ in parts[:-1]])
            static_mesh = (
                np.concatenate([v for v, _, _ in parts]),
                np.concatenate([t + o for (_, t, _), o in zip(parts, offsets)]),
                np.concatenate([c for _, _, c in parts]),
            )
    return colours.numpy(), static_mesh


def _eye_sockets(rig, n: int = 256) -> list[tuple[np.ndarray, float]]:
    """Eyeball centres (3,) and radii that fill each open eye socket of the template, if any.

    A front orthographic depth map of the template; within the image box of each side's 'eyes'
    region, pixels more than a centimetre-scale step behind the nearest surface around them are
    the opening (the lids' rim in front, the socket's back wall behind)."""
    verts = torch.as_tensor(rig.vertices, dtype=torch.float32)
    lo, hi = verts.amin(0), verts.amax(0)
    scale = (n - 2) / float((hi - lo)[:2].max())  # px per unit
    x, y = 1 + (verts[:, 0] - lo[0]) * scale, 1 + (hi[1] - verts[:, 1]) * scale
    q = (hi[2] - verts[:, 2]) / (hi[2] - lo[2])
    raster = Rasterizer(torch.as_tensor(rig.triangles).long())
    zbuf, _, _ = raster(x[None], y[None], q[None], n)
    code = (zbuf >> raster.tri_bits).float() / raster.levels
    z = torch.where(zbuf != raster.empty, hi[2] - code * (hi[2] - lo[2]), torch.full_like(code, -float("inf")))
    z = z.reshape(n, n)
    size = float((hi - lo)[1])  # head height: the unit-free yardstick (about 26 cm on the rig)
    reach = max(3, int(0.045 * size * scale) | 1)  # px, a window about a centimetre wide
    rim = nnf.max_pool2d(z[None, None], reach, stride=1, padding=reach // 2)[0, 0]
    step = 0.04 * size  # about a centimetre: the lids' rim stands this far in front of the socket
    eyes = torch.as_tensor(rig.masks["eyes"])
    sockets = []
    for side in (-1, 1):
        sel = eyes & (verts[:, 0] * side > 0)
        if int(sel.sum()) < 3:
            continue
        c0, c1 = int(x[sel].min()), int(x[sel].max()) + 1
        r0, r1 = int(y[sel].min()), int(y[sel].max()) + 1
        box_z, box_rim = z[r0:r1, c0:c1], rim[r0:r1, c0:c1]
        opening = torch.isfinite(box_z) & (box_rim - box_z > step)
        if int(opening.sum()) < 4:
            continue
        rows, cols = torch.nonzero(opening, as_tuple=True)
        cx = lo[0] + (cols.float().mean() + c0 + 0.5 - 1) / scale
        cy = hi[1] - (rows.float().mean() + r0 + 0.5 - 1) / scale
        width = (cols.max() - cols.min() + 1).item() / scale
        radius = 0.5 * width
        front = float(box_rim[opening].median()) - 0.15 * radius  # just behind the lids' rim
        sockets.append((np.array([cx, cy, front - radius], dtype=np.float32), radius))
    return sockets


def _eyeball(centre: np.ndarray, radius: float, config: RenderConfig):
    """An eyeball cap looking down +z: vertices (E, 3), triangles (G, 3), sRGB colours (E, 3)."""
    palette = np.array(
        [(0.06, 0.05, 0.05), config.iris, tuple(0.6 * c for c in config.iris), config.sclera], dtype=np.float32
    )
    cap, tris, colours = eyeball_cap(palette)
    return (centre + radius * cap).astype(np.float32), tris, colours


def _host_tensor(array) -> torch.Tensor:
    """A CPU tensor from a numpy array, sequence or tensor (detached: rendering needs no gradients)."""
    return array.detach().cpu() if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))


def _concavity(verts: torch.Tensor, normals: torch.Tensor, edges) -> torch.Tensor:
    """How far each vertex lies below its one-ring mean along its unit normal: verts and normals
    (T, V, 3), edges from `geometry.ring_edges` -> (T, V), in the vertices' units (> 0 in a crease)."""
    t_count, v_count, _ = verts.shape
    flat = verts.permute(1, 0, 2).reshape(v_count, t_count * 3)  # (V, T*3): index_add_ on dim 0 is the fast path
    ring = ring_mean(flat, edges).reshape(v_count, t_count, 3).permute(1, 0, 2)  # (T, V, 3)
    return ((ring - verts) * normals).sum(-1)


def dressing_config(config: RenderConfig) -> DressingConfig:
    """The dressing colours that go with a render config (its skin, lips, iris, sclera, eyes)."""
    return DressingConfig(skin=config.skin, lips=config.lips, iris=config.iris, sclera=config.sclera, eyes=config.eyes,
                          hair=config.hair)


def render(vertices, triangles, size: int = 512, device: str | torch.device | None = None) -> np.ndarray:
    """Render vertices (T, V, 3) or (V, 3) with default settings, framed on the first frame.

    Returns uint8 frames (T, size, size, 3) or (size, size, 3). To render several clips with one
    camera, build a `Renderer` on the neutral template (or `Renderer.for_rig`) and reuse it.
    """
    verts = vertices if isinstance(vertices, torch.Tensor) else torch.as_tensor(np.asarray(vertices))
    if verts.ndim not in (2, 3) or verts.shape[-1] != 3 or verts.shape[-2] < 3:
        raise ValueError(f"vertices must have shape (T, V, 3) or (V, 3), got {tuple(verts.shape)}")
    template = verts if verts.ndim == 2 else verts[0]
    return Renderer(triangles, template.detach().cpu(), RenderConfig(size=size), device=device)(verts)
