import json

import numpy as np
import pytest
import torch
from test_flame import synthetic_flame_arrays

from blendtalk.face.flame import FlameModel, _validate
from blendtalk.models.mapping import (
    ARKIT_BOUNDS, ArkitMapping, FlameMapping, load_mapping, mapping_dir, save_mapping,
)
from blendtalk.training.mapping import (MappingFitConfig, fit_arkit_mapping, fit_flame_mapping, fit_report,
                                        flame_displacement, observed_weights, sample_weights)
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.face.rig import FaceRig

V, P, K = 40, 12, 3  # vertices, rig units, blendshapes per domain


def toy_rig(seed: int = 0) -> FaceRig:
    rng = np.random.default_rng(seed)
    verts = rng.normal(0, 0.05, (V, 3)).astype(np.float32)
    tris = np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1)
    deltas = rng.normal(0, 2e-3, (P, V, 3)).astype(np.float32)
    lips = np.zeros(V, bool)
    lips[:6] = True
    crop = np.ones(V, bool)
    crop[-4:] = False
    return FaceRig(verts, tris, tuple(f"unit{i}" for i in range(P)), deltas, {"lips": lips, "face_crop": crop})


def toy_dfm(blendshapes: torch.Tensor | None = None, num_vertices: int = V) -> DeformationFusionModule:
    """A flat-MLP DFM whose decoder is exactly `blendshapes` (V*3, 2K) (unnormalised)."""
    torch.manual_seed(0)
    config = DFMConfig(num_vertices=num_vertices, num_blendshapes=K, use_geometric_map=False, mlp_hidden=(8,),
                       normalize_blendshapes=False)
    dfm = DeformationFusionModule(config).eval()
    if blendshapes is not None:
        with torch.no_grad():
            dfm.blendshape_weight.copy_(blendshapes)
    return dfm


def rig_matrix(rig: FaceRig) -> torch.Tensor:
    return torch.as_tensor(rig.deltas).reshape(rig.num_blendshapes, -1).T  # (V*3, P)


def nonneg_weights(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 2 * K, generator=torch.Generator().manual_seed(seed)) * 1e-3


def test_recovers_a_linear_truth_in_closed_form():
    rig = toy_rig()
    truth = torch.randn(P, 2 * K, generator=torch.Generator().manual_seed(1)) * 100  # weights (m) -> units
    dfm = toy_dfm(rig_matrix(rig) @ truth)
    config = MappingFitConfig(lambda_reg=0, lambda_params=0, bounded=False, steps=0)
    mapping = fit_arkit_mapping(dfm, rig, nonneg_weights(256, 0), nonneg_weights(64, 1), config)
    torch.testing.assert_close(mapping.matrix, truth, rtol=1e-4, atol=1e-3)
    assert mapping.info["metrics"]["heldout"]["mean_mm"] < 1e-4
    assert isinstance(mapping, ArkitMapping) and mapping.param_names == rig.blendshape_names


def test_bounded_fit_recovers_a_truth_inside_the_bounds_and_stays_in_them():
    rig = toy_rig()
    truth = torch.rand(P, 2 * K, generator=torch.Generator().manual_seed(2)) * 100  # M w in [0, 0.6] for w in [0, 1 mm]
    dfm = toy_dfm(rig_matrix(rig) @ truth)
    config = MappingFitConfig(lambda_reg=0, lambda_params=0, steps=300)
    mapping = fit_arkit_mapping(dfm, rig, nonneg_weights(512, 0), nonneg_weights(64, 1), config)
    assert mapping.bounds == ARKIT_BOUNDS
    held = mapping.info["metrics"]["heldout"]
    assert held["relative"] < 1e-2 and held["clamped_fraction"] == 0
    w = torch.randn(100, 2 * K) * 1e-2  # far outside the fitted range: still valid ARKit weights
    arkit = mapping.arkit_weights(w)
    assert arkit.shape == (100, P) and arkit.min() >= 0 and arkit.max() <= 1


@pytest.mark.slow
def test_bounded_refinement_beats_clamping_the_closed_form():
    rig = toy_rig()
    dfm = toy_dfm(torch.randn(V * 3, 2 * K) * 2e-3 + rig_matrix(rig) @ torch.randn(P, 2 * K) * 100)  # partly outside the rig's span
    gen = torch.Generator().manual_seed(0)
    train, held = sample_weights(2 * K, 2048, gen), sample_weights(2 * K, 512, gen)
    mapping = fit_arkit_mapping(dfm, rig, train, held, MappingFitConfig(steps=400))
    m = mapping.info["metrics"]
    assert m["heldout"]["relative"] < m["closed_form_clamped_heldout"]["relative"]
    assert m["closed_form_unbounded_heldout"]["relative"] <= m["heldout"]["relative"]  # the bound costs accuracy


@pytest.mark.slow
def test_round_trip_weights_arkit_vertices_stays_within_the_reported_error():
    rig = toy_rig()
    dfm = toy_dfm(torch.randn(V * 3, 2 * K) * 2e-3)
    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(1000, 2 * K, generator=gen) * 2e-3
    train = torch.cat([ref, sample_weights(2 * K, 1000, gen, reference=ref)])
    held = torch.rand(300, 2 * K, generator=gen) * 2e-3
    mapping = fit_arkit_mapping(dfm, rig, train, held, MappingFitConfig(steps=300, crop_loss=True))
    reported = mapping.info["metrics"]["heldout"]
    assert mapping.info["region"] == "face_crop"
    crop, lips = rig.mask("face_crop"), rig.mask("lips")
    # the reported figure is what the round trip gives on the held-out weights ...
    verts = rig(torch.as_tensor(mapping.arkit_weights(held.numpy())))  # weights -> ARKit -> vertices
    err = (verts - torch.as_tensor(rig.vertices) - dfm.decode(held).detach()).norm(dim=-1)  # (N, V)
    assert abs(float(err[:, crop].mean()) * 1e3 - reported["mean_mm"]) < 1e-4
    assert abs(float(err[:, lips].mean()) * 1e3 - reported["lip_mm"]) < 1e-4
    # ... and fresh weights from the same distribution stay close to it
    fresh = torch.rand(300, 2 * K, generator=gen) * 2e-3
    again = fit_report(rig.displacement, mapping, dfm, fresh, crop, lips)
    assert again["mean_mm"] < 1.3 * reported["mean_mm"]


def test_save_load_round_trip_and_stale_dfm(tmp_path):
    rig = toy_rig()
    dfm = toy_dfm(torch.randn(V * 3, 2 * K) * 2e-3)
    dfm.save_pretrained(tmp_path / "dfm")
    gen = torch.Generator().manual_seed(0)
    mapping = fit_arkit_mapping(dfm, rig, sample_weights(2 * K, 256, gen), sample_weights(2 * K, 64, gen),
                                MappingFitConfig(steps=20))
    folder = save_mapping(mapping, mapping_dir(tmp_path / "dfm", "arkit"), tmp_path / "dfm")
    assert folder == tmp_path / "dfm" / "mapping_arkit"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["info"]["metrics"]["heldout"]["mean_mm"] == mapping.info["metrics"]["heldout"]["mean_mm"]
    loaded = load_mapping(tmp_path / "dfm", "arkit")
    assert isinstance(loaded, ArkitMapping) and loaded.bounds == ARKIT_BOUNDS
    w = np.random.default_rng(0).normal(0, 1e-3, (5, 2 * K)).astype(np.float32)
    np.testing.assert_array_equal(loaded.arkit_weights(w), mapping.arkit_weights(w))
    assert isinstance(loaded.arkit_weights(w), np.ndarray)
    with pytest.raises(FileNotFoundError, match="fit_mapping.py"):
        load_mapping(tmp_path / "dfm", "flame")
    with torch.no_grad():
        dfm.blendshape_weight.mul_(2)
    dfm.save_pretrained(tmp_path / "dfm")  # retrained: the old map no longer fits
    with pytest.raises(ValueError, match="retrained"):
        load_mapping(tmp_path / "dfm", "arkit")
    assert load_mapping(tmp_path / "dfm", "arkit", check_dfm=False).num_params == P


def test_topology_mismatch_is_refused():
    rig = toy_rig()
    dfm = toy_dfm(num_vertices=V + 1)
    w = torch.rand(8, 2 * K)
    with pytest.raises(ValueError, match="face rig's topology"):
        fit_arkit_mapping(dfm, rig, w, w)
    flame = toy_flame()
    with pytest.raises(ValueError, match="FLAME-topology"):
        fit_flame_mapping(dfm, flame, w, w)


def toy_flame(num_expr: int = 8) -> FlameModel:
    raw = synthetic_flame_arrays(nx=9, ny=11, num_expr=num_expr)
    keys = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
    arrays = {k: np.asarray(raw[k].toarray() if hasattr(raw[k], "toarray") else raw[k]) for k in keys}
    arrays["shapedirs"][..., 300:] *= 20  # expressions of a few mm per unit coefficient, like FLAME's
    return FlameModel(_validate(arrays, "toy"), num_expression=num_expr)


@pytest.mark.slow
def test_flame_fit_reproduces_jaw_and_expression_blendshapes():
    flame = toy_flame()
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(flame.num_expression + 3, 2 * K, generator=gen) * 300
    truth[-3:] = 0
    truth[-3, 0] = 100  # blendshape 0 opens the jaw: 1 mm of weight -> 0.1 rad
    n = flame.num_vertices
    # The DFM's blendshapes: the FLAME displacement of each column at a typical weight, per unit weight.
    unit = 1e-3
    cols = flame_displacement(flame)((truth * unit).T).reshape(2 * K, -1).T / unit  # (V*3, 2K)
    dfm = toy_dfm(cols.detach(), num_vertices=n)
    train = torch.rand(1024, 2 * K, generator=gen) * unit
    held = torch.rand(256, 2 * K, generator=gen) * unit
    lips = np.zeros(n, bool)
    lips[:10] = True
    mapping = fit_flame_mapping(dfm, flame, train, held, MappingFitConfig(steps=150, batch_size=128), lips=lips)
    m = mapping.info["metrics"]
    assert isinstance(mapping, FlameMapping) and mapping.num_expression == flame.num_expression
    assert m["heldout"]["relative"] < 0.1
    assert m["heldout"]["relative"] <= m["linearized_closed_form_heldout"]["relative"] + 1e-3
    params = mapping.flame_params(held[:5])
    assert params["expr"].shape == (5, flame.num_expression) and params["jaw_pose"].shape == (5, 3)
    jaw_of_bs0 = mapping.flame_params(torch.eye(2 * K)[:1] * unit)["jaw_pose"][0]
    assert 0.07 < float(jaw_of_bs0[0]) < 0.13  # the jaw blendshape maps to about its true 0.1 rad


def test_observed_weights_combine_own_halves():
    dfm = toy_dfm(torch.randn(V * 3, 2 * K) * 2e-3)
    gen = torch.Generator().manual_seed(0)
    speech, expr = torch.randn(7, V, 3) * 1e-3, torch.randn(5, V, 3) * 1e-3
    w = observed_weights(dfm, speech, expr, 20, gen, intensity=(0.0, 0.0))
    own = dfm.split(dfm.encode_speech(speech))[0].detach()
    assert w.shape == (20, 2 * K) and torch.all(w[:, K:] == 0)
    assert all(torch.isclose(row[:K], own, atol=1e-7).all(1).any() for row in w)


def test_sample_weights_shapes_and_singles():
    gen = torch.Generator().manual_seed(0)
    w = sample_weights(2 * K, 100, gen)
    assert w.shape == (100, 2 * K) and ((w[:50] != 0).sum(1) <= 1).all()
    ref = torch.rand(30, 2 * K) + 1
    w = sample_weights(2 * K, 100, gen, reference=ref)
    assert ((w[:50] != 0).sum(1) == 1).all() and (w[50:] >= 1).all()


def _fit_mapping_cli():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "train" / "fit_mapping.py"
    spec = importlib.util.spec_from_file_location("fit_mapping_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_flame_on_a_geometric_dfm_without_corpus(tmp_path, monkeypatch):
    from test_flame import write_flame_pkl

    arrays = synthetic_flame_arrays(nx=9, ny=11, num_expr=8)
    write_flame_pkl(tmp_path / "generic_model.pkl", arrays, monkeypatch)
    n = len(arrays["v_template"])
    torch.manual_seed(0)
    config = DFMConfig(num_vertices=n, num_blendshapes=K, map_size=8, channels=(4, 4))
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (64, n), check_invariants=True)
    dfm = DeformationFusionModule(config, empty)
    dfm.save_pretrained(tmp_path / "dfm")
    cli = _fit_mapping_cli()
    argv = ["--dfm", str(tmp_path / "dfm"), "--target", "flame", "--flame-model", str(tmp_path / "generic_model.pkl"),
            "--num-expression", "8", "--no-corpus", "--samples", "256", "--steps", "20",
            "--picture", str(tmp_path / "p.png"), "--picture-size", "32"]
    assert cli.main(argv) == 0
    loaded = load_mapping(tmp_path / "dfm", "flame")
    assert isinstance(loaded, FlameMapping) and loaded.num_expression == 8
    assert loaded.info["data"]["heldout"] == "sampled" and loaded.info["flame_model"]["file"] == "generic_model.pkl"
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # an existing map is not replaced without --overwrite
        cli.main(argv)
    with pytest.raises(SystemExit):  # a FLAME-topology DFM cannot map onto the ARKit rig
        cli.main(argv[:3] + ["arkit", "--no-corpus"])
    with pytest.raises(SystemExit):  # a corpus named but missing is not quietly replaced by sampled weights
        cli.main(argv[:3] + ["arkit", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "other")])


def test_expression_units_are_kept_and_only_the_speech_half_is_mapped():
    """An emotion label is made of the rig's units: its ARKit weights are those units, plus the
    mapped speech half, bounded (the fitted map would redraw the label through the DFM's weights)."""
    m = torch.rand(P, 2 * K, generator=torch.Generator().manual_seed(3))
    mapping = ArkitMapping("arkit", m, tuple(f"u{i}" for i in range(P)), K, ARKIT_BOUNDS)
    w_s = np.random.default_rng(0).uniform(0, 0.3, (5, K)).astype(np.float32)
    units = np.random.default_rng(1).uniform(0, 0.5, (5, P)).astype(np.float32)
    got = mapping.with_expression_units(w_s, units)
    np.testing.assert_allclose(got, np.clip(w_s @ m[:, :K].numpy().T + units, 0, 1), atol=1e-6)
    np.testing.assert_allclose(mapping.with_expression_units(np.zeros_like(w_s), units), units, atol=1e-7)
    assert isinstance(got, np.ndarray)
    with pytest.raises(ValueError, match="same leading shape"):
        mapping.with_expression_units(w_s, units[:3])
