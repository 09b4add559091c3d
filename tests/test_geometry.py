import numpy as np
import pytest
import torch

import blendtalk.face.geometry as geometry
from blendtalk.face.geometry import (
    SquareMap,
    laplacian_apply,
    load_square_map,
    square_map,
    uniform_laplacian,
    vertex_normals,
)


@pytest.fixture(scope="module")
def smap(rig):
    return square_map(rig.vertices, rig.triangles, rig.mask("face_crop"), rig.mirror, 128)


def smooth_field(vertices: np.ndarray) -> torch.Tensor:
    """A low-frequency displacement (V, 3) of the vertex positions, in metres."""
    v = torch.as_tensor(vertices, dtype=torch.float64)
    x, y = v[:, 0], v[:, 1]
    return 0.01 * torch.stack(
        [torch.sin(30 * y + 1) * torch.cos(20 * x), torch.cos(25 * x + 0.3 * torch.sin(40 * y)), torch.sin(20 * x + 15 * y)], -1
    )


def mirrored(field: torch.Tensor, mirror: np.ndarray) -> torch.Tensor:
    """The mirror image of a displacement field: partner's displacement with x negated."""
    return field[..., torch.as_tensor(mirror), :] * torch.tensor([-1.0, 1.0, 1.0], dtype=field.dtype)


def grid_mesh(half: int = 6, holes=((2, 2), (-3, 2), (-1, -3), (0, -3))):
    """A flat symmetric grid on x in [-half, half] with quads removed (and their mirror images).

    Returns vertices (V, 3), triangles (F, 3), mirror (V,). Diagonals are mirrored so the
    connectivity is exactly symmetric. `holes` are (i, j) lower-left quad corners.
    """
    xs = np.arange(-half, half + 1)
    ys = np.arange(0, 2 * half + 1)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    vid = np.arange(gx.size).reshape(gx.shape)  # [row j, column i]
    verts = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1).astype(np.float64)
    removed = set()
    for i, j in holes:
        removed |= {(i, j), (-i - 1, j)}
    tris = []
    for j in range(len(ys) - 1):
        for i in range(len(xs) - 1):
            if (xs[i], ys[j]) in removed:
                continue
            a, b, c, d = vid[j, i], vid[j, i + 1], vid[j + 1, i + 1], vid[j + 1, i]
            tris += [[a, b, c], [a, c, d]] if xs[i] >= 0 else [[a, b, d], [b, c, d]]
    mirror = vid[:, ::-1].ravel()
    return verts, np.asarray(tris), mirror


# --- Laplacian --------------------------------------------------------------------------------------


def test_laplacian_constant_and_linear():
    verts, tris, _ = grid_mesh(holes=())
    lap = uniform_laplacian(len(verts), tris)
    assert lap.shape == (len(verts), len(verts)) and lap.is_sparse
    const = torch.full((2, len(verts), 3), 0.7)
    assert laplacian_apply(lap, const).abs().max() < 1e-6
    linear = torch.as_tensor(verts @ np.array([[0.3, -1.0, 2.0], [1.5, 0.2, -0.4], [0, 0, 0]]), dtype=torch.float32)
    out = laplacian_apply(lap, linear)
    x, y = verts[:, 0], verts[:, 1]
    # Away from the border and the mid-line column (where the mirrored diagonals meet) every
    # vertex has 6 neighbours whose mean is the vertex itself.
    inside = torch.as_tensor((np.abs(x) < x.max()) & (x != 0) & (y > 0) & (y < y.max()))
    assert out[inside].abs().max() < 1e-5
    assert out[~inside].abs().max() > 0.1  # on the border it is not: the test could fail


def test_laplacian_on_rig_smooth_field_is_small(rig):
    lap = uniform_laplacian(rig.num_vertices, rig.triangles)
    d = smooth_field(rig.vertices).float()
    rows = torch.sparse.sum(lap, dim=1).to_dense()
    assert rows.abs().max() < 1e-5  # L @ 1 = 0
    assert laplacian_apply(lap, d).norm() < 0.05 * d.norm()


# --- square map on the rig --------------------------------------------------------------------------


def test_map_layout(rig, smap):
    n, v = smap.size, rig.num_vertices
    assert smap.indices.shape == (n * n, 3) and smap.indices.dtype == np.int64
    assert smap.weights.shape == (n * n, 3) and smap.weights.dtype == np.float32
    assert smap.mask.shape == (n, n) and smap.uv.shape == (v, 2)
    crop = rig.mask("face_crop")
    assert np.isnan(smap.uv[~crop]).all() and np.isfinite(smap.uv[crop]).all()
    assert smap.uv[crop].min() >= 0 and smap.uv[crop].max() <= 1
    assert smap.coverage >= 0.6
    assert smap.num_flipped == 0
    assert smap.symmetry_error < 1e-9


def test_barycentric_weights(smap):
    w = smap.weights[smap.mask.ravel()]
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert (smap.weights[~smap.mask.ravel()] == 0).all()
    assert set(np.unique(smap.indices[smap.mask.ravel()])) <= set(np.flatnonzero(smap.crop))


def test_face_is_upright_and_symmetric(rig, smap):
    dominant = smap.indices[np.arange(len(smap.indices)), smap.weights.argmax(1)].reshape(smap.size, smap.size)
    rows = np.arange(smap.size)[:, None].repeat(smap.size, 1)
    cols = rows.T
    lips = rig.mask("lips")[dominant] & smap.mask
    eyes = rig.mask("eyes")[dominant] & smap.mask
    assert rows[lips].mean() > rows[eyes].mean() + 0.2 * smap.size  # row 0 is the forehead
    assert abs(cols[lips].mean() - (smap.size - 1) / 2) < 1
    assert (smap.mask == smap.mask[:, ::-1]).all()
    # the face's left (+x) is on the image's right
    left = rig.vertices[:, 0][dominant] > 0.01
    assert cols[left & smap.mask].min() >= smap.size // 2


def test_mirrored_fields_give_flipped_maps(rig, smap):
    d = smooth_field(rig.vertices) + 0.003 * torch.randn(rig.num_vertices, 3, generator=torch.Generator().manual_seed(0))
    img = smap.apply(d)
    img_m = smap.apply(mirrored(d, rig.mirror))
    expected = img.flip(-1) * torch.tensor([-1.0, 1.0, 1.0], dtype=d.dtype)[:, None, None]
    torch.testing.assert_close(img_m, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(img, img.flip(-1), atol=1e-4)  # the random field is not symmetric itself


@pytest.mark.parametrize("size, tolerance", [(64, 0.02), (128, 0.01)])
def test_map_unmap_round_trip(rig, size, tolerance):
    sm = square_map(rig.vertices, rig.triangles, rig.mask("face_crop"), rig.mirror, size)
    d = smooth_field(rig.vertices)
    back = sm.unmap(sm.apply(d))
    crop = torch.as_tensor(sm.crop)
    rel = (back[crop] - d[crop]).norm() / d[crop].norm()
    assert rel < tolerance  # measured: 0.6 % at N=64, 0.25 % at N=128 (brief: < 5 % at N=128)
    assert (back[~crop] == 0).all()


def test_batched_apply_matches_per_frame(rig, smap):
    d = torch.randn(2, 3, rig.num_vertices, 3, generator=torch.Generator().manual_seed(1))
    out = smap.apply(d)
    assert out.shape == (2, 3, 3, smap.size, smap.size)
    for b in range(2):
        for t in range(3):
            torch.testing.assert_close(out[b, t], smap.apply(d[b, t]))
    assert (out[..., ~torch.as_tensor(smap.mask)] == 0).all()
    back = smap.unmap(out)
    assert back.shape == d.shape
    torch.testing.assert_close(back[1, 2], smap.unmap(out[1, 2]))


def test_apply_is_differentiable(rig, smap):
    """The gradient through `apply` is the map's adjoint M^T, at a displacement that is not zero."""
    g = torch.Generator().manual_seed(0)
    d = (torch.randn(4, rig.num_vertices, 3, generator=g, dtype=torch.float64) * 1e-2).requires_grad_()
    upstream = torch.randn(4, 3, smap.size, smap.size, generator=g, dtype=torch.float64)  # dL/d(image)
    (smap.apply(d) * upstream).sum().backward()
    cols = upstream.reshape(4, 3, -1).permute(2, 0, 1).reshape(smap.size**2, 12)  # (N*N, B*3)
    adjoint = torch.sparse.mm(smap.matrix(dtype=torch.float64).t(), cols)  # (V, B*3)
    torch.testing.assert_close(d.grad, adjoint.reshape(-1, 4, 3).permute(1, 0, 2))
    assert d.grad[:, ~smap.crop].abs().max() == 0 and d.grad[:, smap.crop].abs().max() > 0
    m = smap.matrix()
    assert m.shape == (smap.size**2, rig.num_vertices) and m.is_sparse


def torch_coalesced(smap) -> torch.Tensor:
    """The map's entries as torch's own coalesce() builds them: the reference for `matrix`."""
    pix = np.repeat(np.arange(smap.size**2), 3)
    keep = smap.weights.ravel() > 0
    idx = torch.as_tensor(np.stack([pix[keep], smap.indices.ravel()[keep]]), dtype=torch.long)
    val = torch.as_tensor(smap.weights.ravel()[keep], dtype=torch.float32)
    return torch.sparse_coo_tensor(idx, val, (smap.size**2, smap.num_vertices)).coalesce()


def test_matrix_is_coalesced_as_torch_does_it(smap):
    m, ref = smap.matrix(), torch_coalesced(smap)
    assert m.is_coalesced()
    assert torch.equal(m.indices(), ref.indices()) and torch.equal(m.values(), ref.values())


def test_matrix_sums_a_vertex_met_twice_in_one_pixel(smap):
    # A degenerate triangle (two corners on one vertex) puts two entries on one (pixel, vertex).
    indices, weights = smap.indices.copy(), smap.weights.copy()
    hit = np.flatnonzero((weights > 0).all(-1).ravel())[:5]
    indices.reshape(-1, 3)[hit, 1] = indices.reshape(-1, 3)[hit, 0]
    bent = SquareMap(size=smap.size, indices=indices, weights=weights, mask=smap.mask, uv=smap.uv,
                     num_vertices=smap.num_vertices, mirror=smap.mirror)
    m, ref = bent.matrix(), torch_coalesced(bent)
    assert m.indices().shape[1] == ref.indices().shape[1] < torch_coalesced(smap).indices().shape[1]
    assert torch.equal(m.indices(), ref.indices())
    torch.testing.assert_close(m.values(), ref.values(), atol=1e-7, rtol=1e-6)


@pytest.mark.gpu
def test_apply_on_cuda(rig, smap):
    d = torch.randn(2, rig.num_vertices, 3)
    out = smap.apply(d.cuda())
    torch.testing.assert_close(out.cpu(), smap.apply(d), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(smap.unmap(out).cpu(), smap.unmap(smap.apply(d)), atol=1e-4, rtol=1e-4)


# --- square map on a synthetic mesh -----------------------------------------------------------------


def test_synthetic_grid_with_holes():
    verts, tris, mirror = grid_mesh()
    crop = np.ones(len(verts), bool)
    sm = square_map(verts, tris, crop, mirror, 32)
    assert sm.num_flipped == 0 and sm.symmetry_error < 1e-12
    assert 0.6 < sm.coverage < 1.0  # holes are not covered
    w = sm.weights[sm.mask.ravel()]
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert (sm.mask == sm.mask[:, ::-1]).all()


# --- cache ------------------------------------------------------------------------------------------


def test_cache_hit_returns_identical_arrays(rig, tmp_path, monkeypatch):
    first = load_square_map(rig, 32, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("cache miss: square_map was called again")

    monkeypatch.setattr(geometry, "square_map", fail)
    monkeypatch.setenv(geometry.CACHE_ENV, str(tmp_path))
    second = load_square_map(rig, 32)  # folder from the environment variable
    assert isinstance(second, SquareMap)
    for name in ("indices", "weights", "mask", "uv", "mirror", "triangles"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
    assert (second.size, second.num_vertices, second.num_flipped) == (first.size, first.num_vertices, first.num_flipped)
    with pytest.raises(AssertionError, match="cache miss"):
        load_square_map(rig, 48, cache_dir=tmp_path)  # a different N is a different key


def test_the_shipped_rig_s_map_ships_and_equals_a_fresh_build(rig, smap, tmp_path, monkeypatch):
    """A first run on a fresh machine reads the shipped map (tools/build_face_rig.py writes it) instead
    of building it; it must be the map the code builds now, at the shipped DFM's size."""
    import json

    from blendtalk.constants import ASSETS_DIR

    assert json.loads((ASSETS_DIR / "dfm" / "config.json").read_text())["map_size"] == 128
    monkeypatch.setattr(geometry, "square_map", lambda *a, **k: pytest.fail("the shipped map was not found"))
    monkeypatch.setenv(geometry.CACHE_ENV, str(tmp_path))  # an empty user cache
    shipped = load_square_map(rig, 128)
    assert list(tmp_path.iterdir()) == []  # read, not built nor cached again
    for name in ("indices", "weights", "mask", "uv", "mirror", "triangles"):
        assert np.array_equal(getattr(shipped, name), getattr(smap, name), equal_nan=True), name


# --- validation -------------------------------------------------------------------------------------


def test_bad_inputs_raise(rig, smap):
    v, f, crop, mir = rig.vertices, rig.triangles, rig.mask("face_crop"), rig.mirror
    with pytest.raises(ValueError, match=r"vertices must have shape \(V, 3\)"):
        square_map(v[:, :2], f, crop, mir, 64)
    bad = v.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        square_map(bad, f, crop, mir, 64)
    with pytest.raises(ValueError, match="triangle indices"):
        square_map(v, f + len(v), crop, mir, 64)
    with pytest.raises(ValueError, match="crop_mask"):
        square_map(v, f, crop[:-1], mir, 64)
    with pytest.raises(ValueError, match="involution"):
        square_map(v, f, crop, np.roll(mir, 1), 64)
    for size in (8, 1024, 64.0, True):
        with pytest.raises(ValueError, match="size N"):
            square_map(v, f, crop, mir, size)
    with pytest.raises(ValueError, match="size N"):
        load_square_map(rig, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4278, 3\)"):
        smap.apply(torch.zeros(2, 100, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 128, 128\)"):
        smap.unmap(torch.zeros(2, 3, 64, 64))
    lap = uniform_laplacian(len(v), f)
    with pytest.raises(ValueError, match="x must have shape"):
        laplacian_apply(lap, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="triangles must be integer"):
        uniform_laplacian(len(v), f.astype(float))


def test_vertex_normals_still_work(rig):
    n = vertex_normals(torch.as_tensor(rig.vertices), torch.as_tensor(rig.triangles))
    crop = torch.as_tensor(rig.mask("face_crop"))
    assert n[crop, 2].mean() > 0.7  # the face crop faces +z


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_vertex_normals_match_a_per_face_sum_to_the_bit(rig, lead):
    g = torch.Generator().manual_seed(0)
    v = torch.as_tensor(rig.vertices) + 1e-3 * torch.randn(*lead, rig.num_vertices, 3, generator=g)
    tri = torch.as_tensor(rig.triangles).long()
    a, b, c = (v[..., tri[:, k], :] for k in range(3))
    face_n = torch.cross(b - a, c - a, dim=-1)
    summed = torch.zeros_like(v)
    for k in range(3):  # the faces of each vertex added in triangle order
        summed.index_add_(-2, tri[:, k], face_n)
    expected = torch.nn.functional.normalize(summed, dim=-1, eps=1e-12)
    got = vertex_normals(v, tri)
    assert got.shape == v.shape
    assert torch.equal(got, expected)


def test_rings_away_rises_smoothly_from_the_seed():
    from blendtalk.face.geometry import rings_away

    # A strip of triangles along x: vertex pairs (2i, 2i+1) at x = i, seeded at x = 0.
    n = 8
    tri = torch.tensor([[2 * i + a, 2 * i + b, 2 * i + c] for i in range(n - 1) for a, b, c in ((0, 2, 1), (1, 2, 3))])
    seed = torch.zeros(2 * n, dtype=torch.bool)
    seed[:2] = True
    away = rings_away(seed, tri, rings=4)
    x = torch.arange(2 * n) // 2
    assert (away[seed] == 0).all() and (away[x >= 4] == 1).all()
    step = away[::2]  # one value per x: 0 at the seed, rising to 1 four rings away
    assert (step[1:5] > step[:4]).all() and torch.allclose(step, away[1::2])
