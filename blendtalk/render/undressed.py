"""The look of a rig that carries no dressing (`blendtalk.face.dressing`), for the renderer and the
Plotly view: tinted lips (from its 'lips' region) and, where the template has open eye sockets
(found from its 'eyes' region), two static eyeballs in them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf

from ..face.dressing import eyeball_cap, lip_tint
from .raster import Rasterizer


def plain_dressing(rig, config) -> tuple[np.ndarray, tuple | None]:
    """Per-vertex sRGB colours (V, 3) with tinted lips, and eyeballs (vertices, triangles, colours)
    for the template's open eye sockets, or None, in a `RenderConfig`'s colours."""
    skin = torch.tensor(config.skin, dtype=torch.float32)
    colours = skin.expand(rig.num_vertices, 3).clone()
    if "lips" in rig.masks:
        lips = torch.as_tensor(lip_tint(rig.masks["lips"], rig.triangles))
        colours += lips[:, None] * (torch.tensor(config.lips) - skin)
    static_mesh = None
    if config.eyes and "eyes" in rig.masks:
        parts = [eyeball(c, r, config) for c, r in eye_sockets(rig)]
        if parts:
            offsets = np.cumsum([0] + [len(v) for v, _, _ in parts[:-1]])
            static_mesh = (
                np.concatenate([v for v, _, _ in parts]),
                np.concatenate([t + o for (_, t, _), o in zip(parts, offsets)]),
                np.concatenate([c for _, _, c in parts]),
            )
    return colours.numpy(), static_mesh


def eye_sockets(rig, n: int = 256) -> list[tuple[np.ndarray, float]]:
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


def eyeball(centre: np.ndarray, radius: float, config):
    """An eyeball cap looking down +z: vertices (E, 3), triangles (G, 3), sRGB colours (E, 3)."""
    palette = np.array(
        [(0.06, 0.05, 0.05), config.iris, tuple(0.6 * c for c in config.iris), config.sclera], dtype=np.float32
    )
    cap, tris, colours = eyeball_cap(palette)
    return (centre + radius * cap).astype(np.float32), tris, colours
