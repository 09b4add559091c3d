import numpy as np
import pytest
import torch

from blendtalk.face.dressing import PARTS, DressingConfig, FaceDressing, gaze_rotation


@pytest.fixture(scope="module")
def dressing(rig):
    return FaceDressing.for_rig(rig)


def part(dressed: np.ndarray, dressing: FaceDressing, name: str) -> np.ndarray:
    a, b = dressing.ranges[name]
    return dressed[..., a:b, :]


def test_layout_shapes_and_neutral(rig, dressing):
    assert set(dressing.ranges) == set(PARTS)
    out = dressing(rig.vertices[None])
    assert out.shape == (1, dressing.num_vertices, 3) and out.dtype == np.float32
    assert dressing.triangles.min() >= 0 and dressing.triangles.max() < dressing.num_vertices
    assert dressing.colours.shape == (dressing.num_vertices, 3)
    # Zero displacement and no gaze give the stored helpers at rest; the face passes through.
    np.testing.assert_array_equal(out[0, : rig.num_vertices], rig.vertices)
    np.testing.assert_allclose(out[0, rig.num_vertices : dressing.ranges["left_eye"][0]],
                               dressing.helper_vertices.numpy(), atol=1e-7)
    np.testing.assert_allclose(dressing(rig.vertices, np.zeros(2)), out[0], atol=1e-7)
    torch_out = dressing(torch.as_tensor(rig.vertices[None]))
    assert isinstance(torch_out, torch.Tensor) and np.allclose(torch_out.numpy(), out, atol=1e-6)


def test_lower_teeth_follow_jaw_upper_teeth_stay(rig, dressing):
    frames = rig(np.stack([rig.weights({}), rig.weights({"jawOpen": 1.0})]))
    rest, opened = dressing(frames)
    drop = (part(opened, dressing, "lower_teeth") - part(rest, dressing, "lower_teeth"))[:, 1]
    assert drop.mean() < -0.005  # m: the lower teeth go down by centimetres with the jaw
    np.testing.assert_allclose(part(opened, dressing, "upper_teeth"), part(rest, dressing, "upper_teeth"), atol=2e-4)
    # They go down as far as the rig's own target moves them (the unit estimate is exact on rig poses).
    a, b = dressing.ranges["lower_teeth"]
    k = rig.index("jawOpen")
    expected = dressing.helper_deltas[k].numpy()[a - rig.num_vertices : b - rig.num_vertices]
    np.testing.assert_allclose(part(opened, dressing, "lower_teeth") - part(rest, dressing, "lower_teeth"),
                               expected, atol=2e-4)


def test_lashes_follow_blink(rig, dressing):
    frames = rig(np.stack([rig.weights({}), rig.weights({"eyeBlinkLeft": 1.0})]))
    rest, blink = dressing(frames)
    move = part(blink, dressing, "lashes") - part(rest, dressing, "lashes")
    a, b = dressing.ranges["lashes"]
    left = part(rest, dressing, "lashes")[:, 0] > 0
    assert move[left, 1].min() < -0.008  # the upper lashes come down with the lid
    assert np.abs(move[~left]).max() < 1e-6  # the other eye's lashes stay


def test_eyes_rotate_with_gaze(rig, dressing):
    frames = np.repeat(rig.vertices[None], 3, 0)
    gaze = np.array([[0.0, 0.0], [0.4, 0.0], [0.0, 0.3]], np.float32)
    out = dressing(frames, gaze)
    a, _ = dressing.ranges["left_eye"]
    centre = dressing.eye_centres[0].numpy()
    pupil = out[:, a] - centre  # vertex 0 of the cap is the pupil's centre
    assert pupil[1, 0] > pupil[0, 0] + 0.004  # yaw + looks toward the face's left (+x)
    assert pupil[2, 1] > pupil[0, 1] + 0.003  # pitch + looks up
    np.testing.assert_allclose(np.linalg.norm(pupil, axis=1), np.linalg.norm(pupil[0]), rtol=1e-5)
    r = gaze_rotation(torch.tensor([[0.3, -0.2]]))
    np.testing.assert_allclose((r @ r.transpose(1, 2))[0].numpy(), np.eye(3), atol=1e-6)


def test_eyeballs_stay_behind_a_closing_lid(rig, dressing):
    for w in (0.5, 1.0):
        frame = rig(rig.weights({"eyeBlinkLeft": w, "eyeBlinkRight": w}))
        out = dressing(frame, np.array([0.3, 0.3]))
        for k, name in enumerate(("left_eye", "right_eye")):
            centre = dressing.eye_centres[k].numpy()
            radius = np.linalg.norm(part(out, dressing, name) - centre, axis=1).max()
            lid = np.linalg.norm(frame[dressing.lid_index[k].numpy()] - centre, axis=1).min()
            assert radius < lid  # no eyeball vertex reaches past the nearest lid vertex


def test_brows_are_painted_dark_and_move_with_the_brow_units(rig, dressing):
    grey = dressing.colours[: rig.num_vertices].mean(1)
    brow = rig.dressing["face_brow"] > 0.8
    assert brow.sum() >= 10 and grey[brow].max() < 0.5 * np.median(grey)
    v = rig.vertices
    assert (v[brow, 1] > dressing.eye_centres[0, 1].item()).all()  # above the eyes
    raised = rig(rig.weights({"browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0}))
    assert (raised[brow, 1] - v[brow, 1]).mean() > 0.002


def test_bad_inputs(rig, dressing):
    with pytest.raises(ValueError, match="shape"):
        dressing(rig.vertices[None, :-1])
    with pytest.raises(ValueError, match="gaze"):
        dressing(rig.vertices[None], np.zeros((2, 2)))


BROWS_UP = {"browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0}


def test_hair_is_dark_and_rigid_with_the_skull(rig, dressing):
    assert "hair" in dressing.ranges
    a, b = dressing.ranges["hair"]
    assert b - a > 100
    grey = dressing.colours.mean(1)
    assert np.median(grey[a:b]) < 0.25 and np.median(grey[a:b]) < 0.4 * np.median(grey[: rig.num_vertices])
    frames = rig(np.stack([rig.weights({}), rig.weights({"jawOpen": 1.0}), rig.weights(BROWS_UP),
                           rig.weights({"browDownLeft": 1.0, "browDownRight": 1.0, "noseSneerLeft": 1.0})]))
    out = dressing(frames)
    for k in range(1, len(out)):
        np.testing.assert_allclose(part(out[k], dressing, "hair"), part(out[0], dressing, "hair"), atol=2e-4)


def test_hair_never_covers_the_raised_brows_nor_lets_skin_through(rig, dressing):
    raised = rig(rig.weights(BROWS_UP))
    hair = part(dressing(raised), dressing, "hair")
    brow = rig.dressing["face_brow"] > 0.05
    # Hair in front of the brows (their width, the front of the head): 3 cm above the raised brows.
    front = (np.abs(hair[:, 0]) < np.abs(raised[brow, 0]).max()) & (hair[:, 2] > 0.09)
    assert front.sum() > 20 and hair[front, 1].min() > raised[brow, 1].max() + 0.03
    # Skin under the cap stays under it whatever the brows do: every skin vertex that a unit moves
    # near the cap's inside (not its open edge) lies behind the nearest cap vertex along its normal.
    from scipy.spatial import cKDTree

    a, b = dressing.ranges["hair"]
    ta, tb = dressing.triangle_ranges["hair"]
    cap, tri = dressing.neutral()[a:b], dressing.triangles[ta:tb] - a
    normal = np.zeros_like(cap)
    for k in range(3):
        np.add.at(normal, tri[:, k], np.cross(cap[tri[:, 1]] - cap[tri[:, 0]], cap[tri[:, 2]] - cap[tri[:, 0]]))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    edges, uses = np.unique(np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), 1),
                            axis=0, return_counts=True)
    rim = np.isin(np.arange(len(cap)), edges[uses == 1])
    tree, checked = cKDTree(cap), 0
    for pose in (BROWS_UP, {"browDownLeft": 1.0, "browDownRight": 1.0}, {"noseSneerLeft": 1.0, "noseSneerRight": 1.0}):
        skin = rig(rig.weights(pose))
        dist, near = tree.query(skin)
        moved = np.linalg.norm(skin - rig.vertices, axis=1) > 1e-4
        close = moved & (dist < 0.01) & ~rim[near]
        checked += close.sum()
        assert (((skin[close] - cap[near[close]]) * normal[near[close]]).sum(1) < -0.0005).all()
    assert checked > 10


def test_hair_can_be_turned_off(rig, dressing):
    bare = FaceDressing.for_rig(rig, DressingConfig(hair=False))
    a, b = dressing.ranges["hair"]
    assert "hair" not in bare.ranges and bare.num_vertices == dressing.num_vertices - (b - a)
    assert len(bare.triangles) == len(dressing.triangles) - np.subtract(*dressing.triangle_ranges["hair"][::-1])
    assert bare.triangles.max() < bare.num_vertices
    np.testing.assert_allclose(bare.neutral()[: a], dressing.neutral()[: a], atol=1e-7)
    np.testing.assert_allclose(bare.neutral()[a:], dressing.neutral()[b:], atol=1e-7)



def test_the_skin_darkens_toward_the_hairline(rig, dressing):
    """Short hair thins into the forehead: the face's skin takes the hair's colour at and under the
    hairline (the asset's `face_hair`), so the cap's edge is no hard step; none without hair."""
    roots = rig.dressing["face_hair"]
    assert 0.0 <= roots.min() and roots.max() == 1.0 and 0 < (roots > 0).mean() < 0.1  # the scalp's edge only
    v = rig.num_vertices
    cfg = DressingConfig()
    skin, hair = np.asarray(cfg.skin), np.asarray(cfg.hair_colour)
    under = dressing.colours[:v][roots == 1]
    np.testing.assert_allclose(under, np.tile(skin + cfg.hair_roots * (hair - skin), (len(under), 1)), atol=1e-6)
    assert not (roots[rig.dressing["face_brow"] > 0] > 0).any()  # the brows stay clear of it
    bare = FaceDressing.for_rig(rig, DressingConfig(hair=False))
    np.testing.assert_allclose(bare.colours[:v][roots > 0], np.tile(skin, ((roots > 0).sum(), 1)), atol=1e-6)


SURPRISED = {"jawOpen": 0.8, "browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0}


def neck_parts(dressing: FaceDressing):
    """The neck's vertex range (a, b), its triangles, which of its vertices copy a face vertex
    (bool over [a, b)), and each one's anchor face vertex (-1 for none)."""
    a, b = dressing.ranges["neck"]
    ta, tb = dressing.triangle_ranges["neck"]
    h = slice(a - dressing.num_face_vertices, b - dressing.num_face_vertices)
    anchor, weight = dressing.helper_anchor.numpy()[h], dressing.anchor_weight.numpy()[h]
    return (a, b), dressing.triangles[ta:tb], weight == 1, anchor


def test_neck_closes_the_cut_under_the_face(rig, dressing):
    from blendtalk.face.geometry import boundary_edges

    (a, b), tri, copy, anchor = neck_parts(dressing)
    assert copy.sum() >= 40 and b - a > 5 * copy.sum()  # a ring on the face's boundary and several below
    # Every edge of the face's open boundary below the mouth (the sawtooth of the cut) is shared
    # with a neck triangle; what stays open of the skin is the neck's far end only.
    low = rig.vertices[:, 1] < rig.vertices[rig.mask("lips"), 1].min()
    face_open = boundary_edges(rig.triangles)
    face_open = face_open[low[face_open].all(1)]
    skin_index, skin_tri = dressing.skin()
    skin_open = skin_index[boundary_edges(skin_tri)]  # dressed-vertex indices
    assert len(face_open) >= 40
    assert not (skin_open < rig.num_vertices).any()  # no face vertex stays on an open edge
    rest = dressing.neutral()
    assert rest[skin_open, 1].max() < rig.vertices[:, 1].min() - 0.02  # the far end is centimetres lower
    # Skin colour, seen smooth: the neck uses the face's boundary vertices themselves.
    assert np.allclose(dressing.colours[a:b], DressingConfig().skin)
    assert (tri < rig.num_vertices).any(1).sum() >= len(face_open)
    assert not np.isin(np.arange(a, b)[copy], tri).any()  # the copies are welded away


def test_neck_top_ring_follows_the_face_and_its_far_end_stays(rig, dressing):
    from blendtalk.expression.head_motion import head_pivot, rotate_head

    (a, b), _, copy, anchor = neck_parts(dressing)
    frames = rig(np.stack([rig.weights({}), rig.weights({"jawOpen": 1.0}), rig.weights(SURPRISED)]))
    out = dressing(frames, np.array([[0.0, 0.0], [0.2, -0.1], [0.0, 0.2]]))
    turned = rotate_head(out, np.radians([[0, 0, 0], [4.0, -5.0, 2.5], [-4.0, 5.0, -2.5]]), head_pivot(rig.vertices))
    for pose in (out, turned):  # the copies sit on their face vertex, posed and turned
        np.testing.assert_allclose(pose[:, a:b][:, copy], pose[:, anchor[copy]], atol=1e-6)
    # The rig's jaw barely reaches the cut (0.4 mm); the far end of the neck does not move at all.
    weight = dressing.anchor_weight.numpy()[a - rig.num_vertices : b - rig.num_vertices]
    moved = np.linalg.norm(out[1, a:b] - out[0, a:b], axis=-1)  # (N,) m under jawOpen
    assert moved[copy].max() > 1e-4 and (moved[weight == 0] == 0).all() and (weight == 0).sum() > 100
    # A learned face may move its boundary more: a 5 mm shift of the whole face is taken fully at the
    # top ring, by a share that falls with the distance below it, and not at all further down.
    shifted = dressing(rig.vertices + np.float32([0.0, -0.005, 0.002]))[a:b] - dressing.neutral()[a:b]
    follow = (weight > 0) & ~copy
    assert follow.sum() > 20 and (weight[follow] < 1).all()
    np.testing.assert_allclose(np.linalg.norm(shifted, axis=-1), weight * np.hypot(0.005, 0.002), atol=1e-6)
    rest = dressing.neutral()[a:b]
    below = np.linalg.norm(rest[follow] - rig.vertices[anchor[follow]], axis=-1)
    assert np.corrcoef(below, weight[follow])[0, 1] < -0.8  # further from the face, less of its motion


def test_neck_can_be_turned_off(rig, dressing):
    bare = FaceDressing.for_rig(rig, DressingConfig(neck=False))
    a, b = dressing.ranges["neck"]
    assert "neck" not in bare.ranges and bare.num_vertices == dressing.num_vertices - (b - a)
    assert len(bare.triangles) == len(dressing.triangles) - np.subtract(*dressing.triangle_ranges["neck"][::-1])
    np.testing.assert_allclose(bare.neutral()[:a], dressing.neutral()[:a], atol=1e-7)
    np.testing.assert_allclose(bare.neutral()[a:], dressing.neutral()[b:], atol=1e-7)
    assert len(bare.skin()[0]) == rig.num_vertices


def test_a_rig_built_before_the_neck_still_loads(rig, dressing):
    """No neck part and no anchor weights (the asset before them): the lashes follow fully, as before."""
    import dataclasses

    d = rig.dressing
    codes = d["dressing_part"]
    keep = codes != list(d["dressing_part_names"]).index("neck")
    count = int(keep.sum())
    assert keep[:count].all()  # the neck is stored last
    old = {k: v for k, v in d.items() if k != "dressing_anchor_weight"}
    old.update(dressing_vertices=d["dressing_vertices"][:count], dressing_part=codes[:count],
               dressing_deltas=d["dressing_deltas"][:, :count], dressing_anchor=d["dressing_anchor"][:count],
               dressing_triangles=d["dressing_triangles"][(d["dressing_triangles"] < count).all(1)],
               dressing_part_names=d["dressing_part_names"][:-1])
    older = FaceDressing.for_rig(dataclasses.replace(rig, dressing=old))
    assert "neck" not in older.ranges and set(older.ranges) == set(PARTS) - {"neck"}
    frame = rig(rig.weights({"eyeBlinkLeft": 1.0, "jawOpen": 0.5}))
    np.testing.assert_allclose(part(older(frame), older, "lashes"), part(dressing(frame), dressing, "lashes"), atol=1e-7)
    np.testing.assert_allclose(older(frame)[: older.ranges["hair"][1]], dressing(frame)[: dressing.ranges["hair"][1]], atol=1e-7)


def test_lower_lashes_are_a_short_line_under_the_eye(rig, dressing):
    """The source's lashes are solid cards: full length, the lower ones drew a grey band under each eye.
    Shortened toward their lid, they keep their anchors and ride the lid as before."""
    full = FaceDressing.for_rig(rig, DressingConfig(lower_lashes=1.0))
    a, b = dressing.ranges["lashes"]
    h = slice(a - rig.num_vertices, b - rig.num_vertices)
    anchor = dressing.helper_anchor.numpy()[h]
    lid = rig.vertices[anchor]
    short, long = (np.linalg.norm(d.helper_vertices.numpy()[h] - lid, axis=1) for d in (dressing, full))
    moved = short < long - 1e-7
    assert 0.3 < moved.mean() < 0.7  # the lower lashes, about half of them
    np.testing.assert_allclose(short[moved], 0.4 * long[moved], atol=1e-7)  # float32 vertices
    np.testing.assert_allclose(short[~moved], long[~moved], atol=1e-7)  # the upper ones unchanged
    assert lid[moved, 1].mean() < lid[~moved, 1].mean()  # below the upper ones' lids
    closed = rig(rig.weights({"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0})[None])
    rest, shut = dressing(rig.vertices[None])[0, a:b], dressing(closed)[0, a:b]
    np.testing.assert_allclose(shut - rest, (closed[0] - rig.vertices)[anchor], atol=1e-6)  # they ride their lid


def test_lower_lashes_fade_into_the_skin_toward_their_tips(rig, dressing):
    """Solid cards drawn in one colour made a band; sparse lashes show the skin between them, more at the tips."""
    a, b = dressing.ranges["lashes"]
    h = slice(a - rig.num_vertices, b - rig.num_vertices)
    reach = np.linalg.norm(dressing.helper_vertices.numpy()[h] - rig.vertices[dressing.helper_anchor.numpy()[h]], axis=1)
    colours = dressing.colours[a:b]
    skin, dark = np.asarray(DressingConfig().skin), np.asarray(DressingConfig().lashes)
    toward_skin = (colours - dark) @ (skin - dark) / np.sum((skin - dark) ** 2)  # (L,) 0 lash colour .. 1 skin
    upper = colours.sum(1) == colours.sum(1).min()
    assert upper.mean() > 0.3 and np.allclose(toward_skin[upper], 0, atol=1e-6)  # the upper lashes stay dark
    tips = ~upper & (reach > 0.5 * reach[~upper].max())
    assert tips.any() and toward_skin[tips].min() > 0.35 and toward_skin[~upper].max() <= 0.8 + 1e-6
    solid = FaceDressing.for_rig(rig, DressingConfig(lower_lash_fade=0.0)).colours[a:b]
    np.testing.assert_allclose(solid, np.broadcast_to(dark, solid.shape), atol=1e-6)


def test_only_the_thin_sheets_are_two_sided(rig, dressing):
    both = dressing.two_sided()
    assert both.shape == (len(dressing.triangles),)
    sheets = np.zeros_like(both)
    for name in ("lashes", "hair"):
        sheets[slice(*dressing.triangle_ranges[name])] = True
    assert np.array_equal(both, sheets)  # the face, teeth, tongue, neck and eyes show their fronts only
