"""Colour spaces and the per-vertex shading terms the renderer computes once on the template.

There are no teeth on a bare face, so an open mouth must read as a dark opening. Two per-vertex
terms do it: ambient occlusion (the cavity and inner lips are closed in) and hidden depth (how far
behind the template's visible surface, seen from the render camera, a vertex lies), which tints
toward a dark cavity colour. Creases that the animation makes (a frown, a nose wrinkle) darken with
the per-frame concavity of the skin against the template's.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf

from ..constants import ASSETS_DIR, CACHE_ENV, DEFAULT_CACHE_DIR
from ..face.geometry import ring_mean, smooth, vertex_normals
from .camera import Camera
from .raster import Rasterizer, sample_furthest, surface_code

AO_DIRECTIONS = 48  # view directions sampled over the sphere for ambient occlusion
AO_SIZE = 160  # px, resolution of the ambient-occlusion depth maps
SHADING_CACHE_VERSION = 1  # bump when ambient_occlusion or hidden_depth change what they compute
# The shipped rig's template shading at the video camera, which every size of 256 px or more shares
# (tools/build_face_rig.py writes it): a new install's first renderer reads it instead of spending
# half a second of the core that the speech model and the DFM need.
SHIPPED_SHADING_DIR = ASSETS_DIR / "shading"


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded colour in [0, 1] -> linear light, elementwise."""
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB encoding, elementwise."""
    c = c.clamp(0, 1)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp(min=1e-8) ** (1 / 2.4) - 0.055)


def look_rotation(direction: torch.Tensor) -> torch.Tensor:
    """Rotations (K, 3, 3) whose third row is each unit `direction` (K, 3): camera +z = direction."""
    up = torch.where(direction[:, 1:2].abs() > 0.9, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    right = nnf.normalize(torch.cross(up.expand_as(direction), direction, dim=-1), dim=-1)
    true_up = torch.cross(direction, right, dim=-1)
    return torch.stack([right, true_up, direction], 1)


def sphere_directions(count: int) -> torch.Tensor:
    """(count, 3) unit vectors spread evenly over the sphere (Fibonacci lattice), deterministic."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / count
    phi = i * math.pi * (3 - math.sqrt(5))
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1).float()


def template_shading(face: torch.Tensor, raster: Rasterizer, camera: Camera, config,
                     fit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ambient occlusion and hidden depth of the face template (V, 3), each (V,): computed once per
    face, camera and size (a `RenderConfig`), then read from the cache folder ($BLENDTALK_CACHE, else
    ~/.cache/blendtalk) because they are most of the time a renderer takes to build; the shipped
    rig's at the video camera ships (SHIPPED_SHADING_DIR). An unwritable
    cache is skipped. fit: the occlusion maps' scale comes from the first `fit` vertices (the face of
    a face with a neck; None: all)."""
    cfg = config
    key = hashlib.sha256()
    for part in (face.cpu().numpy(), raster.triangles.cpu().numpy().astype(np.int64)):
        key.update(str(part.shape).encode() + np.ascontiguousarray(part).tobytes())
    key.update(repr((SHADING_CACHE_VERSION, AO_DIRECTIONS, AO_SIZE, min(cfg.size * cfg.supersample, 256),
                     camera.distance, camera.focal, camera.depth_near, camera.depth_far, cfg.cavity_depth, cfg.fov_deg,
                     cfg.yaw_deg, cfg.pitch_deg, camera.centre.tolist(), fit)).encode())
    path = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser() / f"shading_{key.hexdigest()[:24]}.npz"
    for known in (SHIPPED_SHADING_DIR / path.name, path):
        try:
            with np.load(known, allow_pickle=False) as z:
                occlusion, hidden = z["occlusion"], z["hidden"]
            if occlusion.shape == hidden.shape == (len(face),):
                return torch.from_numpy(occlusion).to(face.device), torch.from_numpy(hidden).to(face.device)
        except (OSError, KeyError, ValueError):
            pass  # not shipped, not cached yet (or unreadable): compute it
    n = min(cfg.size * cfg.supersample, 256)  # the tint is smooth; a coarse map is enough
    occlusion, hidden = ambient_occlusion(face, raster, fit), hidden_depth(face, raster, camera, n, cfg.cavity_depth)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # atomic: concurrent processes may write it too
        np.savez(tmp, occlusion=occlusion.cpu().numpy(), hidden=hidden.cpu().numpy())
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: compute it again next time
    return occlusion, hidden


def ambient_occlusion(tmpl: torch.Tensor, raster: Rasterizer, fit: int | None = None) -> torch.Tensor:
    """(V,) share of each vertex's cosine-weighted hemisphere that the template (V, 3) itself blocks.

    Orthographic depth maps of the template from `AO_DIRECTIONS` directions; a vertex counts
    as lit from a direction if it is no deeper than the surface around its pixel there. The maps
    are `AO_SIZE` px across the first `fit` vertices (None: all), growing to hold the rest: a neck
    worn under a face does not coarsen the face's occlusion."""
    dirs = sphere_directions(AO_DIRECTIONS)  # (K, 3) toward each viewer
    rot = look_rotation(dirs).to(tmpl.device)  # (K, 3, 3)
    dirs = dirs.to(tmpl.device)
    centre = (tmpl.amin(0) + tmpl.amax(0)) / 2
    radius = float((tmpl - centre).norm(dim=-1).max())
    ref = tmpl[:fit]
    ref_radius = float((ref - (ref.amin(0) + ref.amax(0)) / 2).norm(dim=-1).max())
    n = math.ceil(AO_SIZE * radius / ref_radius)
    local = torch.einsum("kij,vj->kvi", rot, tmpl - centre)  # (K, V, 3)
    scale = 0.5 * AO_SIZE * 0.98 / ref_radius
    x, y = 0.5 * n + local[..., 0] * scale, 0.5 * n - local[..., 1] * scale
    q = (radius - local[..., 2]) / (2 * radius)  # nearer the viewer = smaller
    zbuf, _, _ = raster(x, y, q, n)
    far = sample_furthest(surface_code(zbuf, n, raster), x, y, radius=1)  # (K, V)
    visible = (q <= far + 1.5 / scale / (2 * radius)).float()  # (K, V), 1.5 px of depth slack
    weight = (vertex_normals(tmpl, raster.triangles) @ dirs.T).clamp(min=0).T  # (K, V) cosine weights
    lit = (weight * visible).sum(0) / weight.sum(0).clamp(min=1e-6)
    # Open convex skin still loses a little to the finite slack: rescale so that it reads as 0.
    return smooth(((0.9 - lit) / 0.8).clamp(0, 1), raster.triangles, steps=2)


def hidden_depth(tmpl: torch.Tensor, raster: Rasterizer, camera: Camera, n: int, cavity_depth: float) -> torch.Tensor:
    """(V,) in [0, 1]: how far each vertex of the template (V, 3) lies behind its visible surface as
    `camera` sees it in an n-px map, relative to `cavity_depth`. Hidden at rest, exposed when the jaw
    opens: the mouth cavity and inner lips."""
    x, y, depth, q = camera.project(tmpl[None], n)
    zbuf, _, _ = raster(x, y, q, n)
    far = sample_furthest(surface_code(zbuf, n, raster), x, y, radius=1)[0]  # (V,)
    behind = (depth[0] - camera.surface_depth(far)).nan_to_num(0.0)
    tint = ((behind - 0.2 * cavity_depth) / (0.8 * cavity_depth)).clamp(0, 1)
    return smooth(tint, raster.triangles, steps=2)


def concavity(verts: torch.Tensor, normals: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """How far each vertex lies below its one-ring mean along its unit normal: verts and normals
    (T, V, 3), ring from `geometry.ring_matrix` -> (T, V), in the vertices' units (> 0 in a crease)."""
    t_count, v_count, _ = verts.shape
    flat = verts.permute(1, 0, 2).reshape(v_count, t_count * 3)  # (V, T*3): vertex-major for the sparse product
    mean = ring_mean(flat, ring).reshape(v_count, t_count, 3).permute(1, 0, 2)  # (T, V, 3)
    return ((mean - verts) * normals).sum(-1)
