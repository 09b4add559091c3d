import numpy as np
import pytest
import torch

from blendtalk.expression.emotions import EMOTIONS, emotion_weights
from blendtalk.face import teeth
from blendtalk.face.dressing import FaceDressing
from blendtalk.render.camera import Camera
from blendtalk.render.raster import Rasterizer
from blendtalk.render.renderer import RenderConfig
from blendtalk.render.shading import hidden_depth


@pytest.fixture(scope="module")
def dressing(rig):
    return FaceDressing.for_rig(rig)


def signed_volume(v: np.ndarray, tri: np.ndarray) -> float:
    a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


@pytest.mark.parametrize("upper", [True, False])
def test_every_crown_is_closed_and_faces_out(rig, upper):
    shell = rig.dressing["dressing_vertices"][rig.dressing["dressing_part"] == (0 if upper else 1)].astype(np.float64)
    v, tri, material = teeth.dentition_arch(shell, upper)
    per_crown = len(teeth.RINGS) * teeth.SECTION + 2
    crowns = int((material != teeth.GUM).sum()) // per_crown
    assert crowns == 2 * len(teeth.UPPER_CROWNS)  # both sides, central incisor to first molar
    for k in range(crowns):
        lo, hi = k * per_crown, (k + 1) * per_crown
        mine = tri[(tri >= lo).all(1) & (tri < hi).all(1)]
        edges = np.sort(np.concatenate([mine[:, [0, 1]], mine[:, [1, 2]], mine[:, [2, 0]]]), 1)
        _, uses = np.unique(edges, axis=0, return_counts=True)
        assert (uses == 2).all()  # closed: every edge between two triangles
        width = (teeth.UPPER_CROWNS if upper else teeth.LOWER_CROWNS)[k // 2][0]
        assert signed_volume(v, mine) > 0.2 * width ** 3  # positive: counter-clockwise from outside
    # Left and right mirror each other, and the arch stays inside the helper shell's footprint.
    np.testing.assert_allclose(np.sort(v[:, 0]), np.sort(-v[:, 0]), atol=1e-9)
    assert np.abs(v[:, 0]).max() <= np.abs(shell[:, 0]).max() + 1e-4


def test_affine_motion_follows_the_jaw(rig):
    part = rig.dressing["dressing_part"]
    shell = rig.dressing["dressing_vertices"][part == 1].astype(np.float64)
    deltas = rig.dressing["dressing_deltas"][:, part == 1].astype(np.float64)  # (K, H, 3)
    jaw = list(rig.blendshape_names).index("jawOpen")
    # Within 0.2 mm of the shell's own target on a 2.7 cm drop: the jaw turns nearly rigidly.
    np.testing.assert_allclose(teeth.affine_motion(shell, deltas, shell)[jaw], deltas[jaw], atol=2e-4)
    # A unit that leaves the shell still leaves the crowns still.
    still = np.abs(deltas).max((1, 2)) == 0
    assert still.any() and (teeth.affine_motion(shell, deltas, shell[:5])[still] == 0).all()


def test_teeth_never_show_through_the_skin(rig, dressing):
    """Wherever a tooth or gum is the nearest surface, the face there is the inside of the mouth,
    the lips (which the teeth touch from inside) or nothing: every emotion at the top intensity
    with the jaw shut, half open and fully open, and at 1.0 with the jaw fully open. With the jaw
    fully open not even the lips' outside: there a smile stretched the lower lip behind the lower
    canines (150 pixels at 512 px) until they yielded to it (`teeth.smile_yield`)."""
    config = RenderConfig(size=256)
    face = torch.as_tensor(rig.vertices, dtype=torch.float64)
    camera = Camera.frame(face, config, "cpu")
    face_tri = torch.as_tensor(rig.triangles).long()
    inside = hidden_depth(face.float(), Rasterizer(face_tri), camera, 256, config.cavity_depth)  # (V,)
    a, b = dressing.ranges["upper_teeth"][0], dressing.ranges["lower_teeth"][1]
    ta, tb = dressing.triangle_ranges["upper_teeth"][0], dressing.triangle_ranges["lower_teeth"][1]
    tri = torch.as_tensor(np.concatenate([rig.triangles, dressing.triangles[ta:tb]])).long()
    one_sided = torch.zeros(len(tri), dtype=torch.bool)
    both, face_only = Rasterizer(tri, one_sided), Rasterizer(face_tri, one_sided[: len(face_tri)])
    names = list(rig.blendshape_names)
    poses = []
    for emotion in EMOTIONS:
        for jaw, intensity in ((0.0, 1.5), (0.5, 1.5), (1.0, 1.0), (1.0, 1.5)):
            w = emotion_weights(emotion, intensity, names)
            w[names.index("jawOpen")] = max(w[names.index("jawOpen")], jaw)
            poses.append(w)
    dressed = torch.as_tensor(dressing(rig(np.stack(poses))), dtype=torch.float32)  # (P, V + H + 2E, 3)
    verts = torch.cat([dressed[:, : rig.num_vertices], dressed[:, a:b]], 1)
    # Tooth indices in `tri` count from the dressed mesh; in `verts` they follow the face directly.
    tri[len(face_tri):] -= a - rig.num_vertices
    x, y, _, q = camera.project(verts, 256)
    keys, _, _ = both(x, y, q, 256)
    face_keys, _, _ = face_only(x[:, : rig.num_vertices], y[:, : rig.num_vertices], q[:, : rig.num_vertices], 256)
    shown = (keys != both.empty) & ((keys & both.tri_mask) >= len(face_tri))  # a tooth or gum is nearest
    assert shown.any()  # the open poses show teeth
    covered = face_keys[shown] != face_only.empty
    under = face_tri[(face_keys[shown][covered] & face_only.tri_mask).long()]  # (N, 3) face triangles behind them
    lips = torch.as_tensor(rig.masks["lips"].astype(bool))[under].any(1)
    outside = inside[under].mean(1) < 0.5
    skin = outside & ~lips
    assert int(skin.sum()) <= 3, f"{int(skin.sum())} tooth pixels show through the skin"
    pose = torch.nonzero(shown)[covered][:, 0] // (256 * 256)  # (N,) the pose of each pixel
    open_jaw = torch.tensor([w[names.index("jawOpen")] >= 1.0 for w in poses])[pose]
    lip = (outside & lips & open_jaw).long()
    worst = int(torch.zeros(len(poses), dtype=torch.long).index_add_(0, pose, lip).max())
    assert worst <= 3, f"{worst} tooth pixels show through a lip's outside in one pose"
