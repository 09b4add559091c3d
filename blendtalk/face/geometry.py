"""Pure geometry on triangle meshes: vertex normals, the uniform Laplacian, the square geometric map.

All functions are batched over leading dimensions `...` and work on torch tensors.

The square map (DESIGN.md section 4, paper eq. 1) parameterises the rig's frontal face crop onto the
unit square, left-right symmetric, and stores for every pixel of an N x N grid the three vertex
indices and barycentric weights of the triangle that covers it, so that a per-vertex displacement
(..., V, 3) becomes an image (..., 3, N, N) by one sparse matmul. Conventions: the rig frame has +x
on the face's left, +y up, +z out of the face; uv has u = 0.5 on the mid-line and u > 0.5 on the
face's left (the viewer's right, as in a frontal photo), v up; image row 0 is the top (forehead).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..constants import ASSETS_DIR, CACHE_ENV, DEFAULT_CACHE_DIR

# scipy.sparse is imported inside the functions that build maps and Laplacians: half a second of
# import that animating (which loads a cached map) never needs.
if TYPE_CHECKING:
    import scipy.sparse as sp

MAP_SIZE_RANGE = (16, 512)  # pixels per side accepted by square_map
SQUARE_MAP_VERSION = "square-map-v1"  # bump when the algorithm changes: it keys the on-disk cache
UNMAP_SMOOTHING = 1e-3  # Laplacian ridge in unmap, relative to the mean pixel weight per vertex
# Maps of the shipped rig, built once by tools/build_face_rig.py: a fresh machine's first run reads
# one instead of spending about half a second building it. Keyed by the same hash as the cache.
SHIPPED_MAP_DIR = ASSETS_DIR / "square_map"


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    vertices: (..., V, 3) float. triangles: (F, 3) long. Returns (..., V, 3).
    """
    if vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (..., V, 3), got {tuple(vertices.shape)}")
    tri = triangles.to(vertices.device).long()
    lead, v, f = vertices.shape[:-2], vertices.shape[-2], tri.shape[0]
    # Vertex-major (V, B*3): one gather of all corners, and index_add_ along dim 0 is its fast path
    # (together 40% less CPU than per-corner gathers and adds along dim -2 of (B, F, 3)); the faces
    # are added in the same order, so the sums are the same to the bit.
    flat = vertices.reshape(-1, v, 3).transpose(0, 1).reshape(v, -1)  # (V, B*3)
    corners = flat.index_select(0, tri.reshape(-1)).reshape(f, 3, -1, 3)  # (F, 3 corners, B, 3)
    face_n = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1).reshape(f, -1)  # (F, B*3), length = 2 * area
    normals = face_n.new_zeros(v, face_n.shape[1])  # (V, B*3)
    for k in range(3):
        normals.index_add_(0, tri[:, k], face_n)
    normals = normals.reshape(v, -1, 3).transpose(0, 1).reshape(*lead, v, 3)  # (..., V, 3)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)


def sparse_matrix(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse float32 matrix of `shape` with `values` at (rows, cols), repeated entries added up, in
    CSR layout: its product with a dense (n, k) matrix is several times faster than COO's on a CPU
    (a one-ring mean of 8 frames: 8x). A column's result may move by one float32 rounding step with
    k (the kernel vectorises over columns); a frame's bytes stay the same drawn alone or in a batch
    (tests/test_render.py)."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values.float(), shape, check_invariants=False).coalesce()
    with warnings.catch_warnings():  # torch calls its CSR support beta; products with dense matrices are all we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return coo.to_sparse_csr()


def ring_matrix(triangles: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """The one-ring mean as a sparse (V, V) matrix (`sparse_matrix`): row v averages v's neighbours
    over each triangle edge taken both ways (an edge shared by two triangles counts twice); a vertex
    on no triangle gets a zero row."""
    tri = triangles.long()
    src = torch.cat([tri[:, 0], tri[:, 1], tri[:, 2], tri[:, 1], tri[:, 2], tri[:, 0]])
    dst = torch.cat([tri[:, 1], tri[:, 2], tri[:, 0], tri[:, 0], tri[:, 1], tri[:, 2]])
    degree = torch.bincount(dst, minlength=num_vertices).clamp(min=1)
    return sparse_matrix(dst, src, 1.0 / degree[dst], (num_vertices, num_vertices))


def ring_mean(values: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Mean of each vertex's one-ring neighbours (`ring_matrix`): (V, ...) -> (V, ...)."""
    flat = values.reshape(len(values), -1).contiguous()
    return ((ring if ring.dtype == values.dtype else ring.to(values.dtype)) @ flat).reshape(values.shape)


def smooth(values: torch.Tensor, triangles: torch.Tensor, steps: int) -> torch.Tensor:
    """Average each vertex value half-and-half with its one-ring mean, `steps` times: (V, ...) -> (V, ...)."""
    return smooth_over(values, ring_matrix(triangles.to(values.device), len(values)), steps)


def smooth_over(values: torch.Tensor, ring: torch.Tensor, steps: int) -> torch.Tensor:
    """`smooth` with the one-ring mean already built (`ring_matrix`): (V, ...) -> (V, ...)."""
    for _ in range(steps):
        values = 0.5 * values + 0.5 * ring_mean(values, ring)
    return values


def rings_away(seed: torch.Tensor, triangles: torch.Tensor, rings: int) -> torch.Tensor:
    """(S,) in [0, 1]: 0 on the seed vertices (S,) bool, rising smoothly to 1 at `rings` vertex rings
    (edges of triangles (F, 3)) from them."""
    reached, away = seed.clone(), torch.zeros(len(seed), device=seed.device)
    for k in range(1, rings + 1):
        ring = torch.zeros_like(reached)
        ring[triangles[reached[triangles].any(1)].reshape(-1)] = True
        away[ring & ~reached] = k / rings
        reached |= ring
    away[~reached] = 1.0
    return away * away * (3 - 2 * away)


# --- uniform Laplacian ------------------------------------------------------------------------------


def _check_triangles(triangles, num_vertices: int) -> np.ndarray:
    tri = triangles.detach().cpu().numpy() if isinstance(triangles, torch.Tensor) else np.asarray(triangles)
    if tri.ndim != 2 or tri.shape[1] != 3 or not np.issubdtype(tri.dtype, np.integer):
        raise ValueError(f"triangles must be integer indices of shape (F, 3), got {tri.dtype} {tri.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= num_vertices):
        raise ValueError(f"triangle indices must lie in [0, {num_vertices}), got [{tri.min()}, {tri.max()}]")
    return tri.astype(np.int64)


def _adjacency(num_vertices: int, tri: np.ndarray) -> sp.csr_matrix:
    """Symmetric 0/1 vertex adjacency (V, V) from the triangles' edges."""
    import scipy.sparse as sp
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(num_vertices, num_vertices)).tocsr()
    adj.data[:] = 1.0  # shared edges were summed twice
    return adj


def _uniform_laplacian_np(num_vertices: int, tri: np.ndarray) -> sp.csr_matrix:
    import scipy.sparse as sp
    adj = _adjacency(num_vertices, tri)
    deg = np.asarray(adj.sum(1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    # Vertices in no triangle have no neighbours to average: their row is 0 rather than the identity.
    return (sp.diags((deg > 0).astype(float)) - sp.diags(inv) @ adj).tocsr()


def uniform_laplacian(num_vertices: int, triangles, dtype=torch.float32, device=None) -> torch.Tensor:
    """L = I - D^-1 A on the triangles' edge graph, so (L @ x)_i = x_i - mean of i's neighbours.

    triangles: (F, 3) int (numpy or torch). Returns a coalesced torch sparse COO (V, V).
    Rows of vertices used by no triangle are zero.
    """
    if int(num_vertices) <= 0:
        raise ValueError(f"num_vertices must be positive, got {num_vertices}")
    lap = _uniform_laplacian_np(int(num_vertices), _check_triangles(triangles, int(num_vertices))).tocoo()
    idx = torch.as_tensor(np.stack([lap.row, lap.col]), dtype=torch.long)
    val = torch.as_tensor(lap.data, dtype=dtype)
    return torch.sparse_coo_tensor(idx, val, lap.shape, device=device, check_invariants=True).coalesce()


def _sparse_rows_apply(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mat (R, V) sparse, x (..., V, C) -> (..., R, C) as one sparse @ dense matmul."""
    lead, (v, c) = x.shape[:-2], x.shape[-2:]
    b = math.prod(lead)
    cols = x.reshape(b, v, c).permute(1, 0, 2).reshape(v, b * c)  # (V, B*C)
    out = torch.sparse.mm(mat.to(device=x.device, dtype=x.dtype), cols)  # (R, B*C)
    return out.reshape(-1, b, c).permute(1, 0, 2).reshape(*lead, -1, c)  # (..., R, C)


def laplacian_apply(lap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a sparse Laplacian (V, V) to x (..., V, 3) -> (..., V, 3) in one batched matmul."""
    if x.ndim < 2 or x.shape[-1] != 3 or x.shape[-2] != lap.shape[1]:
        raise ValueError(f"x must have shape (..., {lap.shape[1]}, 3), got {tuple(x.shape)}")
    return _sparse_rows_apply(lap, x)


# --- square map: disk embedding ---------------------------------------------------------------------


def boundary_edges(tri: np.ndarray) -> np.ndarray:
    """Directed edges (E_b, 2) of an oriented patch whose reverse edge belongs to no triangle."""
    directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    pairs = set(map(tuple, directed.tolist()))
    return np.asarray([(a, b) for a, b in directed.tolist() if (b, a) not in pairs], np.int64).reshape(-1, 2)


def _boundary_loops(tri: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of an oriented manifold patch, each following the triangles' orientation."""
    bnd = boundary_edges(tri).tolist()
    nxt = dict(map(tuple, bnd))
    if len(nxt) != len(bnd):
        raise ValueError("the face crop is not a manifold patch: a boundary vertex has two outgoing boundary edges")
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, cur = [], start
        while cur not in seen:
            seen.add(cur)
            loop.append(cur)
            cur = nxt[cur]
        loops.append(np.asarray(loop))
    return loops


def _mean_value_weights(pos: np.ndarray, tri: np.ndarray) -> sp.csr_matrix:
    """Row-normalised mean-value weights (n, n): positive, so the Tutte embedding cannot fold."""
    import scipy.sparse as sp
    n = len(pos)
    rows, cols, vals = [], [], []
    for k in range(3):
        i, j, l = tri[:, k], tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
        eij, eil = pos[j] - pos[i], pos[l] - pos[i]
        rij, ril = np.linalg.norm(eij, axis=1), np.linalg.norm(eil, axis=1)
        cos = np.clip((eij * eil).sum(1) / (rij * ril), -1.0, 1.0)
        half_tan = np.tan(0.5 * np.arccos(cos))  # tan(angle at i / 2)
        rows += [i, i]
        cols += [j, l]
        vals += [half_tan / rij, half_tan / ril]
    w = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    return sp.diags(1.0 / np.asarray(w.sum(1)).ravel()) @ w


def _outer_boundary_uv(pos: np.ndarray, loop: np.ndarray, is_mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pin the +x half of the outer loop to the square's half perimeter (0.5,1)->(1,1)->(1,0)->(0.5,0).

    Arc-length parametrised; the boundary vertices closest to the arc fractions 1/4 and 3/4 are
    snapped to the corners so that the boundary polygon is exactly the square (no cut corners).
    Returns the arc's vertex indices (top mid-line vertex to bottom one) and their uv (M, 2).
    """
    mids = np.flatnonzero(is_mid[loop])
    if len(mids) != 2:
        raise ValueError(f"the crop's outer boundary must cross the mid-line at exactly 2 vertices, got {len(mids)}")
    top, bot = sorted(mids, key=lambda k: -pos[loop[k], 1])
    arc_a = np.roll(loop, -top)[: (bot - top) % len(loop) + 1]  # top -> bottom following the loop
    arc_b = np.roll(loop[::-1], -(len(loop) - 1 - top))[: (top - bot) % len(loop) + 1]  # the other way
    arc = arc_a if pos[arc_a[1:-1], 0].mean() > 0 else arc_b
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pos[arc], axis=0), axis=1))])
    s /= s[-1]
    c1, c2 = int(np.argmin(np.abs(s - 0.25))), int(np.argmin(np.abs(s - 0.75)))
    if not 0 < c1 < c2 < len(arc) - 1:
        raise ValueError(f"the crop's outer boundary is too coarse to pin to a square ({len(loop)} vertices)")
    # Piecewise arc-length parametrisation between the anchors top, corner 1, corner 2, bottom.
    t = np.interp(s, [0.0, s[c1], s[c2], 1.0], [0.0, 0.5, 1.5, 2.0])  # distance along the half perimeter
    uv = np.where(t[:, None] <= 0.5, np.stack([0.5 + t, np.ones_like(t)], 1),
                  np.where(t[:, None] <= 1.5, np.stack([np.ones_like(t), 1.5 - t], 1),
                           np.stack([2.5 - t, np.zeros_like(t)], 1)))
    return arc, uv


def _symmetric_embedding(pos, tri, mirror, outer_arc, outer_uv) -> np.ndarray:
    """Mean-value Tutte embedding (n, 2) of a disk, constrained to be exactly mirror-symmetric.

    Only one half is solved: every vertex is written through its representative r (itself if x >= 0,
    else its mirror partner) as u = u_r or 1 - u_r, v = v_r; mid-line vertices have u = 0.5. The
    equations of the free representatives are the ordinary Tutte equations with that substitution,
    which on a symmetric mesh is the same as solving the whole disk and mirroring.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
    n = len(pos)
    is_mid = mirror == np.arange(n)
    rep = np.where(is_mid | (pos[:, 0] > 0), np.arange(n), mirror)
    if (rep[rep] != rep).any():
        raise ValueError("mirror partners must lie on opposite sides of x = 0 (or be the vertex itself on it)")
    sign = np.where(rep == np.arange(n), 1.0, -1.0)
    lap = sp.eye(n) - _mean_value_weights(pos, tri)
    pinned = np.zeros(n, bool)
    pinned[outer_arc] = True
    uv = np.full((n, 2), np.nan)
    uv[outer_arc] = outer_uv
    reps = np.flatnonzero(rep == np.arange(n))
    for axis in (0, 1):
        # full = S @ half + c expresses every vertex's coordinate through the representatives.
        s_mat = sp.csr_matrix((sign if axis == 0 else np.ones(n), (np.arange(n), rep)), shape=(n, n))
        const = np.where(sign < 0, 1.0, 0.0) if axis == 0 else np.zeros(n)
        known = pinned | (is_mid if axis == 0 else False)
        value = np.where(pinned, uv[:, axis], 0.5)
        free = reps[~known[reps]]
        fixed = reps[known[reps]]
        sys = (lap[free] @ s_mat).tocsc()
        rhs = -(lap[free] @ const) - sys[:, fixed] @ value[fixed]
        half = np.zeros(n)
        half[fixed] = value[fixed]
        half[free] = spla.spsolve(sys[:, free].tocsc(), rhs)
        uv[:, axis] = s_mat @ half + const
    return uv


def _fill_holes(pos, tri, mirror, loops) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Close each inner boundary loop with a temporary fan around its centroid (a new vertex)."""
    loop_ids = {frozenset(l.tolist()): k for k, l in enumerate(loops)}
    partner = [loop_ids.get(frozenset(mirror[l].tolist())) for l in loops]
    if any(p is None for p in partner):
        raise ValueError("the crop's holes are not mirror-symmetric; check the crop mask and the mirror map")
    n = len(pos)
    owner = np.full(n, -1)
    for k, l in enumerate(loops):
        owner[l] = k
    bnd = boundary_edges(tri)
    bnd = bnd[owner[bnd[:, 0]] >= 0]  # edges of the inner loops only
    fans = np.stack([bnd[:, 1], bnd[:, 0], n + owner[bnd[:, 0]]], 1)  # reversed edge keeps orientation
    centres = np.stack([pos[l].mean(0) for l in loops])
    new_mirror = np.concatenate([mirror, n + np.asarray(partner)])
    return np.concatenate([pos, centres]), np.concatenate([tri, fans]), new_mirror


def _embed_crop(vertices, triangles, crop_mask, mirror):
    """uv (V, 2) of the crop vertices (NaN elsewhere), the crop triangles (F_c, 3) and #flipped ones."""
    crop_tri = triangles[crop_mask[triangles].all(1)]
    used = np.unique(crop_tri)
    if len(crop_tri) == 0:
        raise ValueError("crop_mask selects no complete triangle")
    local = -np.ones(len(vertices), np.int64)
    local[used] = np.arange(len(used))
    if (local[mirror[used]] < 0).any():
        raise ValueError("the crop is not mirror-symmetric: some crop vertex's mirror partner is outside it")
    pos, tri, mir = vertices[used].astype(np.float64), local[crop_tri], local[mirror[used]]
    loops = _boundary_loops(tri)
    if not loops:
        raise ValueError("the face crop is a closed surface; it needs an outer boundary")
    outer = max(range(len(loops)), key=lambda k: np.linalg.norm(np.diff(pos[loops[k]], axis=0), axis=1).sum())
    inner = [l for k, l in enumerate(loops) if k != outer]
    disk_pos, disk_tri, disk_mir = _fill_holes(pos, tri, mir, inner)
    edges = np.unique(np.sort(np.concatenate([disk_tri[:, [0, 1]], disk_tri[:, [1, 2]], disk_tri[:, [2, 0]]]), 1), axis=0)
    if len(disk_pos) - len(edges) + len(disk_tri) != 1:
        raise ValueError("the face crop is not one disk with holes (Euler characteristic after filling != 1)")
    is_mid = disk_mir == np.arange(len(disk_pos))
    arc, arc_uv = _outer_boundary_uv(disk_pos, loops[outer], is_mid)
    uv_disk = _symmetric_embedding(disk_pos, disk_tri, disk_mir, arc, arc_uv)
    p = uv_disk[disk_tri]  # (F, 3, 2)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    flipped = int((area * np.sign(area.sum()) <= 1e-14).sum())
    uv = np.full((len(vertices), 2), np.nan)
    uv[used] = uv_disk[: len(used)]
    return uv, crop_tri, flipped


# --- square map: rasterisation ----------------------------------------------------------------------


def _rasterise(uv: np.ndarray, tri: np.ndarray, mirror: np.ndarray, n: int):
    """Pixel -> (covering triangle's 3 vertex indices, barycentric weights); uncovered pixels get 0."""
    indices = np.zeros((n, n, 3), np.int64)
    weights = np.zeros((n, n, 3), np.float64)
    p = uv[tri] * n - 0.5  # (F, 3, 2) in pixel-centre units: pixel (row r, col c) sits at (c, n-1-r)
    for f in range(len(tri)):
        a, b, c = p[f]
        det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
        if abs(det) < 1e-12:
            continue
        x0, x1 = max(math.ceil(p[f, :, 0].min()), 0), min(math.floor(p[f, :, 0].max()), n - 1)
        y0, y1 = max(math.ceil(p[f, :, 1].min()), 0), min(math.floor(p[f, :, 1].max()), n - 1)
        if x0 > x1 or y0 > y1:
            continue
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        l1 = ((gx - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (gy - a[1])) / det
        l2 = ((b[0] - a[0]) * (gy - a[1]) - (gx - a[0]) * (b[1] - a[1])) / det
        lam = np.stack([1 - l1 - l2, l1, l2], -1)  # (h, w, 3)
        inside = (lam >= -1e-9).all(-1)
        rows, cols = n - 1 - gy[inside], gx[inside]
        lam = np.clip(lam[inside], 0, None)
        indices[rows, cols] = tri[f]
        weights[rows, cols] = lam / lam.sum(-1, keepdims=True)
    # Exact pixel symmetry: the left half is the mirror image of the right half (ties on shared
    # edges could otherwise resolve differently on the two sides).
    half = n // 2
    indices[:, :half] = mirror[indices[:, ::-1][:, :half]]
    weights[:, :half] = weights[:, ::-1][:, :half]
    return indices.reshape(-1, 3), weights.reshape(-1, 3).astype(np.float32)


# --- square map: public API -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SquareMap:
    """Fixed sparse map from per-vertex displacements (..., V, 3) to square images (..., 3, N, N).

    size: N. indices: (N*N, 3) int64 vertex indices into the full rig, row-major pixels (row 0 at
    the top). weights: (N*N, 3) float32 barycentric weights, 0 on uncovered pixels. mask: (N, N)
    bool covered pixels. uv: (V, 2) float64 embedding, NaN outside the crop. mirror: (V,) partner
    indices. num_flipped: triangles of the embedding with non-positive area (0 expected).
    """

    size: int
    indices: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    uv: np.ndarray
    num_vertices: int
    mirror: np.ndarray
    num_flipped: int = 0
    triangles: np.ndarray | None = None  # (F_c, 3) crop triangles; the unmap smoothness uses them
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # per-device tensors

    @property
    def coverage(self) -> float:
        """Fraction of the N x N square covered by the crop's triangles."""
        return float(self.mask.mean())

    @property
    def crop(self) -> np.ndarray:
        """(V,) bool: vertices that have a place on the square."""
        return ~np.isnan(self.uv[:, 0])

    @property
    def symmetry_error(self) -> float:
        """max over crop vertices of |uv[i] - mirrored uv[mirror[i]]| (uv units; ~0)."""
        crop = np.flatnonzero(self.crop)
        mirrored = self.uv[self.mirror[crop]] * [-1.0, 1.0] + [1.0, 0.0]
        return float(np.abs(self.uv[crop] - mirrored).max())

    def matrix(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The map as a coalesced torch sparse COO (N*N, V): image = matrix @ d (per coordinate)."""
        key = ("matrix", str(torch.device(device or "cpu")), dtype)
        if key not in self._cache:
            pix = np.repeat(np.arange(self.size * self.size), 3)
            keep = self.weights.ravel() > 0
            rows, cols, vals = pix[keep], self.indices.ravel()[keep].astype(np.int64), self.weights.ravel()[keep]
            # Coalesced here (sorted, duplicates summed) rather than by torch's coalesce(), which took
            # 0.15-0.24 s of every pipeline load for these ~47k entries on the 2-core CPU.
            keys = rows * self.num_vertices + cols
            keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            if len(keys) < len(vals):  # a pixel with one vertex in two corners (degenerate triangle)
                vals = np.bincount(inverse.ravel(), weights=vals, minlength=len(keys))
            else:
                vals = vals[first]
            idx = torch.as_tensor(np.stack([keys // self.num_vertices, keys % self.num_vertices]), dtype=torch.long)
            val = torch.as_tensor(vals, dtype=dtype)
            shape = (self.size * self.size, self.num_vertices)
            self._cache[key] = torch.sparse_coo_tensor(idx, val, shape, device=device, check_invariants=True,
                                                       is_coalesced=True)
        return self._cache[key]

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        """Displacements d (..., V, 3) -> displacement maps (..., 3, N, N), zero off the mask."""
        if d.ndim < 2 or d.shape[-2:] != (self.num_vertices, 3):
            raise ValueError(f"displacements must have shape (..., {self.num_vertices}, 3), got {tuple(d.shape)}")
        n, lead = self.size, d.shape[:-2]
        b = math.prod(lead)
        cols = d.reshape(b, self.num_vertices, 3).permute(1, 0, 2).reshape(self.num_vertices, b * 3)  # (V, B*3)
        img = torch.sparse.mm(self.matrix(d.device, d.dtype), cols)  # (N*N, B*3)
        return img.reshape(n, n, b, 3).permute(2, 3, 0, 1).reshape(*lead, 3, n, n)  # (..., 3, N, N)

    def unmap(self, image: torch.Tensor) -> torch.Tensor:
        """Least-squares inverse of `apply`: maps (..., 3, N, N) -> displacements (..., V, 3).

        Solves min_d |M d - image|^2 + mu |L d|^2 on the crop's vertices (L the crop's uniform
        Laplacian, mu = UNMAP_SMOOTHING x the mean pixel weight per vertex) so that vertices whose
        triangles cover no pixel centre (small triangles at small N) are still determined. Vertices
        outside the crop get 0.
        """
        n = self.size
        if image.ndim < 3 or image.shape[-3:] != (3, n, n):
            raise ValueError(f"image must have shape (..., 3, {n}, {n}), got {tuple(image.shape)}")
        # float64 inside: the weakly determined vertices make the normal equations ill-conditioned
        # enough that float32 results would depend on the batch layout (~1e-5 relative).
        crop_t, normal_inv = self._unmap_operator(image.device)
        lead = image.shape[:-3]
        b = math.prod(lead)
        pix = image.reshape(b, 3, n * n).permute(2, 0, 1).reshape(n * n, b * 3).double()  # (N*N, B*3)
        rhs = torch.sparse.mm(crop_t, pix)  # (V_c, B*3) = M_c^T image
        out = image.new_zeros(self.num_vertices, b * 3)
        out[torch.as_tensor(np.flatnonzero(self.crop), device=image.device)] = (normal_inv @ rhs).to(image.dtype)
        return out.reshape(self.num_vertices, b, 3).permute(1, 0, 2).reshape(*lead, self.num_vertices, 3)

    def _unmap_operator(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """M_c^T (V_c, N*N) sparse and (M_c^T M_c + mu L^T L)^-1 (V_c, V_c) dense, float64."""
        import scipy.sparse as sp
        key = ("unmap", str(device))
        dtype = torch.float64
        if key not in self._cache:
            crop = np.flatnonzero(self.crop)
            pix = np.repeat(np.arange(self.size * self.size), 3)
            m = sp.coo_matrix((self.weights.ravel().astype(np.float64), (pix, self.indices.ravel())),
                              shape=(self.size * self.size, self.num_vertices)).tocsc()[:, crop]
            ata = (m.T @ m).toarray()
            local = -np.ones(self.num_vertices, np.int64)
            local[crop] = np.arange(len(crop))
            tri = self.triangles if self.triangles is not None else np.zeros((0, 3), np.int64)
            lap = _uniform_laplacian_np(len(crop), local[tri]).toarray()
            mu = UNMAP_SMOOTHING * np.trace(ata) / len(crop)
            inv = np.linalg.inv(ata + mu * lap.T @ lap + 1e-12 * np.eye(len(crop)))
            mt = m.T.tocoo()
            idx = torch.as_tensor(np.stack([mt.row, mt.col]), dtype=torch.long)
            val = torch.as_tensor(mt.data, dtype=dtype)
            crop_t = torch.sparse_coo_tensor(idx, val, mt.shape, device=device, check_invariants=True)
            self._cache[key] = (crop_t.coalesce(), torch.as_tensor(inv, dtype=dtype, device=device))
        return self._cache[key]


def _validate_map_inputs(vertices, triangles, crop_mask, mirror, size) -> tuple:
    v = np.asarray(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or infinite values")
    tri = _check_triangles(triangles, len(v))
    crop = np.asarray(crop_mask)
    if crop.shape != (len(v),) or crop.dtype != bool:
        raise ValueError(f"crop_mask must be a bool array of shape ({len(v)},), got {crop.dtype} {crop.shape}")
    mir = np.asarray(mirror)
    if mir.shape != (len(v),) or not np.issubdtype(mir.dtype, np.integer):
        raise ValueError(f"mirror must be integer indices of shape ({len(v)},), got {mir.dtype} {mir.shape}")
    mir = mir.astype(np.int64)
    if mir.min() < 0 or mir.max() >= len(v) or (mir[mir] != np.arange(len(v))).any():
        raise ValueError("mirror must be an involution on [0, V): mirror[mirror[i]] == i")
    scale = np.ptp(v, axis=0).max()
    if np.abs(v[mir] * [-1, 1, 1] - v).max() > 1e-4 * scale:
        raise ValueError("mirror does not map vertices onto their reflection across the plane x = 0")
    return v.astype(np.float64), tri, crop, mir, _check_size(size)


def _check_size(size) -> int:
    lo, hi = MAP_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not lo <= size <= hi:
        raise ValueError(f"size N must be an integer in [{lo}, {hi}], got {size!r}")
    return int(size)


def square_map(vertices, triangles, crop_mask, mirror, size: int = 128) -> SquareMap:
    """Build the square, left-right symmetric map of a mesh's face crop (DESIGN.md section 4).

    vertices: (V, 3) with the symmetry plane x = 0, +y up. triangles: (F, 3) int. crop_mask: (V,)
    bool; the crop's triangles must form one disk with holes (holes are filled with temporary fans
    while embedding). mirror: (V,) mirror-partner indices. size: N pixels per side.
    """
    v, tri, crop, mir, n = _validate_map_inputs(vertices, triangles, crop_mask, mirror, size)
    uv, crop_tri, flipped = _embed_crop(v, tri, crop, mir)
    indices, weights = _rasterise(uv, crop_tri, mir, n)
    covered = weights.sum(1) > 0
    indices[~covered] = 0
    return SquareMap(size=n, indices=indices, weights=weights, mask=covered.reshape(n, n), uv=uv,
                     num_vertices=len(v), mirror=mir, num_flipped=flipped, triangles=crop_tri)


_CACHE_FIELDS = ("indices", "weights", "mask", "uv", "mirror", "triangles")


def load_square_map(rig, size: int = 128, cache_dir: str | Path | None = None) -> SquareMap:
    """The square map of `rig`'s 'face_crop', cached on disk as .npz (no pickle).

    The cache file name is a sha256 of the vertices, triangles, crop mask, mirror, N and
    SQUARE_MAP_VERSION; the folder is `cache_dir`, else $BLENDTALK_CACHE, else ~/.cache/blendtalk.
    A map of that name in SHIPPED_MAP_DIR (the shipped rig's) is read first; a rig of its own is
    built once and cached.
    """
    size = _check_size(size)
    crop, mirror = rig.mask("face_crop"), rig.mirror
    if mirror is None:
        raise ValueError(f"rig {rig.name!r} has no mirror map; the square map needs one")
    h = hashlib.sha256(SQUARE_MAP_VERSION.encode())
    for arr in (rig.vertices.astype(np.float32), rig.triangles.astype(np.int64), crop.astype(bool),
                np.asarray(mirror, np.int64), np.asarray([size], np.int64)):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    folder = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
    name = f"square_map_{size}_{h.hexdigest()[:24]}.npz"
    path = folder / name
    if cache_dir is None and (SHIPPED_MAP_DIR / name).is_file():
        path = SHIPPED_MAP_DIR / name
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        return SquareMap(size=int(data["size"]), num_vertices=int(data["num_vertices"]),
                         num_flipped=int(data["num_flipped"]), **{k: data[k] for k in _CACHE_FIELDS})
    smap = square_map(rig.vertices, rig.triangles, crop, mirror, size)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # atomic: concurrent processes may build it too
    np.savez_compressed(tmp, size=smap.size, num_vertices=smap.num_vertices, num_flipped=smap.num_flipped,
                        **{k: getattr(smap, k) for k in _CACHE_FIELDS})
    os.replace(tmp, path)
    return smap
