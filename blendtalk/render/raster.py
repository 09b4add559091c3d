"""A pure-torch z-buffer rasterizer, any resolution, CPU or CUDA (no OpenGL, OSMesa or pytorch3d).

Per chunk of frames: cut every triangle into pixel rows and solve its edges for the covered span of
each row; pad the spans to a few widths so each width is one dense grid; pack (quantised depth,
triangle id) into one integer key and keep the nearest per pixel with a single `scatter_reduce(amin)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

EDGE_EPS = 1e-4  # barycentric slack: float32 round-off must not open one-pixel cracks on shared edges
SPAN_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # px; row spans are padded to these widths


class Rasterizer:
    """Nearest-triangle z-buffer for one triangle list, any resolution, CPU or CUDA.

    triangles: (F, 3) long on the target device. Keys pack a quantised depth code above the
    triangle id, so one integer `amin` per pixel performs the depth test. two_sided: optional (F,)
    bool, the triangles whose back faces are drawn; the others only where they face the camera
    (None: every triangle both sides).
    """

    def __init__(self, triangles: torch.Tensor, two_sided: torch.Tensor | None = None):
        self.triangles = triangles
        if two_sided is not None and tuple(two_sided.shape) != (len(triangles),):
            raise ValueError(f"two_sided must have shape ({len(triangles)},), got {tuple(two_sided.shape)}")
        self.one_sided = None if two_sided is None or bool(two_sided.all()) else ~two_sided.to(triangles.device, torch.bool)
        self.tri_bits = max(1, int(len(triangles) - 1).bit_length())
        self.tri_mask = (1 << self.tri_bits) - 1
        # int32 keys (17+ depth bits: micrometre steps on a head) halve the memory traffic; very
        # large meshes fall back to int64.
        self.dtype = torch.int32 if self.tri_bits <= 14 else torch.int64
        self.empty = torch.iinfo(self.dtype).max
        self.levels = (1 << ((31 if self.dtype == torch.int32 else 63) - self.tri_bits)) - 4  # room for the tie bias
        self.span_widths = torch.tensor(SPAN_WIDTHS, device=triangles.device)

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
        drawn = (bx1 >= bx0) & good
        if self.one_sided is not None:  # screen y points down: a triangle facing the camera has area < 0
            drawn &= ~(self.one_sided.repeat(t_count) & (area > 0))
        rows = ((by1 - by0 + 1).clamp(min=0) * drawn).long()  # (T*F,)
        ids = torch.nonzero(rows).squeeze(1)  # (K,) flat frame * F + triangle, on screen
        if len(ids) == 0:
            return zbuf, planes, area
        table, ints = self._span_table(ids, local, qs, area, bx0, bx1, by0, by1, f_count, n)
        self._scan(zbuf, table, ints, rows[ids], n)
        return zbuf, planes, area

    def _span_table(self, ids, local, qs, area, bx0, bx1, by0, by1, f_count: int, n: int):
        """Per on-screen triangle `ids` (K,): its column bounds and depth code as affine functions of
        the box row (table (K, 20)) and its box corner pixel and triangle id (ints (K, 2))."""
        dev = ids.device
        # In box row r the covered columns j satisfy b_k >= -eps for the 3 edges, i.e. a_k j >=
        # -eps - e_k(r): a lower bound on j where a_k > 0, an upper bound where a_k < 0.
        p = local[ids]  # (K, 2, 3)
        a = torch.cat([p[:, :, 0], -p[:, :, 0].sum(1, keepdim=True)], 1)  # (K, 3) d(b_k)/dx
        eb = torch.cat([p[:, :, 1], -p[:, :, 1].sum(1, keepdim=True)], 1)  # d(b_k)/dy
        ec = torch.cat([p[:, :, 2], 1 - p[:, :, 2].sum(1, keepdim=True)], 1)
        a = torch.where(a == 0, torch.full_like(a, 1e-20), a)  # a row-parallel edge bounds all or nothing
        # Bound in row r: j = (e_k(r) * s + o) with e_k(r) = eb r + (ec + eb / 2) at the pixel centre.
        slot = torch.stack([eb, ec + 0.5 * eb, -1 / a, -EDGE_EPS / a - 0.5], -1)  # (K, 3, 4)
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
        return table, ints

    def _scan(self, zbuf, table, ints, count, n: int) -> None:
        """Scatter the nearest key of every covered pixel into zbuf, one unit per (triangle, pixel row);
        count (K,): the rows of each triangle."""
        dev = zbuf.device
        # One unit per (triangle, pixel row): far fewer than pixels, so per-unit work is cheap.
        total = int(count.sum())
        owner = torch.repeat_interleave(torch.arange(len(count), device=dev), count, output_size=total)
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
        cls = torch.bucketize(width.clamp(max=SPAN_WIDTHS[-1]), self.span_widths.to(width.dtype))
        cls = torch.where(width > 0, cls, -1)
        cls, order = torch.sort(cls)
        counts = torch.bincount(cls + 1, minlength=len(SPAN_WIDTHS) + 1).tolist()
        floats = torch.stack([first, last, row_code, t[:, 19]], -1).index_select(0, order)  # (R, 4)
        ints = torch.stack([row_pixel, ti[:, 1]], -1).index_select(0, order)  # (R, 2)
        start = counts[0]
        for c, count in enumerate(counts[1:]):
            if count == 0:
                continue
            f, i = floats[start : start + count], ints[start : start + count]
            start += count
            span = SPAN_WIDTHS[c] if c < len(SPAN_WIDTHS) - 1 else int((f[:, 1] - f[:, 0]).max()) + 1
            steps = torch.arange(span, device=dev, dtype=f.dtype)
            # Columns past a span's end repeat its last pixel with the same key: harmless for amin.
            col = torch.minimum(f[:, :1] + steps, f[:, 1:2])  # (U_c, span)
            depth_code = torch.addcmul(f[:, 2:3], f[:, 3:4], col).to(self.dtype)
            key = torch.add(i[:, 1:2].to(self.dtype), depth_code, alpha=1 << self.tri_bits)
            zbuf.scatter_reduce_(0, (i[:, :1] + col.long()).reshape(-1), key.reshape(-1), reduce="amin")


def surface_code(zbuf: torch.Tensor, n: int, raster: Rasterizer) -> torch.Tensor:
    """Keys (T*n*n,) -> (T, n, n) depth code of the visible surface in [0, 1]; 1 where empty."""
    code = (zbuf >> raster.tri_bits).float() / raster.levels
    return torch.where(zbuf != raster.empty, code, torch.ones_like(code)).reshape(-1, n, n)


def sample_furthest(surface: torch.Tensor, x: torch.Tensor, y: torch.Tensor, radius: int) -> torch.Tensor:
    """Furthest surface code within `radius` px of each point: (T, n, n), x, y (T, V) -> (T, V).
    Taking the furthest neighbour keeps silhouettes and steep slopes from counting as hidden."""
    n = surface.shape[-1]
    far = nnf.max_pool2d(surface[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    px, py = x.floor().long().clamp(0, n - 1), y.floor().long().clamp(0, n - 1)
    return far.reshape(len(far), -1).gather(1, py * n + px)
