import numpy as np
import pytest
import torch

from blendtalk.face.brows import BrowShape, brow_coordinates, brow_curve, brow_density
from blendtalk.face.dressing import DressingConfig, FaceDressing
from blendtalk.face.geometry import vertex_normals
from blendtalk.face.rig import load_rig
from blendtalk.render.renderer import RenderConfig, Renderer


@pytest.fixture(scope="module")
def rig():
    return load_rig()


def _coordinates(rig):
    normals = vertex_normals(torch.as_tensor(rig.vertices, dtype=torch.float64)[None], torch.as_tensor(rig.triangles))[0]
    return brow_coordinates(rig.vertices, rig.dressing["eye_centres"], normals.numpy())


def test_the_brow_is_full_on_its_curve_and_fades_within_the_soft_edge():
    shape = BrowShape()
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    y, half = brow_curve(u, shape)
    x = shape.head_x + u * (shape.tail_x - shape.head_x)
    on = torch.stack([x, y, torch.ones_like(x)], -1)
    assert torch.all(brow_density(on, shape) == 1)
    edge = on + torch.stack([0 * x, half + 0.5 * shape.soft_edge, 0 * x], -1)
    assert torch.allclose(brow_density(edge, shape), torch.full_like(x, 0.5))
    assert torch.all(brow_density(on + torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64), shape) == 0)
    beyond_tail = torch.tensor([[shape.tail_x + shape.tail_half_width + 1.1 * shape.soft_edge, y[-1], 1.0]], dtype=torch.float64)
    assert brow_density(beyond_tail, shape).item() == 0
    closed_gate = on * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)  # the back of the head
    assert torch.all(brow_density(closed_gate, shape) == 0)


def test_brow_coordinates_mirror_between_the_eyes_and_gate_the_front(rig):
    b = _coordinates(rig)
    mirror = np.asarray(rig.mirror)
    assert np.allclose(b[:, :2], b[mirror, :2], atol=2e-4)  # the rig is symmetric to a fraction of a mm
    front = b[:, 2] > 0
    assert front.any() and not front.all()
    assert np.all(rig.vertices[front, 2] > rig.dressing["eye_centres"][:, 2].min())


def test_the_per_pixel_brow_covers_the_shipped_vertex_paint(rig):
    """The shipped paint (tools/build_face_rig.py) and the per-pixel brow are one curve: the
    vertices fully painted lie inside the per-pixel brow or within its soft edge of it."""
    density = brow_density(torch.as_tensor(_coordinates(rig)), BrowShape(soft_edge=0.002)).numpy()
    painted = rig.dressing["face_brow"] > 0.99
    assert painted.sum() > 20
    assert np.all(density[painted] > 0)
    assert np.all(rig.dressing["face_brow"][density > 0.99] > 0)


def test_exactly_one_of_colours_and_per_pixel_brows_carries_the_brows(rig):
    painted = FaceDressing.for_rig(rig)
    per_pixel = FaceDressing.for_rig(rig, DressingConfig(painted_brows=False))
    assert not painted.brows[:, 2].any() and per_pixel.brows[:, 2].any()
    brow = rig.dressing["face_brow"] > 0.8
    skin = np.asarray(DressingConfig().skin)
    assert np.abs(painted.colours[: rig.num_vertices][brow] - skin).max() > 0.3
    assert np.allclose(per_pixel.colours[: rig.num_vertices][brow], skin)


def test_raised_brows_stay_brows_instead_of_smearing_toward_the_eyes(rig):
    """Raising both brows moves the dark brow pixels up and leaves skin between them and the eyes.
    Vertex paint smeared over the stretched skin under a raised brow down to the lids (114 dark
    pixels in the band checked here, against 19 drawn per pixel): a raised brow read as a frown."""
    size = 256
    renderer = Renderer.for_rig(rig, RenderConfig(size=size, backend="torch"))
    w = np.zeros(rig.num_blendshapes, np.float32)
    for name in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"):
        w[rig.index(name)] = 1.0
    frames = renderer(np.stack([rig.vertices, rig.vertices + rig.displacement(w)]).astype(np.float32))
    dark = frames.astype(np.float32).mean(-1) < 110  # (2, H, W): brows, lashes, pupils, hair
    centres, radius = rig.dressing["eye_centres"], rig.dressing["eye_radius"]
    tops = torch.as_tensor(centres + np.outer(radius, [0.0, 1.0, 0.0]), dtype=torch.float32)[None]
    x, y, _, _ = renderer.camera.project(tops, size)
    row, (left, right) = int(y.mean()), sorted(x[0].tolist())
    cols = slice(int(left) - 28, int(right) + 28)  # both brows, not the hair at the temples
    above_lids = dark[:, row + 1 : row + 8, cols].sum((1, 2))  # (2,) the upper lids' skin, under the lashes' line
    brow_band = dark[:, row - 16 : row, cols].sum((1, 2))
    assert above_lids[1] < 40, above_lids
    assert brow_band[1] > 200, brow_band  # the raised brows are there, above the eyes
    band = slice(row - 24, row + 1)  # between the hairline and the eyeballs' tops
    rows = np.arange(band.start, band.stop)[:, None]
    mean_row = lambda m: (rows * m).sum() / m.sum()  # noqa: E731
    assert mean_row(dark[1, band, cols]) < mean_row(dark[0, band, cols]) - 1, "the brows did not rise"
