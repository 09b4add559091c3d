"""The file renderer's look baked for the live page (blendtalk/live/look.py): the page's blend of
per-unit wrinkles, creases and nasolabial fold rise against what the renderer measures on the moved face."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from blendtalk.constants import ASSETS_DIR
from blendtalk.face.geometry import vertex_normals
from blendtalk.live.look import LOOK_VERSION, bake_look, blend, blend_brows, blend_folds


@pytest.fixture(scope="module")
def pipe():
    from blendtalk.pipeline import Pipeline

    return Pipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def look(pipe):
    return bake_look(pipe.rig, pipe.renderer(512))


def _weights(pipe, **units) -> np.ndarray:
    names = list(pipe.rig.blendshape_names)
    w = np.zeros(len(names))
    for name, value in units.items():
        w[names.index(name)] = value
    return w


def _renderer_terms(pipe, w):
    """What the file renderer measures on the ARKit-driven face of weights w (K,): amounts (V, C), crease (V,) m."""
    r = pipe.renderer(512)
    face = torch.as_tensor(pipe.rig.vertices + np.einsum("k,kvc->vc", w, pipe.rig.deltas), dtype=torch.float32)[None]
    dressed = r.dressing(face)
    normals = vertex_normals(dressed, r.triangles)
    skin = r.skin_index  # the renderer measures creases over the skin (face and neck), the face first
    crease = r.creases(dressed[:, skin], normals[:, skin])[0, : r.num_vertices]
    return r.wrinkles.amounts(face)[0].numpy(), crease.numpy()


def test_rest_draws_no_lines_and_no_crease(look):
    amounts, crease = blend(look, np.zeros(len(look["units"])))
    assert amounts.max() == 0 and np.abs(crease).max() == 0
    folds = blend_folds(look, np.zeros(len(look["units"])))
    assert folds[:, 1].max() == 0 and np.abs(folds[:, 0]).max() > 1, "no fold depth, the coordinate still baked"


def _renderer_folds(pipe, w) -> np.ndarray:
    """The renderer's fold attributes (V, 2) [coordinate, depth] on the ARKit-driven face of weights w (K,)."""
    wr = pipe.renderer(512).wrinkles
    face = torch.as_tensor(pipe.rig.vertices + np.einsum("k,kvc->vc", w, pipe.rig.deltas), dtype=torch.float32)[None]
    with torch.inference_mode():
        return wr.attributes(face, wr.num_vertices)[0, :, 4:6].numpy()


@pytest.mark.parametrize("units, sides, depth", [
    ({"mouthSmileLeft": 1.0}, (0,), 0.9),  # one side's smile deepens that side's fold only
    ({"noseSneerLeft": 1.0, "noseSneerRight": 1.0}, (0, 1), 0.3),  # disgust's wrinkled nose: 1.5 mm of rise
    ({"mouthSmileLeft": 0.6, "mouthSmileRight": 0.6, "jawOpen": 0.15, "cheekSquintLeft": 0.5}, (0, 1), 0.5),  # a smile that talks
    ({"jawOpen": 0.6, "mouthFunnel": 0.5, "mouthClose": 0.1}, (), 0),  # speech draws no fold
])
def test_fold_follows_the_renderer(pipe, look, units, sides, depth):
    """The page's fold (the per-unit rises summed, then the renderer's ramp on the static fold line)
    is the renderer's on the moved face: deep beside the nose and mouth on the units' sides, none elsewhere."""
    w = _weights(pipe, **units)
    page, exact = blend_folds(look, w), _renderer_folds(pipe, w)
    assert np.abs(page - exact).max() < 1e-3, np.abs(page - exact).max()
    side = np.asarray(pipe.renderer(512).wrinkles.folds.side)
    on_line = np.abs(page[:, 0]) < 1  # within a half-width of the fold's line, where the crease shows
    for k in (0, 1):
        deepest = page[(side == k) & on_line, 1].max()
        assert deepest > depth if k in sides else page[side == k, 1].max() == 0, (k, deepest)
    # the depth rides on the fold's strip of skin (its line mask reaches about 5 half-widths), nowhere else
    assert (page[:, 1] > 0).sum() < 200 and np.all(np.abs(page[page[:, 1] > 0, 0]) < 6)


@pytest.mark.parametrize("units", [
    {"browInnerUp": 1.0},  # surprise's and sadness's forehead
    {"browInnerUp": 1.0, "browDownLeft": 0.6, "browDownRight": 0.6},  # the sad brow: one unit undoes the other's lines
    {"browDownLeft": 1.0, "browDownRight": 1.0, "noseSneerLeft": 0.7, "noseSneerRight": 0.7},  # anger, disgust
])
def test_blend_follows_the_renderer(pipe, look, units):
    """The page's blend of per-unit bakes draws lines where the renderer does, about as deep, and
    the same crease darkening."""
    w = _weights(pipe, **units)
    amounts, crease = blend(look, w)
    exact, exact_crease = _renderer_terms(pipe, w)
    active = (exact > 0.05) | (amounts > 0.05)
    assert exact.max() > 0.5, "the case draws lines in the renderer"
    assert np.abs(amounts - exact)[active].mean() < 0.2, np.abs(amounts - exact)[active].mean()
    strength, floor = look["crease"]["strength"], look["crease"]["floor"]
    dark = np.clip(1 - strength * np.maximum(crease, 0), floor, 1)
    exact_dark = np.clip(1 - strength * np.maximum(exact_crease, 0), floor, 1)
    error = np.abs(dark - exact_dark)  # linear to first order: a few vertices of a deep fold differ more
    assert exact_dark.min() < 0.9 and np.percentile(error, 99) < 0.05 and error.mean() < 0.01, (error.max(), error.mean())


@pytest.mark.parametrize("units", [
    {"browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0},  # surprise
    {"browInnerUp": 0.8, "browDownLeft": 0.5, "browDownRight": 0.5, "eyeSquintLeft": 0.4},  # sadness
])
def test_brows_follow_the_renderer(pipe, look, units):
    """The page's brow coordinates (rest plus the per-unit shifts summed by weight) are the renderer's
    on the moved face: the brows ride on the skin the same way in the browser."""
    r = pipe.renderer(512)
    w = _weights(pipe, **units)
    face = torch.as_tensor(pipe.rig.vertices + np.einsum("k,kvc->vc", w, pipe.rig.deltas), dtype=torch.float32)[None]
    with torch.inference_mode():
        exact = r._brows(r.dressing(face))[0, : r.num_vertices].numpy()
    page = blend_brows(look, w)
    assert np.abs(page - exact).max() < 1e-4, np.abs(page - exact).max()  # m: a tenth of the brow's soft edge
    assert np.abs(page - blend_brows(look, 0 * w)).max() > 1e-3, "the brows ride: their coordinates move"


def test_look_matches_the_file_renderer(pipe, look):
    r = pipe.renderer(512)
    position, target = np.array(look["camera"]["position"]), np.array(look["camera"]["target"])
    assert np.linalg.norm(position - target) == pytest.approx(r.camera.distance, rel=1e-6)
    parts = look["parts"]
    assert sum(p["count"] for p in parts.values()) == len(r.material)
    assert parts["face"]["face_vertices"] == r.num_vertices and len(look["units"]) == 52


def test_shipped_look_is_current(look):
    shipped = json.loads((ASSETS_DIR / "live" / "face_look.json").read_text())
    stale = "assets/live/face_look.json is stale: python tools/build_live_glb.py"
    assert shipped["units"] == look["units"] and shipped["camera"] == pytest.approx(look["camera"]), stale
    assert shipped["version"] == LOOK_VERSION and shipped["wrinkle"] == pytest.approx(look["wrinkle"]), stale
    assert shipped["wrinkle_glsl"] == look["wrinkle_glsl"], stale
    face, shipped_face = look["parts"]["face"], shipped["parts"]["face"]
    assert np.allclose(shipped_face["fold_rise"], face["fold_rise"], atol=1e-5), stale
    assert abs(shipped_face["fold_line"]["count"] - face["fold_line"]["count"]) <= 2, stale
    for new, old in zip(look["parts"]["face"]["wrinkles"], shipped["parts"]["face"]["wrinkles"]):
        assert abs(new["count"] - old["count"]) <= 0.01 * max(new["count"], 100), stale
