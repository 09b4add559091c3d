"""Headless renderer of vertex sequences with smooth shading, on CPU or CUDA: OpenGL (`gl`: llvmpipe
on a CPU, the GPU's own driver on a CUDA device) where it works, else the pure-torch rasterizer (`raster`).

Per chunk of frames: project the vertices with the camera framed once on the template (`camera`),
rasterise, then shade only the covered pixels: perspective-correct interpolated vertex normals,
Lambert from two lights + ambient + a soft Blinn-Phong sheen, over a per-vertex material fixed on
the template (albedo, ambient occlusion and cavity tint, `shading`) and darkened per frame in new
creases; skin that an expression squeezes also shows fine lines (`wrinkles`: the forehead of
raised brows), and the nasolabial folds deepen as the cheeks and upper lip rise. Surfaces seen from behind (the inside of a mesh with no mouth cavity, such as FLAME,
or a cut neck) are shaded dark. `Renderer.for_rig` dresses a rig that carries a dressing
(`blendtalk.face.dressing`: teeth, tongue, lashes, eyeballs following the gaze, hair, a neck, lip
tint; the brows drawn per pixel, `blendtalk.face.brows`), moved per frame from the face vertices;
other rigs get the plain look of `undressed`. The skin is the face and the dressing's neck as one
welded surface: occlusion, the cavity tint (kept off the neck and the face's last rings above it,
outer skin that a raised chin shows) and creases are computed over both, so the junction has no seam.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as nnf

from ..expression.head_motion import head_pivot, rotate_head
from ..face.brows import BrowRide, brow_density, brow_glsl
from ..face.dressing import DressingConfig, FaceDressing
from ..face.geometry import ring_matrix, rings_away, smooth_over, vertex_normals
from ..models.checkpoint import cpu_threads
from . import gl_worker
from .camera import Camera
from .raster import Rasterizer
from .shading import concavity, linear_to_srgb, srgb_to_linear, template_shading
from .undressed import plain_dressing
from .wrinkles import ATTRIBUTES as WRINKLE_ATTRIBUTES
from .wrinkles import WrinkleConfig, Wrinkles, darkening, line_masks, nasolabial_folds, wrinkle_glsl
from .yuv import rgb_to_yuv420

logger = logging.getLogger(__name__)

SHININESS_SQUARINGS = 4  # Blinn-Phong exponent 2**4 = 16: a broad, soft sheen
BACK_FACE_LIGHT = 0.35  # surfaces seen from behind (the inside of the head) get a third of the light
CREASE_FLOOR = 0.35  # the deepest crease keeps a third of the albedo: a fold, never a black line
# Half-and-half with the one-ring mean, this many times: vertices sit about 3 mm apart, so unsmoothed
# creases mottle a raised cheek like dirt; smoothed they spread over a centimetre, as a fold does.
CREASE_SMOOTHING = 3
CREASE_MIN = 2e-6  # m: smaller creases are smoothing's spill and rounding (0.1% darkening), not folds
_CPU_CANDIDATES = 1_000_000  # pixel-row candidates per chunk on CPU: small tensors stay cache- and allocator-friendly
_CUDA_CANDIDATES = 32_000_000  # per chunk on CUDA: big launches amortise kernel overhead
_PLAN_FRAMES = 256  # frames moved to the device and planned into chunks at a time
_DRESSING_SHEEN = 2.0  # eyes and teeth are wet: twice the skin's sheen
_HAIR_SHEEN = 0.3  # short hair scatters light: a third of the skin's sheen, never a plastic gloss
_NECK_TINT_RINGS = 10  # vertex rings of the face above the neck over which the cavity tint fades in
_GL_FRAMES = 8  # frames whose vertex attributes go to OpenGL at a time: 3 MB for a dressed head, which stays in
                # cache, and on a GPU computing the next ones overlaps most of the drawing
BACKENDS = ("auto", "gl", "torch")
PIXEL_FORMATS = ("rgb24", "yuv420p")  # what `Renderer.__call__` returns: RGB, or the video encoder's planar YUV 4:2:0


@dataclass(frozen=True)
class RenderConfig:
    """How frames look. Colours are sRGB in [0, 1]; light directions are in camera space (+z to viewer)."""

    size: int = 512  # px, frames are square
    background: tuple[float, float, float] = (0.17, 0.18, 0.21)  # dark slate: skin stands out
    skin: tuple[float, float, float] = (0.90, 0.72, 0.62)  # light skin albedo
    lips: tuple[float, float, float] = (0.78, 0.45, 0.45)  # lip tint, used by `Renderer.for_rig`
    cavity: tuple[float, float, float] = (0.45, 0.16, 0.15)  # albedo of the face's own inner lips and mouth cavity
    eyes: bool = True  # `Renderer.for_rig` puts eyeballs in open eye sockets
    hair: bool = True  # `Renderer.for_rig` puts short hair on a rig whose dressing carries it
    neck: bool = True  # `Renderer.for_rig` puts a neck under a rig whose dressing carries one
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
    fold_strength: float = 0.45  # depth of the nasolabial folds as the cheek and upper lip rise, 0 off
    fov_deg: float = 18.0  # vertical field of view, deg (a portrait lens); 0 means orthographic
    yaw_deg: float = 0.0  # camera orbit about the vertical axis, deg (+ toward the face's left)
    pitch_deg: float = 4.0  # camera orbit above the face, deg: a slight look down reads naturally
    margin: float = 0.06  # fraction of the frame left empty on each side of the template
    cavity_depth: float = 0.006  # template units (m) behind the visible surface for full cavity tint
    supersample: int = 1  # render at k x size and average k x k blocks (anti-aliasing, k^2 cost)
    max_candidates: int | None = None  # pixel-row candidates per chunk of frames; None: by device
    # Who draws: "auto" is OpenGL where it works and supersample is 1: on a CPU device (llvmpipe, several
    # times faster) and on a CUDA device when OpenGL runs on a GPU driver; else the torch rasterizer.
    # "torch" always the rasterizer; "gl" OpenGL or an error.
    backend: str = "auto"
    gl_tiles: int | None = None  # frames per OpenGL draw call (tiles of one framebuffer); None: by driver
    # llvmpipe with two cores or more: a child process draws a share of a clip's frames, a block
    # whenever it is idle (`render.gl_worker`, the same bytes); False draws every frame in this process.
    gl_worker: bool = True

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
        if self.gl_tiles is not None and self.gl_tiles < 1:
            raise ValueError(f"gl_tiles must be None or at least 1, got {self.gl_tiles}")


class Renderer:
    """Render vertex sequences of one topology with a camera framed once on the template.

    triangles: (F, 3) int. template_vertices: (V, 3) float, in the units of the frames to render.
    vertex_colours: optional (V, 3) sRGB albedo in [0, 1]; default `config.skin` everywhere.
    static_mesh: optional (vertices (E, 3), triangles (G, 3) indexing them, sRGB colours (E, 3)),
    drawn unchanged in every frame (e.g. eyeballs).
    dressing: optional `FaceDressing` for this face (V must match): its parts are moved per frame
    from the face vertices (and gaze) and drawn in its colours, which replace `vertex_colours`.
    Ambient occlusion and the cavity tint come from the face alone; attached parts keep their colour.
    wrinkle_mask: optional (V, 2) in [0, 1], where the skin shows [vertical, horizontal] fine lines
    when squeezed (`wrinkles.line_masks`); None draws none. folds: optional `wrinkles.FoldMasks`,
    the nasolabial folds that deepen as the cheek and upper lip rise (drawn with the fine lines).
    two_sided: optional (F,) bool over the drawn triangles (the dressing's where dressed), those whose
    back faces show; default every triangle, or a dressing's thin sheets (`dressing.TWO_SIDED`).
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
        folds=None,
        two_sided=None,
    ):
        self.config = config = config or RenderConfig()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dressing = dressing
        tmpl, tri, colours, static_v, face_tri, self.num_vertices = _scene(
            triangles, template_vertices, config, vertex_colours, static_mesh, dressing)
        self.static_vertices = static_v.float().to(self.device)  # (E, 3)
        self.pivot = torch.as_tensor(head_pivot(tmpl[: self.num_vertices].numpy()), dtype=torch.float32, device=self.device)
        self.triangles = tri.to(self.device)
        # A dressed head is drawn as games draw one: back faces only for the thin sheets (lashes, hair).
        if two_sided is None and dressing is not None:
            two_sided = dressing.two_sided()
        self.two_sided = None if two_sided is None else _host_tensor(two_sided).bool().to(self.device)
        self.raster = Rasterizer(self.triangles, self.two_sided)
        face = tmpl[: self.num_vertices]  # (V, 3): framing, occlusion and cavity come from the face alone

        self.camera = Camera.frame(face, config, self.device)  # framed on the face alone
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
        # Both come from the skin alone (the face and a dressing's neck, one welded surface, so the
        # neck shades the under-jaw and carries on its shading); other parts keep their own colour.
        self.face_triangles = face_tri.to(dev)
        face32 = face.float().to(dev)
        skin_index, skin_tri = dressing.skin() if dressing is not None else (np.arange(self.num_vertices), face_tri)
        self.skin_index = torch.as_tensor(skin_index, dtype=torch.long, device=dev)  # (S,)
        skin_tri = torch.as_tensor(skin_tri, dtype=torch.long, device=dev)
        skin32 = tmpl[skin_index].float().to(dev)  # (S, 3)
        albedo = srgb_to_linear(colours.clamp(0, 1)).to(dev)  # (V+E, 3)
        skin_occlusion, skin_hidden = template_shading(skin32, Rasterizer(skin_tri), self.camera, config, fit=len(face))
        if len(skin_index) > self.num_vertices:
            # The cavity tint is for the inside of the mouth; the neck, and the face just above it
            # (hidden under the chin at rest), are outer skin that a raised chin shows.
            neck = torch.arange(len(skin_index), device=dev) >= self.num_vertices
            skin_hidden = skin_hidden * rings_away(neck, skin_tri, _NECK_TINT_RINGS)
        occlusion = torch.zeros(len(tmpl), device=dev).index_copy_(0, self.skin_index, skin_occlusion)
        hidden = torch.zeros(len(tmpl), device=dev).index_copy_(0, self.skin_index, skin_hidden)
        base = torch.lerp(albedo, cavity.expand_as(albedo), hidden[:, None])
        base = base * (1 - config.occlusion_strength * occlusion)[:, None]
        sheen = config.specular * (1 - occlusion) * (1 - hidden)
        is_skin = torch.zeros(len(tmpl), dtype=torch.bool, device=dev).index_fill_(0, self.skin_index, True)
        sheen[self.num_vertices :] *= torch.where(is_skin[self.num_vertices :], 1.0, _DRESSING_SHEEN)
        for part in ("hair", "lashes"):  # hair, lashes included, is dry
            if dressing is not None and part in dressing.ranges:
                a, b = dressing.ranges[part]
                sheen[a:b] = config.specular * _HAIR_SHEEN
        self.material = torch.cat([base, sheen[:, None]], -1).contiguous()  # (V+E, 4)
        # Brows drawn per pixel (`face.brows`): rest-pose coordinates per vertex and the albedo factor
        # of full paint, brow over skin in linear light (the skin is the only colour under a brow).
        self.brows = torch.zeros(len(tmpl), 3, device=dev)  # at rest
        self.brow_tint = torch.ones(3, device=dev)
        self.brow_ride = None
        if dressing is not None and bool(dressing.brows[:, 2].any()):
            *colour, opacity = dressing.brow_paint
            ratio = srgb_to_linear(torch.tensor(colour)) / srgb_to_linear(torch.tensor(config.skin))
            self.brows = dressing.brows.to(dev)
            self.brow_tint = (1 + opacity * (ratio - 1)).to(dev)
            self.brow_ride = BrowRide(dressing.brows[: self.num_vertices].numpy(), face.numpy()).to(dev)
        # Reference concavity of the skin at rest: only creases the animation adds darken.
        self.ring = ring_matrix(skin_tri, len(skin_index))
        rest_normals = vertex_normals(skin32[None], skin_tri)
        self.rest_concavity = concavity(skin32[None], rest_normals, self.ring)[0]  # (S,)
        self.wrinkle_config = WrinkleConfig(strength=config.wrinkle_strength, fold_strength=config.fold_strength)
        self.wrinkles = None
        if wrinkle_mask is not None and config.wrinkle_strength > 0:
            mask = _host_tensor(wrinkle_mask).float()
            if mask.shape != (self.num_vertices, 2):
                raise ValueError(f"wrinkle_mask must have shape ({self.num_vertices}, 2), got {tuple(mask.shape)}")
            self.wrinkles = Wrinkles(face32, self.face_triangles, mask.to(dev), self.wrinkle_config, folds)
        self._gl_spec: dict = {}  # the drawer's arguments, for a `gl_worker` to build the same
        self.gl = self._gl_drawer()
        self._worker = None  # a `gl_worker.DrawWorker` once a clip or `start_worker` asked for one
        self._worker_failed = False  # a worker failed here once: this renderer draws alone from then on

    @property
    def backend(self) -> str:
        """Who draws the frames: "gl" (OpenGL) or "torch" (the rasterizer)."""
        return "gl" if self.gl is not None else "torch"

    def _gl_drawer(self):
        """A `gl.GLDrawer` for this renderer where the config and the machine allow one (`gl.choose`), else None."""
        cfg = self.config
        if cfg.backend == "torch":
            return None
        from . import gl

        use, why = gl.choose(cfg.backend, self.device.type, cfg.supersample)
        if not use:
            if cfg.backend == "gl":
                raise RuntimeError(f"{why}; use backend='torch'")
            if why:
                gl.log_fallback(why)
            return None
        if cfg.supersample > 1:
            raise ValueError("the OpenGL backend draws supersample=1 only; use backend='torch' to supersample")
        count = len(self.light_intensities)
        # Triangles with no corner that can carry a line, a fold or a brow (most of the head) get the
        # shader without them: less work per pixel, the same pixels.
        carriers = self.brows[:, 2] > 0  # (V+E,) the brow gate, fixed per vertex
        if self.wrinkles is not None:
            carriers[: self.num_vertices] |= self.wrinkles.carriers()
        detailed = carriers[self.triangles].any(-1).cpu().numpy()
        self._gl_spec = dict(
            triangles=self.triangles.cpu().numpy(), num_vertices=len(self.material), size=cfg.size, focal=self.camera.focal,
            distance=self.camera.distance, near=self.camera.depth_near, far=self.camera.depth_far, ortho=cfg.fov_deg == 0, lights=self.light_matrix[:, :count].T.cpu().numpy(),
            halfways=self.light_matrix[:, count:].T.cpu().numpy(), intensities=self.light_intensities.cpu().numpy(),
            ambient=cfg.ambient, back_light=BACK_FACE_LIGHT, background=self.background.cpu().numpy(),
            tie_bias=1.5 / self.raster.levels,
            wrinkle=(self.wrinkle_config.strength, self.wrinkle_config.sharpness, self.wrinkle_config.fold_strength),
            brow_tint=self.brow_tint.cpu().numpy(), tiles=cfg.gl_tiles, srgb_table=self.srgb_table.cpu().numpy(), detailed=detailed,
            two_sided=None if self.two_sided is None else self.two_sided.cpu().numpy(),
            detail_functions=wrinkle_glsl(self.wrinkle_config.sharpness) + "\n" + brow_glsl(),
        )
        return gl.GLDrawer(**self._gl_spec)

    @classmethod
    def for_rig(cls, rig, config: RenderConfig | None = None, device=None) -> "Renderer":
        """A renderer for a `FaceRig`, framed on its neutral template. A rig that carries a
        dressing is dressed (`FaceDressing.for_rig`, in this config's skin, lip, iris and sclera
        colours); others get tinted lips (from the 'lips' region) and static eyeballs in open eye
        sockets (found from the 'eyes' region)."""
        config = config or RenderConfig()
        if getattr(rig, "dressing", None):
            dressing = FaceDressing.for_rig(rig, replace(dressing_config(config), painted_brows=False))
            return cls(rig.triangles, rig.vertices, config, device=device, dressing=dressing, wrinkle_mask=line_masks(rig),
                       folds=nasolabial_folds(rig))
        colours, static_mesh = plain_dressing(rig, config)
        return cls(rig.triangles, rig.vertices, config, device=device, vertex_colours=colours, static_mesh=static_mesh)

    @torch.inference_mode()
    def __call__(self, vertices, gaze=None, head_rotation=None, pixel_format: str = "rgb24") -> np.ndarray:
        """vertices (T, V, 3) or (V, 3), numpy or torch -> uint8 frames (T, H, W, 3) or (H, W, 3).

        pixel_format: "rgb24", or "yuv420p" for frames (T, 3H/2, W) or (3H/2, W) in the video
        encoder's own format (`yuv.rgb_to_yuv420`, converted on this renderer's device; even sizes only).

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
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {', '.join(PIXEL_FORMATS)}, got {pixel_format!r}")
        yuv = pixel_format == "yuv420p"
        if yuv and size % 2:
            raise ValueError(f"yuv420p frames need an even size, got {size} px; use pixel_format='rgb24'")
        out = np.empty((len(verts), size * 3 // 2, size) if yuv else (len(verts), size, size, 3), dtype=np.uint8)
        for first in range(0, len(verts), _PLAN_FRAMES):  # long clips: plan chunks a block at a time
            block = verts[first : first + _PLAN_FRAMES].to(self.device, torch.float32)
            if self.dressing is not None:
                look = None if gaze is None else gaze[first : first + _PLAN_FRAMES].to(self.device)
                block = self.dressing(block, look)  # (T, V+H, 3)
            elif len(self.static_vertices):
                block = torch.cat([block, self.static_vertices.expand(len(block), -1, -1)], 1)  # (T, V+E, 3)
            brows = self._brows(block)  # (T, V+E, 3) from the head-local vertices
            if head_rotation is not None:  # after dressing: teeth, eyes and lashes turn with the head
                block = rotate_head(block, head_rotation[first : first + _PLAN_FRAMES].to(self.device), self.pivot)
            if self.gl is not None and (not yuv or self.gl.frames_per_call > 1):  # tiles convert in OpenGL
                self._draw_gl(block, brows, out[first : first + len(block)], pixel_format)
                continue
            if self.gl is not None:
                rgb = np.empty((len(block), size, size, 3), np.uint8)
                self._draw_gl(block, brows, rgb)
                out[first : first + len(block)] = rgb_to_yuv420(torch.from_numpy(rgb).to(self.device)).cpu().numpy()
                continue
            for start, end in self._chunks(block):
                frames = self._render_chunk(block[start:end], brows[start:end])  # (T, H, W, 3) on the device
                out[first + start : first + end] = (rgb_to_yuv420(frames) if yuv else frames).cpu().numpy()
        return out[0] if len(shape) == 2 else out

    def _chunks(self, verts: torch.Tensor) -> list[tuple[int, int]]:
        """Frame ranges of at most `max_candidates` pixel rows x bounding-box widths in all."""
        n = self.config.size * self.config.supersample
        x, y, _, _ = self.camera.project(verts, n)
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

    def _brows(self, verts: torch.Tensor) -> torch.Tensor:
        """Head-local vertices (T, V+E, 3) -> brow coordinates (T, V+E, 3) (`face.brows`)."""
        brows = self.brows.expand(verts.shape[0], -1, -1)
        if self.brow_ride is None:
            return brows
        v = self.num_vertices
        return torch.cat([self.brow_ride(verts[:, :v]), brows[:, v:]], 1)

    def _render_chunk(self, verts: torch.Tensor, brows: torch.Tensor) -> torch.Tensor:
        """Vertices (T, V, 3) and their brow coordinates (T, V, 3) -> uint8 frames (T, H, W, 3)."""
        cfg = self.config
        t_count = verts.shape[0]
        n = cfg.size * cfg.supersample
        x, y, depth, q = self.camera.project(verts, n)
        zbuf, planes, area = self.raster(x, y, q, n)
        pix = torch.nonzero(zbuf != self.raster.empty).squeeze(1)  # (M,) covered pixels
        colour = self._shade_pixels(verts, brows, depth, zbuf, planes, area, pix, n)  # (M, 3) linear
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

    def start_worker(self) -> bool:
        """Start the child process that draws a share of a clip's frames (`render.gl_worker`) now,
        where this renderer draws with llvmpipe, `RenderConfig.gl_worker` is on and the system allows
        one; otherwise its first clip would start it and draw alone until it is ready (about 0.15 s).
        Returns whether a worker is running."""
        if not (self.config.gl_worker and self.gl is not None and not self.gl.hardware):
            return False
        if self._worker is not None and self._worker.owner != os.getpid():  # a forked copy: its parent's worker
            self._worker = None
        if self._worker is None and not self._worker_failed and gl_worker.available():
            try:
                self._worker = gl_worker.DrawWorker(self._gl_spec, _GL_FRAMES)
            except (OSError, gl_worker.DrawWorkerError) as err:
                self._worker_lost(err)
        return self._worker is not None

    def _worker_lost(self, err: Exception) -> None:
        logger.warning("drawing every frame in this process: %s", err)
        if self._worker is not None:
            self._worker.close()
        self._worker, self._worker_failed = None, True

    def _draw_gl(self, verts: torch.Tensor, brows: torch.Tensor, out: np.ndarray, pixel_format: str = "rgb24") -> None:
        """Vertices and brow coordinates (T, V, 3) -> uint8 frames written into out (T, H, W, 3) (or
        (T, 3H/2, W) for "yuv420p", from tiles), drawn by OpenGL from the
        same per-vertex camera-space positions, normals and material the torch path interpolates.

        A GPU driver draws while the attributes of the next _GL_FRAMES frames are computed on a second
        thread. llvmpipe gets them computed in turn: its threads wait for each other at every frame, so
        a thread that takes one of the two cores from them stalls both, and the clip drew 0.2 s slower
        that way (docs/speed.md). Of a clip longer than one block, the worker process (`start_worker`)
        draws a share once it is ready (`_draw_gl_shared`)."""
        step = max(_GL_FRAMES, self.gl.frames_per_call)  # a GPU driver draws a block of tiles per call
        spans = [(start, min(start + step, len(verts))) for start in range(0, len(verts), step)]
        if self.gl.hardware:
            self._draw_gl_ahead(verts, brows, out, pixel_format, spans)
            return

        def attributes(span):
            return self._gl_attributes(verts[slice(*span)], brows[slice(*span)])

        worker = self._worker if len(spans) > 1 and self.start_worker() else None
        if worker is None or not worker.lock.acquire(blocking=False):  # none, or another thread's clip has it
            for span in spans:
                self.gl(attributes(span), out[slice(*span)], pixel_format)
            return
        try:
            self._draw_gl_shared(worker, spans, attributes, out)
        finally:
            worker.lock.release()

    def _draw_gl_shared(self, worker, spans, attributes, out) -> None:
        """`_draw_gl` on llvmpipe with a worker: once it is ready, the worker is given the next block
        whenever it is idle, and this process draws a block in between (and computes every block's
        attributes); should the worker fail, this process draws what it had and the rest."""
        pending, i = None, 0  # the span the worker draws; the next span not yet drawn or given out
        try:
            while i < len(spans) or pending is not None:
                if pending is not None and (i == len(spans) or worker.done()):
                    out[slice(*pending)] = worker.result()
                    pending = None
                if pending is None and i + 1 < len(spans) and worker.ready():
                    pending, i = spans[i], i + 1
                    worker.submit(attributes(pending))
                if i < len(spans):
                    self.gl(attributes(spans[i]), out[slice(*spans[i])])
                    i += 1
        except gl_worker.DrawWorkerError as err:
            self._worker_lost(err)
            for span in ([pending] if pending is not None else []) + spans[i:]:
                self.gl(attributes(span), out[slice(*span)])

    def _draw_gl_ahead(self, verts, brows, out, pixel_format, spans) -> None:
        """`_draw_gl` on a GPU driver: the next block's attributes are computed on a second thread."""
        with ThreadPoolExecutor(1, thread_name_prefix="gl-attributes") as pool:
            pending = pool.submit(self._gl_attributes, verts[slice(*spans[0])], brows[slice(*spans[0])])
            for i, (start, end) in enumerate(spans):
                attributes = pending.result()
                if i + 1 < len(spans):
                    pending = pool.submit(self._gl_attributes, verts[slice(*spans[i + 1])], brows[slice(*spans[i + 1])])
                self.gl(attributes, out[start:end], pixel_format)

    @torch.inference_mode()
    def _gl_attributes(self, verts: torch.Tensor, brows: torch.Tensor) -> np.ndarray:
        """Vertices and brow coordinates (T, V, 3) -> the OpenGL drawer's per-vertex attributes (T, V, 19) float32."""
        with cpu_threads(1):  # llvmpipe's threads have the cores; a few frames' geometry is small work
            cam = (verts - self.camera.centre) @ self.camera.rotation.T  # (T, V, 3)
            attributes = torch.cat([cam, *self._vertex_attributes(verts), brows], -1)  # (T, V, 19)
            if attributes.device.type != "cuda":
                return attributes.numpy()
            # Page-locked host memory: the copy runs at the bus's speed (4x a pageable copy on the H100 host).
            host = torch.empty(attributes.shape, dtype=attributes.dtype, pin_memory=True)
            return host.copy_(attributes).numpy()

    def creases(self, verts: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Skin vertices and their world normals (T, S, 3) (`skin_index`: the face, then a neck) -> new
        concavity against the rest skin (T, S), m, > 0 in a crease, smoothed over the surface
        (`CREASE_SMOOTHING`); linear in the concavity, so the live page can sum it per unit (`live.look`)."""
        crease = (concavity(verts, normals, self.ring) - self.rest_concavity).T.contiguous()  # (S, T)
        return smooth_over(crease, self.ring, CREASE_SMOOTHING).T

    def _vertex_attributes(self, verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vertices (T, V, 3) -> camera-space normals (T, V, 3), material (T, V, 4): linear albedo
        after the cavity tint, occlusion and this frame's crease darkening, and sheen; and the
        wrinkle attributes (T, V, 6) that the shading turns into fine lines and folds (zeros: none)."""
        world = vertex_normals(verts, self.triangles)  # (T, V, 3)
        normals = world @ self.camera.rotation.T  # (T, V, 3) camera space
        material = self.material.expand(verts.shape[0], -1, -1)
        if self.config.crease_strength > 0:
            # New concavity (mm) darkens the albedo: the folds of a frown or a nose wrinkle.
            skin = self.skin_index
            crease = self.creases(verts[:, skin], world[:, skin])
            crease = crease.where(crease > CREASE_MIN, 0.0)
            dark = (1 - self.config.crease_strength * 1000 * crease).clamp(min=CREASE_FLOOR)  # (T, S)
            dark = torch.ones(verts.shape[:2], device=verts.device).index_copy_(1, skin, dark)  # (T, V+E)
            material = torch.cat([material[..., :3] * dark[..., None], material[..., 3:]], -1)
        if self.wrinkles is None:
            wrinkle = torch.zeros(*verts.shape[:2], WRINKLE_ATTRIBUTES, device=verts.device)
        else:
            wrinkle = self.wrinkles.attributes(verts[:, : self.num_vertices], verts.shape[1])
        return normals, material, wrinkle

    def _shade_pixels(self, verts, brows, depth, zbuf, planes, area, pix, n: int) -> torch.Tensor:
        """Shade the covered pixels `pix` (M,) of the flat z-buffer `zbuf` of vertices (T, V, 3) with
        brow coordinates (T, V, 3): -> linear RGB (M, 3)."""
        t_count, f_count = verts.shape[0], len(self.triangles)
        if len(pix) == 0:
            return torch.zeros(0, 3, device=verts.device)
        # One row per (frame, triangle) holding everything shading needs, so that each pixel does
        # a single contiguous gather: 3 perspective-weighted barycentric planes (9), a back-facing
        # flag (1) and per corner the camera-space normal (3), base colour (3), sheen (1), wrinkle (6)
        # and brow (3).
        per_vertex = torch.cat([*self._vertex_attributes(verts), brows], -1)  # (T, V, 16)
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
        base = attr[:, 3:6] * darkening(attr[:, 7:13], self.wrinkle_config)[:, None]
        base = base * torch.lerp(self.white, self.brow_tint, brow_density(attr[:, 13:16])[:, None])
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
        for _ in range(SHININESS_SQUARINGS):  # spec ** (2 ** squarings) without a slow pow
            spec = spec * spec
        spec = spec @ self.light_intensities  # (M,)
        # Back faces take their vertex colour, already the dark cavity colour where the template hides
        # them (the inside of the head); thin folds at the surface (eyelid corners) stay skin.
        light = diffuse.add_(self.config.ambient) * torch.where(back, BACK_FACE_LIGHT, 1.0)
        return torch.addcmul(base * light[:, None], (sheen * spec * ~back)[:, None], self.white)

def _scene(triangles, template_vertices, config: RenderConfig, vertex_colours, static_mesh, dressing):
    """The checked inputs of a `Renderer` as one mesh: template (V+E, 3) float64 at rest, triangles,
    sRGB colours (V+E, 3), static vertices (E', 3), the face's own triangles and V; the E extra
    vertices are the dressing's or the static mesh's (E' = E)."""
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
    face_tri, v_count = tri, len(tmpl)
    static_v = torch.zeros(0, 3, dtype=torch.float64)
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
    return tmpl, tri, colours, static_v, face_tri, v_count


def _host_tensor(array) -> torch.Tensor:
    """A CPU tensor from a numpy array, sequence or tensor (detached: rendering needs no gradients)."""
    return array.detach().cpu() if isinstance(array, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(array))  # a reversed view has negative strides


def dressing_config(config: RenderConfig) -> DressingConfig:
    """The dressing that goes with a render config (its skin, lips, iris, sclera; eyes, hair and neck on or off)."""
    return DressingConfig(skin=config.skin, lips=config.lips, iris=config.iris, sclera=config.sclera, eyes=config.eyes,
                          hair=config.hair, neck=config.neck)


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
