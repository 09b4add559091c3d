"""Dynamic wrinkles (render/wrinkles.py): lines only where an expression squeezes the skin, in the
direction faces fold there, and the same look from both render back ends (test_render_gl covers the
latter with brow frames)."""

import numpy as np
import pytest
import torch

from blendtalk.render.renderer import Renderer, RenderConfig
from blendtalk.render.wrinkles import WrinkleConfig, Wrinkles, darkening, line_masks


@pytest.fixture(scope="module")
def wrinkles(rig):
    return Wrinkles(torch.as_tensor(rig.vertices), torch.as_tensor(rig.triangles), torch.as_tensor(line_masks(rig)),
                    WrinkleConfig())


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
    config = WrinkleConfig(strength=0.4)
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 1.0, 1.0], [0.3, 0.0, 0.0, 1.0]])
    factor = darkening(w, config).numpy()
    np.testing.assert_allclose(factor[:3], [1.0, 0.6, 1.0], atol=1e-6)  # no line; on a line; between lines
    assert factor[3] == pytest.approx(0.6, abs=1e-6)  # horizontal lines do not depend on the phase across


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
