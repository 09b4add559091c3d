import numpy as np
import pytest
import torch

import blendtalk.render.renderer as render_module
from blendtalk.render.renderer import Renderer, RenderConfig, render

SIZE = 128  # px: small frames keep the tests fast


@pytest.fixture(scope="module")
def renderer(rig):
    return Renderer.for_rig(rig, RenderConfig(size=SIZE))


@pytest.fixture(scope="module")
def poses(rig):
    """(3, V, 3): neutral, jawOpen = 1, a smile."""
    named = [{}, {"jawOpen": 1.0}, {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}]
    return rig(np.stack([rig.weights(p) for p in named]))


def covered(frames: np.ndarray) -> np.ndarray:
    """(..., H, W) bool: pixels that differ from the background colour."""
    background = frames[..., 0, 0, :]  # the corners are always background on these meshes
    return (frames != background[..., None, None, :]).any(-1)


def grid_plane(side: int, z: float = 0.0, jitter: float = 0.0, seed: int = 0):
    """A unit square in the xy-plane facing +z, cut into 2 * side**2 triangles: (V, 3), (F, 3)."""
    u = np.linspace(-0.5, 0.5, side + 1)
    xx, yy = np.meshgrid(u, u)
    verts = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z)], -1)
    if jitter:
        inner = (np.abs(verts[:, 0]) < 0.5) & (np.abs(verts[:, 1]) < 0.5)
        step = jitter / side
        verts[inner, :2] += np.random.default_rng(seed).uniform(-step, step, (int(inner.sum()), 2))
    i = np.arange(side)
    a = (i[:, None] * (side + 1) + i[None, :]).ravel()  # lower-left corner of each cell
    tris = np.concatenate([np.stack([a, a + 1, a + side + 2], -1), np.stack([a, a + side + 2, a + side + 1], -1)])
    return verts.astype(np.float32), tris


def test_shapes_and_dtype(renderer, poses, rig):
    frames = renderer(poses)
    assert frames.shape == (3, SIZE, SIZE, 3) and frames.dtype == np.uint8
    single = renderer(rig.vertices)
    assert single.shape == (SIZE, SIZE, 3) and single.dtype == np.uint8
    assert np.array_equal(single, frames[0])
    assert renderer(torch.as_tensor(poses)).shape == (3, SIZE, SIZE, 3)


def test_deterministic_and_independent_of_chunking(rig, renderer, poses, monkeypatch):
    tiled = renderer.gl is not None and renderer.gl.frames_per_call > 1

    def same(a, b):
        if not tiled:
            return a.tobytes() == b.tobytes()
        # A GPU driver draws frames as tiles of one framebuffer, where a frame's place can move a
        # pixel by one level (rounding; seen on an H100): the same frames, not the same bytes.
        d = np.abs(a.astype(int) - b)
        return d.max() <= 1 and (d > 0).mean() < 1e-3

    first = renderer(poses)
    assert first.tobytes() == renderer(poses).tobytes()
    rebuilt = Renderer.for_rig(rig, RenderConfig(size=SIZE, max_candidates=1))  # one frame per chunk
    assert same(first, rebuilt(poses))
    assert same(first[1], renderer(poses[1]))
    monkeypatch.setattr(render_module, "_PLAN_FRAMES", 2)  # long clips are planned block by block
    assert same(first, renderer(poses))


def test_face_covers_a_centred_share_of_the_frame(renderer, poses):
    mask = covered(renderer(poses[0]))
    share = mask.mean()
    assert 0.2 < share < 0.8, share
    rows, cols = np.nonzero(mask)
    # Centred on the template's bounding box: the silhouette's box is centred in the frame.
    assert abs((cols.min() + cols.max()) / 2 - SIZE / 2) < 0.05 * SIZE
    assert abs((rows.min() + rows.max()) / 2 - SIZE / 2) < 0.08 * SIZE  # the slight look down shifts it
    # Left-right symmetric face, frontal camera: the coverage is nearly mirror-symmetric.
    assert (mask != mask[:, ::-1]).mean() < 0.01


def test_jaw_open_changes_the_mouth_not_the_forehead(renderer, poses):
    neutral, jaw = renderer(poses[:2]).astype(int)
    rows, _ = np.nonzero(covered(neutral.astype(np.uint8)))
    top, bottom = rows.min(), rows.max()
    changed = np.abs(jaw - neutral).max(-1) > 0
    forehead = slice(top, top + int(0.3 * (bottom - top)))
    mouth = slice(top + int(0.6 * (bottom - top)), bottom + 1)
    assert not changed[forehead].any()
    assert changed[mouth].sum() > 0.01 * SIZE * SIZE


def test_open_mouth_shows_teeth_and_a_dark_cavity(renderer, poses):
    """The dressed rig: an opened mouth shows off-white teeth and a dark interior that the closed one lacks."""
    frames = renderer(poses[:2]).astype(float)  # (2, H, W, 3)
    lum = frames.mean(-1)  # luminance-ish (2, H, W)
    rows, cols = np.nonzero(covered(renderer(poses[0])))
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    lower = rows > (top + bottom) // 2  # the skin's brightness, from below the hair
    skin = np.median(lum[0][rows[lower], cols[lower]])
    inset = int(0.35 * (right - left))
    box = (slice(top + int(0.6 * (bottom - top)), bottom), slice(left + inset, right - inset))  # around the mouth
    neutral, jaw = frames[0][box], frames[1][box]
    saturation = lambda f: f.max(-1) - f.min(-1)  # noqa: E731
    teeth = lambda f: ((saturation(f) < 40) & (f.mean(-1) > 0.75 * skin)).sum()  # noqa: E731  (skin is saturated)
    assert teeth(neutral) == 0 and teeth(jaw) >= 5, (teeth(neutral), teeth(jaw))
    dark_neutral, dark_jaw = (neutral.mean(-1) < 0.5 * skin).sum(), (jaw.mean(-1) < 0.5 * skin).sum()
    assert dark_jaw > dark_neutral + 20, (dark_jaw, dark_neutral)  # the mouth interior opens up


def test_smile_changes_pixels(renderer, poses):
    neutral, _, smile = renderer(poses).astype(int)
    assert (np.abs(smile - neutral).max(-1) > 8).sum() > 0.005 * SIZE * SIZE


def test_bad_inputs_raise(renderer, rig):
    v = rig.vertices
    for bad in (v[None, :, :2], v[None, :-1], v[None, None], v[:, :2], np.zeros(3)):
        with pytest.raises(ValueError, match=r"shape"):
            renderer(bad)
    nan = v.copy()
    nan[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN"):
        renderer(nan)
    with pytest.raises(ValueError, match=r"shape"):
        render(v[None, :, :2], rig.triangles)
    with pytest.raises(ValueError, match=r"triangle"):
        Renderer(rig.triangles + 10_000, v)
    with pytest.raises(ValueError, match=r"size"):
        RenderConfig(size=0)


def test_orthographic_square_fills_its_exact_share():
    """Rasterization is exact and watertight: a jittered grid square covers (1 - 2 margin)^2."""
    verts, tris = grid_plane(24, jitter=0.3)
    config = RenderConfig(size=100, fov_deg=0, pitch_deg=0, margin=0.1)
    frame = Renderer(tris, verts, config)(verts)
    mask = covered(frame)
    assert mask[10:90, 10:90].all()  # no cracks between the 1152 triangles
    assert mask.sum() == 80 * 80


def test_nearer_surface_wins():
    near, tris = grid_plane(2, z=0.1)
    far, _ = grid_plane(2, z=-0.1)
    far[:, 0] += 0.3  # the far square sticks out on the right
    verts = np.concatenate([near, far])
    triangles = np.concatenate([tris, tris + len(near)])
    colours = np.concatenate([np.tile([1.0, 0.1, 0.1], (len(near), 1)), np.tile([0.1, 0.1, 1.0], (len(far), 1))])
    frame = Renderer(triangles, verts, RenderConfig(size=64, pitch_deg=0), vertex_colours=colours)(verts).astype(int)
    mask = covered(frame.astype(np.uint8))
    red = mask & (frame[..., 0] > frame[..., 2])
    blue = mask & (frame[..., 2] > frame[..., 0])
    # The near square hides the far one where they overlap; the far one shows only on the right.
    assert red.sum() > blue.sum() > 0
    assert np.nonzero(blue)[1].min() > np.nonzero(red)[1].mean()


@pytest.mark.slow
def test_convenience_render_and_supersampling(rig):
    frame = render(rig.vertices, rig.triangles, size=64)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    plain = Renderer(rig.triangles, rig.vertices, RenderConfig(size=64))(rig.vertices)
    assert np.array_equal(frame, plain)
    smooth = Renderer(rig.triangles, rig.vertices, RenderConfig(size=64, supersample=2))(rig.vertices)
    assert smooth.shape == plain.shape
    assert np.abs(smooth.astype(int) - plain).mean() < 6  # the same picture, softer edges


@pytest.mark.slow
def test_rig_gets_eyeballs_and_lip_tint(rig):
    dressed = Renderer.for_rig(rig, RenderConfig(size=SIZE))
    bare = Renderer.for_rig(rig, RenderConfig(size=SIZE, eyes=False))
    assert "left_eye" in dressed.dressing.ranges and "left_eye" not in bare.dressing.ranges
    a, b = dressed(rig.vertices).astype(int), bare(rig.vertices).astype(int)
    diff = np.abs(a - b).max(-1) > 30
    rows, cols = np.nonzero(diff)
    assert diff.sum() > 20  # eyeballs are visible in the eye openings: both, at mid-height
    assert (cols < SIZE / 2).sum() > 10 and (cols > SIZE / 2).sum() > 10
    face_rows = np.nonzero(covered(a.astype(np.uint8)))[0]
    top, bottom = face_rows.min(), face_rows.max()
    assert top + 0.35 * (bottom - top) < rows.min() and rows.max() < top + 0.65 * (bottom - top)


def test_neck_fills_the_frame_under_the_chin(rig, renderer):
    """The dressed face goes on into a neck down to the frame's bottom edge, nodding or not; without
    it (RenderConfig(neck=False)) the frame's bottom shows the background under the cut."""
    bare = Renderer.for_rig(rig, RenderConfig(size=SIZE, neck=False))
    assert "neck" in renderer.dressing.ranges and "neck" not in bare.dressing.ranges
    heads = np.radians([[0, 0, 0], [-8, 0, 0], [8, 5, 2.5]]).astype(np.float32)
    frames = renderer(np.repeat(rig.vertices[None], 3, 0), head_rotation=heads)
    centre = slice(SIZE // 2 - 2, SIZE // 2 + 3)
    for frame in frames:
        mask = covered(frame)
        chin = np.nonzero(mask[:, centre].all(1))[0]
        assert mask[chin.min():, centre].all()  # skin from the forehead to the bottom edge
    assert not covered(bare(rig.vertices))[-3:, centre].any()


def test_neck_open_end_stays_out_of_the_frame(rig, renderer):
    """No vertex of the neck's far (cut) end is both in the frame and in front, at head angles
    beyond the default motion's largest (4, 5, 2.5 deg)."""
    from itertools import product

    from blendtalk.expression.head_motion import rotate_head
    from blendtalk.face.geometry import boundary_edges
    from blendtalk.render.raster import sample_furthest, surface_code

    d = renderer.dressing
    index, tri = d.skin()
    rim = torch.as_tensor(index[np.unique(boundary_edges(tri))])
    rest = torch.as_tensor(d.neutral())
    n = renderer.config.size
    for signs in product((-1, 0, 1), repeat=3):
        turned = rotate_head(rest[None], torch.as_tensor(np.radians(8.0) * np.array([signs]), dtype=torch.float32), renderer.pivot)
        x, y, _, q = renderer.camera.project(turned, n)
        zbuf, _, _ = renderer.raster(x, y, q, n)
        front = sample_furthest(surface_code(zbuf, n, renderer.raster), x[:, rim], y[:, rim], radius=1)[0]
        inside = (x[0, rim] >= 0) & (x[0, rim] < n) & (y[0, rim] >= 0) & (y[0, rim] < n)
        assert not (inside & (q[0, rim] <= front + 2e-3)).any(), signs


def test_neck_is_shaded_as_skin(rig, renderer):
    """The neck's material carries on the face's: skin sheen (not the wet parts' double), and next to
    the face's boundary the same albedo as the boundary itself (no line at the junction)."""
    d = renderer.dressing
    a, b = d.ranges["neck"]
    face_v = rig.num_vertices
    material = renderer.material.cpu().numpy()
    assert (material[a:b, 3] <= renderer.config.specular + 1e-6).all()
    weight = d.anchor_weight.numpy()[a - face_v : b - face_v]
    anchor = d.helper_anchor.numpy()[a - face_v : b - face_v]
    near = np.arange(a, b)[(weight > 0.5) & (weight < 1)]  # the neck's ring just under the face
    assert len(near) >= 10
    ratio = material[near, :3].mean(1) / material[anchor[near - a], :3].mean(1)
    assert 0.8 < np.median(ratio) < 1.25


def test_hair_and_lashes_are_matte_eyes_and_teeth_wet(renderer):
    """Hair, lashes included, scatters light: the wet parts' double sheen on a near-black lash card
    drew a grey-blue band under each eye."""
    d, sheen = renderer.dressing, renderer.material.cpu().numpy()[:, 3]
    skin = renderer.config.specular
    for name in ("hair", "lashes"):
        assert sheen[slice(*d.ranges[name])].max() < 0.5 * skin, name
    for name in ("upper_teeth", "left_eye"):
        assert sheen[slice(*d.ranges[name])].max() > 1.5 * skin, name


@pytest.mark.gpu
def test_cuda_matches_cpu(rig, renderer, poses):
    gpu = Renderer.for_rig(rig, RenderConfig(size=SIZE), device="cuda")
    a, b = renderer(poses).astype(int), gpu(torch.as_tensor(poses, device="cuda")).astype(int)
    diff = np.abs(a - b).max(-1)
    assert (diff > 8).mean() < 0.005
    assert diff.mean() < 1.0
