"""Dynamic wrinkles (render/wrinkles.py): lines only where an expression squeezes the skin, in the
direction faces fold there, nasolabial folds only where the cheek and upper lip rise, and the same
look from both render back ends (test_render_gl covers the latter with brow and smile frames)."""

import numpy as np
import pytest
import torch

from blendtalk.render.renderer import Renderer, RenderConfig
from blendtalk.expression.head_motion import head_pivot, rotate_head
from blendtalk.render.wrinkles import (WrinkleConfig, Wrinkles, darkening, line_masks, nasolabial_folds,
                                       unit_wrinkles)


@pytest.fixture(scope="module")
def wrinkles(rig):
    return Wrinkles(torch.as_tensor(rig.vertices), torch.as_tensor(rig.triangles), torch.as_tensor(line_masks(rig)),
                    WrinkleConfig(), nasolabial_folds(rig))


def amounts(rig, wrinkles, **named) -> np.ndarray:
    """Line amounts (V, 2) [vertical, horizontal] of one pose given as ARKit weights."""
    verts = torch.as_tensor(rig(rig.weights(named)), dtype=torch.float32)[None]
    return wrinkles.amounts(verts)[0].numpy()


def test_a_face_at_rest_or_only_talking_has_no_lines(rig, wrinkles):
    assert amounts(rig, wrinkles).max() == 0
    talking = amounts(rig, wrinkles, jawOpen=1.0, mouthFunnel=0.6, mouthPucker=0.5, mouthSmileLeft=0.5)
    assert talking.max() < 0.05


def test_raised_brows_line_the_forehead_and_knitted_brows_the_glabella(rig, wrinkles):
    masks = line_masks(rig)
    raised = amounts(rig, wrinkles, browInnerUp=1.0, browOuterUpLeft=1.0, browOuterUpRight=1.0)
    assert raised[masks[:, 1] > 0.5, 1].max() > 0.9  # horizontal forehead lines
    assert raised[:, 0].max() < 0.1  # surprise must not draw the knitted brows' vertical lines
    knitted = amounts(rig, wrinkles, browDownLeft=1.0, browDownRight=1.0)
    assert knitted[masks[:, 0] > 0.5, 0].max() > 0.9
    assert (knitted[masks[:, 0] == 0, 0] == 0).all()  # never on the cheeks, mouth or lids


def test_a_wrinkled_nose_lines_its_bridge_and_sides_and_a_smile_or_blink_does_not(rig, wrinkles):
    eyes = np.asarray(rig.dressing["eye_centres"])
    u = abs(eyes[0, 0] - eyes[1, 0]) / 2  # half the distance between the eyes
    v = rig.vertices
    # the nose below its root (whose lines a frown draws too) and above its lower third, on its surface
    nose = (np.abs(v[:, 0]) < 0.45 * u) & (v[:, 1] < eyes[0, 1] - 0.6 * u) & (v[:, 1] > eyes[0, 1] - 0.95 * u) & \
        (v[:, 2] > eyes[0, 2])
    assert nose.sum() > 20
    sneer = amounts(rig, wrinkles, noseSneerLeft=1.0, noseSneerRight=1.0, mouthUpperUpLeft=1.0, mouthUpperUpRight=1.0)
    assert sneer[nose, 1].max() > 0.5  # lines across the nose (AU9 with AU10, as in disgust)
    for other in ({"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}, {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0},
                  {"mouthShrugUpper": 1.0}, {"mouthFunnel": 1.0}):
        assert amounts(rig, wrinkles, **other)[nose, 1].max() < 0.2, other

def test_line_masks_leave_lips_and_lids_alone(rig):
    masks = line_masks(rig)
    assert masks.shape == (rig.num_vertices, 2) and masks.min() >= 0 and masks.max() <= 1
    assert masks[rig.masks["lips"]].max() == 0
    centres, radius = np.asarray(rig.dressing["eye_centres"]), float(np.max(rig.dressing["eye_radius"]))
    for centre in centres:  # the lids, over each eyeball
        lids = np.linalg.norm(rig.vertices[:, :2] - centre[:2], axis=1) < 0.9 * radius
        assert lids.sum() > 20 and masks[lids].max() == 0
    forehead = rig.vertices[:, 1] > rig.vertices[rig.masks["eyes"], 1].max() + 0.02
    assert masks[forehead, 1].mean() > 0.3


def test_darkening_dips_on_line_centres_only():
    config = WrinkleConfig(strength=0.4, fold_strength=0.5)
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0, 0], [0.0, 0.0, 1.0, 0.0, 0, 0], [0.5, 0.5, 1.0, 1.0, 0, 0],
                      [0.3, 0.0, 0.0, 1.0, 0, 0]])
    factor = darkening(w, config).numpy()
    np.testing.assert_allclose(factor[:3], [1.0, 0.6, 1.0], atol=1e-6)  # no line; on a line; between lines
    assert factor[3] == pytest.approx(0.6, abs=1e-6)  # horizontal lines do not depend on the phase across
    # A fold darkens on its line, fades over a half-width either side and needs depth.
    fold = torch.tensor([[0.5, 0.5, 0, 0, 0.0, 1.0], [0.5, 0.5, 0, 0, 0.5, 1.0], [0.5, 0.5, 0, 0, -1.5, 1.0],
                         [0.5, 0.5, 0, 0, 0.0, 0.0]])
    np.testing.assert_allclose(darkening(fold, config).numpy(), [0.5, 1 - 0.5 * 0.25, 1.0, 1.0], atol=1e-6)


def test_nasolabial_folds_deepen_with_cheek_and_upper_lip_not_speech_or_nods(rig, wrinkles):
    def depth(**named):
        return wrinkles.fold_depths(torch.as_tensor(rig(rig.weights(named)), dtype=torch.float32)[None])[0].numpy()

    np.testing.assert_array_equal(depth(), [0, 0])
    for speech in ({"jawOpen": 1.0}, {"mouthFunnel": 0.8}, {"mouthPucker": 0.8}, {"mouthClose": 1.0, "jawOpen": 0.3},
                   {"mouthRollUpper": 1.0}, {"mouthPressLeft": 0.6, "mouthPressRight": 0.6}):
        assert depth(**speech).max() == 0, speech  # closures, rounding and an open jaw draw no fold
    assert depth(mouthSmileLeft=1.0, mouthSmileRight=1.0).min() > 0.9
    sneer = depth(noseSneerLeft=1.0, noseSneerRight=1.0, mouthUpperUpLeft=1.0, mouthUpperUpRight=1.0)
    assert sneer.min() > 0.5  # disgust's nose wrinkle and raised upper lip
    one_side = depth(mouthSmileLeft=1.0)
    assert one_side[0] > 0.9 and one_side[1] == 0  # each fold follows its own side
    # A nod, turn and tilt of the whole head is no rise.
    smile = torch.as_tensor(rig(rig.weights({"mouthSmileLeft": 0.4, "mouthSmileRight": 0.4})), dtype=torch.float32)[None]
    turned = rotate_head(smile, torch.tensor([[0.2, 0.25, -0.1]]), torch.as_tensor(head_pivot(rig.vertices), dtype=torch.float32))
    np.testing.assert_allclose(wrinkles.fold_depths(turned).numpy(), wrinkles.fold_depths(smile).numpy(), atol=1e-3)


def test_fold_masks_follow_the_face(rig):
    folds = nasolabial_folds(rig)
    assert folds.line.shape == folds.across.shape == (rig.num_vertices,) and folds.lift.shape == (2, rig.num_vertices)
    np.testing.assert_allclose(folds.lift.sum(1), [1, 1], rtol=1e-5)
    assert folds.line[rig.masks["lips"]].max() == 0  # the crease stops at the lips
    on_line = (folds.line > 0.5) & (np.abs(folds.across) < WrinkleConfig().fold_width)  # within a half-width
    assert on_line.sum() >= 8
    x, y = rig.vertices[on_line, 0], rig.vertices[on_line, 1]
    eyes = np.asarray(rig.dressing["eye_centres"])
    lips = rig.vertices[rig.masks["lips"]]
    # between the eyes and the mouth corners' height, beside the nose, on both sides
    assert y.max() < eyes[:, 1].min() and y.min() > lips[:, 1].min() and (x > 0).any() and (x < 0).any()
    assert np.abs(x).min() > 0.3 * abs(eyes[0, 0] - eyes[1, 0]) / 2
    assert folds.still.sum() > 100 and np.abs(rig.deltas[:, folds.still]).max() < 1e-4


def test_unit_wrinkles_bake_what_each_unit_draws(rig):
    static, units = unit_wrinkles(rig)
    assert static.shape == (rig.num_vertices, 3) and set(units) == set(rig.blendshape_names)
    assert all(u.shape == (rig.num_vertices, 3) and u.min() >= 0 and u.max() <= 1 for u in units.values())
    assert units["browInnerUp"][:, 1].max() > 0.9 and units["browDownLeft"][:, 0].max() > 0.5
    assert units["mouthSmileLeft"][:, 2].max() > 0.9 and units["mouthSmileLeft"][rig.vertices[:, 0] < 0, 2].max() == 0
    assert units["jawOpen"].max() < 0.05 and units["mouthFunnel"].max() < 0.05  # speech alone draws nothing


def test_rendered_forehead_darkens_when_the_brows_rise_and_not_at_rest(rig):
    on = Renderer.for_rig(rig, RenderConfig(size=192, backend="torch"))
    off = Renderer.for_rig(rig, RenderConfig(size=192, backend="torch", wrinkle_strength=0.0))
    rest = rig(rig.weights({}))
    np.testing.assert_array_equal(on(rest), off(rest))
    raised = rig(rig.weights({"browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0}))
    a, b = on(raised).astype(int), off(raised).astype(int)
    assert (a <= b).all()  # lines only darken
    assert ((b - a).max(-1) >= 8).sum() > 100  # and they show: pixels on the lines drop by 8+ levels


def test_wrinkle_mask_shape_is_checked(rig):
    with pytest.raises(ValueError, match="wrinkle_mask must have shape"):
        Renderer(rig.triangles, rig.vertices, RenderConfig(size=64, backend="torch"), wrinkle_mask=np.ones(rig.num_vertices))
