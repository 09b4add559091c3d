import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from blendtalk.face.flame import (EXPORT_NUM_EXPR, FLAME_NUM_SHAPE, FlameModel, axis_angle_to_matrix, flame_export,
                             load_flame, read_flame_model)

MOUTH_Y = -0.03  # m: the synthetic mouth slit
ROOT_PARENT = 4294967295  # FLAME stores the root's parent as 2**32 - 1


def synthetic_flame_arrays(nx: int = 15, ny: int = 17, num_expr: int = 20, seed: int = 0) -> dict:
    """A toy head with FLAME's keys and layouts: a curved face grid with a mouth slit, five joint
    anchor vertices, the lower face skinned to a jaw behind the mouth, eye patches to the eyes."""
    rng = np.random.default_rng(seed)
    xs, ys = np.linspace(-0.07, 0.07, nx), np.linspace(-0.1, 0.08, ny)
    gx, gy = np.meshgrid(xs, ys)  # (ny, nx)
    gz = 0.05 * np.cos(gx / 0.07 * np.pi / 2)  # bulges towards +z, the face's front
    # Open the mouth slit: rows straddling MOUTH_Y become the upper and lower lip.
    row_lo = int(np.searchsorted(ys, MOUTH_Y)) - 1
    grid = np.stack([gx, gy, gz], -1).reshape(-1, 3)
    joints = np.array([[0, 0, -0.05], [0, -0.08, -0.05], [0, -0.02, -0.04], [0.03, 0.04, 0.0], [-0.03, 0.04, 0.0]])
    v = np.concatenate([grid, joints])
    nv = len(v)
    faces = []
    mouth_cols = range(nx // 3, nx - nx // 3 - 1)
    for r in range(ny - 1):
        for c in range(nx - 1):
            if r == row_lo and c in mouth_cols:
                continue  # the slit: no triangles join the lips here
            a, b, d, e = r * nx + c, r * nx + c + 1, (r + 1) * nx + c, (r + 1) * nx + c + 1
            faces += [[a, b, e], [a, e, d]]
    weights = np.zeros((nv, 5))
    rows = np.repeat(np.arange(ny), nx)
    centre = np.exp(-(grid[:, 0] / 0.04) ** 2)  # jaw influence fades towards the cheeks
    jaw = np.where(rows <= row_lo, centre, 0.0)
    weights[: nx * ny, 2] = jaw
    weights[: nx * ny, 1] = 1 - jaw
    for eye, x0 in ((3, 0.03), (4, -0.03)):
        near = np.linalg.norm(grid[:, :2] - [x0, 0.04], axis=1) < 0.012
        weights[: nx * ny][near] = 0
        weights[: nx * ny][near, eye] = 1
    weights[nx * ny :] = np.eye(5)
    j_reg = sp.csc_matrix((np.ones(5), (np.arange(5), np.arange(nx * ny, nv))), shape=(5, nv))
    shapedirs = rng.normal(0, 1e-4, (nv, 3, FLAME_NUM_SHAPE + num_expr))
    shapedirs[nx * ny :] = 0  # anchors (joints) move only through the regressor
    posedirs = np.zeros((nv, 3, 36))
    posedirs[: nx * ny][jaw > 0] = rng.normal(0, 1e-4, ((jaw > 0).sum(), 3, 36))  # correctives on the lower face only
    return {
        "v_template": v, "f": np.array(faces, dtype=np.uint32), "shapedirs": shapedirs, "posedirs": posedirs,
        "J_regressor": j_reg, "kintree_table": np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        "weights": weights, "J": joints, "bs_style": "lbs", "bs_type": "lrotmin",
        "_lips": (row_lo, nx), "_jaw": jaw,
    }


class _FakeCh:
    """Pickles like a chumpy Ch: class chumpy.ch.Ch with its array in the state as 'x'."""

    def __init__(self, x):
        self.x = x

    def __getstate__(self):
        return {"x": self.x, "_dirty_vars": set(), "_itr": None, "_make_dense": False, "_make_sparse": False,
                "_depends_on_deps": {}}


def write_flame_pkl(path, arrays: dict, monkeypatch, protocol: int = 2, chumpy: bool = True) -> None:
    """Dump arrays like FLAME's pickle: shapedirs as a chumpy Ch (without chumpy installed)."""
    data = {k: v for k, v in arrays.items() if not k.startswith("_")}
    if chumpy:
        pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
        _FakeCh.__module__, _FakeCh.__qualname__, _FakeCh.__name__ = "chumpy.ch", "Ch", "Ch"
        mod.Ch, pkg.ch = _FakeCh, mod
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "chumpy", pkg)
            m.setitem(sys.modules, "chumpy.ch", mod)
            data["shapedirs"] = _FakeCh(data["shapedirs"])
            with open(path, "wb") as f:
                pickle.dump(data, f, protocol=protocol)
    else:
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    arrays = synthetic_flame_arrays()
    path = tmp_path / "generic_model.pkl"
    write_flame_pkl(path, arrays, monkeypatch)
    return path, arrays


def test_reads_chumpy_pickle_without_chumpy(toy):
    path, arrays = toy
    assert "chumpy" not in sys.modules or not hasattr(sys.modules["chumpy"], "Ch")
    a = read_flame_model(path)
    np.testing.assert_array_equal(a["shapedirs"], arrays["shapedirs"])
    np.testing.assert_array_equal(a["J_regressor"], arrays["J_regressor"].toarray())
    assert a["posedirs"].shape == (36, len(arrays["v_template"]) * 3)
    assert a["parents"].tolist() == [-1, 0, 1, 1, 1] and a["f"].dtype == np.int64


@pytest.mark.parametrize("protocol", [0, 1, 4])
def test_other_pickle_protocols(tmp_path, monkeypatch, protocol):
    arrays = synthetic_flame_arrays(nx=6, ny=8, num_expr=4)
    path = tmp_path / "m.pkl"
    write_flame_pkl(path, arrays, monkeypatch, protocol=protocol)
    np.testing.assert_allclose(read_flame_model(path)["shapedirs"], arrays["shapedirs"])


def test_posedirs_layouts_agree(tmp_path, monkeypatch):
    arrays = synthetic_flame_arrays(nx=6, ny=8, num_expr=4)
    nv = len(arrays["v_template"])
    flat = dict(arrays, posedirs=arrays["posedirs"].reshape(nv * 3, 36).T)  # (36, V*3)
    for name, a in (("a.pkl", arrays), ("b.pkl", flat)):
        write_flame_pkl(tmp_path / name, a, monkeypatch, chumpy=False)
    np.testing.assert_array_equal(read_flame_model(tmp_path / "a.pkl")["posedirs"],
                                  read_flame_model(tmp_path / "b.pkl")["posedirs"])


def test_zero_parameters_give_the_template(toy):
    path, arrays = toy
    flame = load_flame(path, num_expression=20)
    torch.testing.assert_close(flame(), torch.as_tensor(arrays["v_template"], dtype=torch.float32))
    zeros = flame(expr=torch.zeros(4, 20), jaw_pose=torch.zeros(4, 3))
    assert zeros.shape == (4, flame.num_vertices, 3)
    torch.testing.assert_close(zeros, flame.v_template.expand(4, -1, -1))


def test_jaw_opens_the_mouth_and_moves_only_the_lower_face(toy):
    path, arrays = toy
    flame = load_flame(path, num_expression=20)
    row_lo, nx = arrays["_lips"]
    lower, upper = row_lo * nx + nx // 2, (row_lo + 1) * nx + nx // 2  # lip vertices at the centre
    open_ = flame(jaw_pose=torch.tensor([0.2, 0.0, 0.0]))
    gap0 = float(flame.v_template[upper, 1] - flame.v_template[lower, 1])
    gap = float(open_[upper, 1] - open_[lower, 1])
    assert gap > gap0 + 0.005, (gap0, gap)  # a positive x rotation drops the jaw by several mm
    moved = (open_ - flame.v_template).norm(dim=-1)
    jaw = torch.as_tensor(arrays["_jaw"] > 1e-3)
    n_grid = len(jaw)
    assert moved[:n_grid][~jaw].max() < 1e-6  # no jaw weight, no posedirs: the upper face stays put
    assert moved[:n_grid][jaw].mean() > 1e-3
    torch.testing.assert_close(flame.displacement(jaw_pose=torch.tensor([0.2, 0.0, 0.0])), open_ - flame.v_template)


def test_expression_is_linear_at_zero_pose_and_eyes_rotate(toy):
    path, _ = toy
    flame = load_flame(path, num_expression=20)
    e = torch.randn(2, 20)
    torch.testing.assert_close(flame.displacement(expr=e), torch.einsum("vce,be->bvc", flame.exprdirs, e))
    eyes = flame(eyes_pose=torch.tensor([0.0, 0.3, 0.0, 0.0, 0.0, 0.0]))
    assert (eyes - flame.v_template).norm(dim=-1).max() > 1e-3
    batch = flame(expr=torch.randn(3, 1, 20), jaw_pose=torch.randn(5, 3) * 0.1)  # leading dims broadcast
    assert batch.shape == (3, 5, flame.num_vertices, 3)


def test_rodrigues_matches_known_rotations_and_has_gradients_at_zero():
    r = torch.tensor([[0.0, 0.0, math_pi_2()], [1e-5, 0, 0]], requires_grad=True)
    rot = axis_angle_to_matrix(r)
    torch.testing.assert_close(rot[0], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    z = torch.zeros(3, requires_grad=True)
    axis_angle_to_matrix(z)[0, 1].backward()
    assert torch.isfinite(z.grad).all() and abs(float(z.grad[2]) + 1) < 1e-6  # d R01 / d r_z = -1 at 0


def math_pi_2() -> float:
    return float(np.pi / 2)


def test_missing_key_names_the_key_and_the_expected_file(tmp_path, monkeypatch):
    arrays = synthetic_flame_arrays(nx=6, ny=8, num_expr=4)
    del arrays["weights"]
    write_flame_pkl(tmp_path / "m.pkl", arrays, monkeypatch)
    with pytest.raises(ValueError, match=r"weights.*generic_model.pkl"):
        read_flame_model(tmp_path / "m.pkl")


@pytest.mark.parametrize("key", ["posedirs", "weights", "shapedirs", "J_regressor", "f", "kintree_table"])
def test_wrong_shapes_are_refused(tmp_path, monkeypatch, key):
    arrays = synthetic_flame_arrays(nx=6, ny=8, num_expr=4)
    nv = len(arrays["v_template"])
    arrays[key] = {
        "posedirs": np.zeros((nv, 3, 27)),  # 27 correctives: not 9 per non-root joint of 5
        "weights": np.zeros((nv + 1, 5)),
        "shapedirs": np.zeros((nv, 3, FLAME_NUM_SHAPE)),  # shape components but no expression ones
        "J_regressor": np.zeros((4, nv)),
        "f": np.array([[0, 1, nv]]),  # an index past the last vertex
        "kintree_table": np.array([[ROOT_PARENT, 0, 3, 1, 1], [0, 1, 2, 3, 4]]),  # a parent after its child
    }[key]
    write_flame_pkl(tmp_path / "m.pkl", arrays, monkeypatch, chumpy=False)
    with pytest.raises(ValueError, match=key if key != "kintree_table" else "parent"):
        read_flame_model(tmp_path / "m.pkl")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickles_needing_other_classes_are_refused(tmp_path, monkeypatch):
    arrays = synthetic_flame_arrays(nx=6, ny=8, num_expr=4)
    arrays["v_template"] = _Evil()
    write_flame_pkl(tmp_path / "evil.pkl", arrays, monkeypatch, chumpy=False)
    with pytest.raises(ValueError, match="refusing to load global"):
        read_flame_model(tmp_path / "evil.pkl")
    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(ValueError, match="FLAME"):
        read_flame_model(tmp_path / "text.pkl")
    with pytest.raises(FileNotFoundError, match="generic_model.pkl"):
        read_flame_model(tmp_path / "absent.pkl")


class _FakeSelect:
    """Pickles like a chumpy expression (chumpy.reordering.Select): no stored array 'x'."""

    def __getstate__(self):
        return {"a": np.zeros(3), "idxs": np.arange(2)}


def test_chumpy_expressions_are_refused(tmp_path, monkeypatch):
    arrays = synthetic_flame_arrays(nx=6, ny=8, num_expr=4)
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.reordering")
    _FakeSelect.__module__, _FakeSelect.__qualname__, _FakeSelect.__name__ = "chumpy.reordering", "Select", "Select"
    mod.Select, pkg.reordering = _FakeSelect, mod
    data = {k: v for k, v in arrays.items() if not k.startswith("_")}
    data["v_template"] = _FakeSelect()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "chumpy", pkg)
        m.setitem(sys.modules, "chumpy.reordering", mod)
        (tmp_path / "m.pkl").write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(ValueError, match="v_template.*chumpy expression"):
        read_flame_model(tmp_path / "m.pkl")


def test_num_expression_bounds(toy):
    path, _ = toy
    with pytest.raises(ValueError, match="num_expression"):
        load_flame(path, num_expression=21)
    assert FlameModel(read_flame_model(path), num_expression=5).num_expression == 5


def test_flame_export_layout(tmp_path):
    t = 7
    out = flame_export({"expr": np.random.randn(t, 50), "jaw_pose": np.random.randn(t, 3) * 0.1}, tmp_path / "f.npz")
    with np.load(out) as z:
        got = {k: z[k] for k in z.files}
    shapes = {"expr": (t, EXPORT_NUM_EXPR), "jaw_pose": (t, 3), "rotation": (t, 3), "neck_pose": (t, 3),
              "eyes_pose": (t, 6), "translation": (t, 3), "shape": (FLAME_NUM_SHAPE,), "static_offset": (1, 5023, 3)}
    assert {k: v.shape for k, v in got.items()} == shapes
    assert all(v.dtype == np.float32 for v in got.values())  # GaussianAvatars' motion loader keeps float32 only
    assert np.all(got["expr"][:, 50:] == 0) and np.all(got["rotation"] == 0)
    with pytest.raises(ValueError, match="expr"):
        flame_export({"expr": np.zeros((t, 101))}, tmp_path / "g.npz")
    with pytest.raises(ValueError, match="jaw_pose"):
        flame_export({"expr": np.zeros((t, 10)), "jaw_pose": np.zeros((t + 1, 3))}, tmp_path / "g.npz")


def test_flame_masks_are_read_as_index_arrays(tmp_path):
    from blendtalk.face.flame import read_flame_masks

    with open(tmp_path / "FLAME_masks.pkl", "wb") as f:
        pickle.dump({"lips": np.array([3, 4, 5]), "face": np.arange(10)}, f, protocol=2)
    masks = read_flame_masks(tmp_path / "FLAME_masks.pkl")
    assert masks["lips"].tolist() == [3, 4, 5] and masks["face"].dtype == np.int64
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="region name"):
        read_flame_masks(tmp_path / "bad.pkl")
