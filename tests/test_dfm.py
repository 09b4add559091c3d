import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from blendtalk.training.losses import DFMLossConfig, dfm_loss, vertex_weights
from blendtalk.evaluation.fusion import fuse_keeping_residuals
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig, interpolate_inputs

V, K = 50, 4
ROOT = Path(__file__).resolve().parents[1]
SMALL = (4, 4, 8, 8, 8, 8)  # channels of a tiny CNN


def random_map(n: int, v: int = V, seed: int = 0) -> torch.Tensor:
    """A (N*N, V) sparse stand-in for the square map: 60% of pixels, 3 vertices each, barycentric weights."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randperm(n * n, generator=g)[: int(0.6 * n * n)]
    rows = pixels.repeat_interleave(3)
    cols = torch.randint(0, v, (len(rows),), generator=g)
    bary = torch.rand(len(pixels), 3, generator=g)
    vals = (bary / bary.sum(1, keepdim=True)).reshape(-1)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n * n, v), check_invariants=True).coalesce()


def tiny(geometric: bool = True, n: int = 64, **kw) -> DeformationFusionModule:
    torch.manual_seed(0)
    config = DFMConfig(num_vertices=V, num_blendshapes=K, map_size=n, channels=SMALL,
                       use_geometric_map=geometric, mlp_hidden=(32,), **kw)
    return DeformationFusionModule(config, random_map(n) if geometric else None)


def test_config_strides_reach_two_by_two():
    assert DFMConfig(num_vertices=V).strides == (2,) * 6
    c64 = DFMConfig(num_vertices=V, map_size=64)
    assert c64.strides == (1, 2, 2, 2, 2, 2) and c64.final_map_size == 2
    assert DFMConfig(num_vertices=V, map_size=128).final_map_size == 2
    with pytest.raises(ValueError, match="power of two"):
        DFMConfig(num_vertices=V, map_size=100)


@pytest.mark.parametrize("geometric,n,kernel", [(True, 64, 3), (True, 128, 3), (True, 64, 4), (False, 64, 3)])
def test_forward_shapes(geometric, n, kernel):
    model = tiny(geometric, n, kernel_size=kernel)
    d_s, d_e = torch.randn(3, V, 3) * 1e-3, torch.randn(5, V, 3) * 1e-3
    out = model(d_s, d_e)
    assert out["w_s"].shape == (3, 2 * K) and out["w_e"].shape == (5, 2 * K)
    assert out["rec_s"].shape == (3, V, 3) and out["rec_e"].shape == (5, V, 3)
    assert model.speech_blendshapes.shape == (K, V, 3) == model.expression_blendshapes.shape
    assert torch.isfinite(out["rec_e"]).all()


def test_unequal_speech_and_expression_counts():
    model = tiny(True, 64, num_expression_blendshapes=3)  # K_s = 4, K_e = 3
    assert model.num_blendshapes == (4, 3)
    out = model(torch.randn(2, V, 3) * 1e-3, torch.randn(5, V, 3) * 1e-3)
    assert out["w_s"].shape == (2, 7) and out["cross_s"].shape == (2, 3) and out["cross_e"].shape == (5, 4)
    assert torch.equal(out["cross_s"], out["w_s"][:, 4:]) and out["cross_s"].abs().max() == 0  # zero-initialised
    assert torch.equal(out["own_e"], out["w_e"][:, 4:]) and torch.equal(out["cross_e"], out["w_e"][:, :4])
    assert model.speech_blendshapes.shape == (4, V, 3) and model.expression_blendshapes.shape == (3, V, 3)
    fused = model.fuse_weights(torch.ones(4), torch.ones(3))
    torch.testing.assert_close(fused, model.speech_blendshapes.sum(0) + model.expression_blendshapes.sum(0))


def test_mixed_pass_gives_the_expression_half_of_the_mixed_frames():
    model = tiny(True, 64, num_expression_blendshapes=3)
    d_s, d_e = torch.randn(2, V, 3) * 1e-3, torch.randn(5, V, 3) * 1e-3
    assert "mixed_e" not in model(d_s, d_e)
    mixed = d_e + 0.5 * d_s[:1]
    out = model(d_s, d_e, mixed)
    assert out["mixed_e"].shape == (5, 3)
    torch.testing.assert_close(out["mixed_e"], model.encode_expression(mixed)[:, 4:])


def test_geometry_map_is_the_sparse_product():
    model = tiny(True, 64)
    d = torch.randn(2, V, 3)
    dense = model.map_matrix.to_dense()  # (N*N, V)
    expected = torch.einsum("pv,bvc->bcp", dense, d).reshape(2, 3, 64, 64)
    torch.testing.assert_close(model.geometry_map(d), expected)


def test_map_matrix_is_validated_and_not_saved(tmp_path):
    with pytest.raises(ValueError, match=r"\(N\*N, V\) = \(4096, 50\).*\(4096, 49\)"):
        DeformationFusionModule(DFMConfig(num_vertices=V, map_size=64), random_map(64, v=49))
    with pytest.raises(ValueError, match="map_matrix"):
        DeformationFusionModule(DFMConfig(num_vertices=V, map_size=64))
    model = tiny(True, 64)
    assert "map_matrix" not in model.state_dict()
    dense_map = DeformationFusionModule(model.config, model.map_matrix.to_dense())  # dense input accepted
    assert dense_map.map_matrix.is_sparse


def test_encoder_is_positively_homogeneous():
    # InstanceNorm alone would make E(2d) == E(d); the DFM keeps the amplitude.
    model = tiny(True, 64)
    d = torch.randn(4, V, 3) * 1e-3
    w = model.encode_speech(d)
    torch.testing.assert_close(model.encode_speech(2.5 * d), 2.5 * w)
    assert model.encode_expression(torch.zeros(2, V, 3)).abs().max() == 0


def test_cross_halves_start_at_zero():
    model = tiny(True, 64)
    d = torch.randn(3, V, 3) * 1e-3
    assert model.encode_speech(d)[:, K:].abs().max() == 0 < model.encode_speech(d)[:, :K].abs().max()
    assert model.encode_expression(d)[:, :K].abs().max() == 0 < model.encode_expression(d)[:, K:].abs().max()
    assert tiny(True, 64, cross_init=1.0).encode_speech(d)[:, K:].abs().max() > 0


def test_join_broadcasts_without_importing_sympy():
    """join's broadcasting must not pull in torch.fx/sympy (0.7 s of a CLI run); nor may the geometry
    module import scipy.sparse, which only building a map needs. In a new process, as the CLI runs."""
    code = ("import sys, torch\n"
            "from blendtalk.face import geometry\n"
            "from blendtalk.models.dfm import DeformationFusionModule, DFMConfig\n"
            "m = DeformationFusionModule(DFMConfig(num_vertices=5, num_blendshapes=2, map_size=16, use_geometric_map=False,"
            " channels=(2, 2, 2, 2, 2, 2), mlp_hidden=(4,)))\n"
            "w = m.join(torch.zeros(3, 1, 2), torch.ones(1, 4, 2))\n"
            "assert w.shape == (3, 4, 4), w.shape\n"
            "print(sorted(k for k in ('sympy', 'scipy.sparse', 'torch.fx.experimental.symbolic_shapes') if k in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_split_join_layout_and_decode():
    model = tiny(False)
    w = torch.randn(2, 7, 2 * K)
    speech, expr = model.split(w)
    assert torch.equal(speech, w[..., :K]) and torch.equal(model.join(speech, expr), w)
    one_hot = torch.zeros(2 * K)
    one_hot[1] = 1
    torch.testing.assert_close(model.decode(one_hot), model.speech_blendshapes[1])
    one_hot = torch.roll(one_hot, K)
    torch.testing.assert_close(model.decode(one_hot), model.expression_blendshapes[1])
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        model.decode(torch.zeros(3, 5))


def test_half_decoders_sum_to_the_full_decode():
    model = tiny(True, 64, num_expression_blendshapes=3)  # K_s = 4, K_e = 3
    w = torch.randn(2, 5, 7)
    speech, expr = model.split(w)
    torch.testing.assert_close(model.decode_speech(speech), model.decode(model.join(speech, torch.zeros_like(expr))))
    torch.testing.assert_close(model.decode_expression(expr), model.decode(model.join(torch.zeros_like(speech), expr)))
    torch.testing.assert_close(model.decode_speech(speech) + model.decode_expression(expr), model.decode(w))
    with pytest.raises(ValueError, match="expression weights"):
        model.decode_expression(speech)


def test_blendshape_columns_are_unit_rms():
    model = tiny(False)
    rms = model.blendshapes.pow(2).mean(0).sqrt()
    torch.testing.assert_close(rms, torch.ones(2 * K))
    raw = tiny(False, normalize_blendshapes=False)
    assert torch.equal(raw.blendshapes, raw.blendshape_weight)


def test_fuse_drops_cross_domain_halves(monkeypatch):
    model = tiny(True, 64)
    T = 6
    w_s, w_e = torch.randn(T, 2 * K), torch.randn(T, 2 * K)
    monkeypatch.setattr(model, "encode_speech", lambda d: w_s)
    monkeypatch.setattr(model, "encode_expression", lambda d: w_e)
    d = torch.zeros(T, V, 3)
    b_s, b_e = model.speech_blendshapes, model.expression_blendshapes  # (K, V, 3)
    speech_only = torch.einsum("tk,kvc->tvc", w_s[:, :K], b_s)
    expected = speech_only + torch.einsum("tk,kvc->tvc", w_e[:, K:], b_e)
    with torch.no_grad():
        torch.testing.assert_close(model.fuse(d, d), expected)
        torch.testing.assert_close(model.fuse(d, d, intensity=0.0), speech_only)
        ramp = torch.linspace(0, 1, T)  # per-frame intensity (T,)
        half = speech_only + torch.einsum("tk,kvc->tvc", ramp[:, None] * w_e[:, K:], b_e)
        torch.testing.assert_close(model.fuse(d, d, intensity=ramp), half)


def test_fuse_keeping_residuals_subtracts_only_the_cross_domain_reconstructions(monkeypatch):
    model = tiny(True, 64, num_expression_blendshapes=3)  # K_s = 4, K_e = 3
    T = 5
    w_s, w_e = torch.randn(T, K + 3), torch.randn(T, K + 3)
    monkeypatch.setattr(model, "encode_speech", lambda d: w_s)
    monkeypatch.setattr(model, "encode_expression", lambda d: w_e)
    d_s, d_e = torch.randn(T, V, 3), torch.randn(T, V, 3)
    b_s, b_e = model.speech_blendshapes, model.expression_blendshapes
    speech = d_s - torch.einsum("tk,kvc->tvc", w_s[:, K:], b_e)  # the emotion the speech input carries, removed
    expression = d_e - torch.einsum("tk,kvc->tvc", w_e[:, :K], b_s)  # the articulation in the expression input, removed
    ramp = torch.linspace(0, 1, T)
    with torch.no_grad():
        torch.testing.assert_close(fuse_keeping_residuals(model, d_s, d_e), speech + expression)
        torch.testing.assert_close(fuse_keeping_residuals(model, d_s, d_e, intensity=0.0), speech)
        torch.testing.assert_close(fuse_keeping_residuals(model, d_s, d_e, intensity=ramp), speech + ramp[:, None, None] * expression)
    monkeypatch.setattr(model, "encode_expression", lambda d: torch.zeros(T, K + 3))
    with torch.no_grad():  # no cross weights: the naive sum
        torch.testing.assert_close(fuse_keeping_residuals(model, d_s, d_e), speech + d_e)


def test_leading_dims_and_chunking():
    model = tiny(True, 64, chunk_size=3)
    d_s, d_e = torch.randn(2, 5, V, 3) * 1e-3, torch.randn(2, 5, V, 3) * 1e-3  # (B, T, V, 3)
    with torch.no_grad():
        fused = model.fuse(d_s, d_e, intensity=0.7)
        assert fused.shape == (2, 5, V, 3)
        per_seq = torch.stack([model.fuse(d_s[b], d_e[b], 0.7) for b in range(2)])
        whole = DeformationFusionModule(model.config, model.map_matrix)
        whole.load_state_dict(model.state_dict())
        whole.config.chunk_size = 512
    torch.testing.assert_close(fused, per_seq)
    torch.testing.assert_close(whole.fuse(d_s, d_e, 0.7).detach(), fused)
    static = model.fuse(d_s, d_e[0, 0], intensity=0.7)  # one expression frame held over (B, T)
    torch.testing.assert_close(static, model.fuse(d_s, d_e[0, 0].expand_as(d_s), intensity=0.7))
    with pytest.raises(ValueError, match=r"\(\.\.\., V=50, 3\)"):
        model.fuse(torch.zeros(5, 49, 3), torch.zeros(5, 49, 3))


def test_interpolate_inputs():
    d_s, d_e = torch.randn(4, V, 3), torch.randn(4, V, 3)
    torch.testing.assert_close(interpolate_inputs(d_s, d_e), d_s + d_e)
    torch.testing.assert_close(interpolate_inputs(d_s, d_e, torch.full((4,), 0.5)), d_s + 0.5 * d_e)


@pytest.mark.parametrize("geometric", [True, False])
def test_save_load_gives_identical_output(tmp_path, geometric):
    model = tiny(geometric, 64).eval()
    d_s, d_e = torch.randn(3, V, 3) * 1e-3, torch.randn(3, V, 3) * 1e-3
    folder = model.save_pretrained(tmp_path / "dfm")
    assert json.loads((folder / "config.json").read_text())["num_vertices"] == V
    assert "map_matrix" not in load_file(folder / "model.safetensors")
    loaded = DeformationFusionModule.from_pretrained(folder, model.map_matrix if geometric else None, device="cpu")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.fuse(d_s, d_e), model.fuse(d_s, d_e))
        assert torch.equal(loaded(d_s, d_e)["rec_e"], model(d_s, d_e)["rec_e"])


def test_load_errors_name_the_problem(tmp_path):
    model = tiny(True, 64)
    folder = model.save_pretrained(tmp_path / "dfm")
    with pytest.raises(ValueError, match=r"V=50.*V=40"):
        DeformationFusionModule.from_pretrained(folder, random_map(64, v=40))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        DeformationFusionModule.from_pretrained(folder, model.map_matrix)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DeformationFusionModule.from_pretrained(folder, model.map_matrix)


def test_load_is_strict(tmp_path):
    folder = tiny(True, 64).save_pretrained(tmp_path / "dfm")
    config = json.loads((folder / "config.json").read_text())
    config["num_blendshapes"] = K + 1  # the weights no longer fit the config
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        DeformationFusionModule.from_pretrained(folder, random_map(64))


def synthetic_domains(n: int, seed: int = 0, leak: float = 0.1):
    """Speech and expression data from known random bases, each with a small leak of the other."""
    g = torch.Generator().manual_seed(seed)
    true_s, true_e = torch.randn(3, V, 3, generator=g) * 1e-3, torch.randn(3, V, 3, generator=g) * 1e-3
    a, b = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    la, lb = leak * torch.rand(n, 3, generator=g), leak * torch.rand(n, 3, generator=g)
    d_s = torch.einsum("nk,kvc->nvc", a, true_s) + torch.einsum("nk,kvc->nvc", la, true_e)
    d_e = torch.einsum("nk,kvc->nvc", b, true_e) + torch.einsum("nk,kvc->nvc", lb, true_s)
    return d_s, d_e


@pytest.mark.parametrize("geometric", [True, False])
def test_adam_steps_lower_the_loss(geometric):
    model = tiny(geometric, 64)
    d_s, d_e = synthetic_domains(32)
    config = DFMLossConfig(scale=1e3, lambda_lap=0.0)
    m = vertex_weights(V, torch.arange(V) < 10, lip_weight=config.lip_weight)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        total, parts = dfm_loss(model(d_s, d_e), d_s, d_e, config, m)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(parts["total"])
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.gpu
def test_cuda_matches_cpu(tmp_path):
    model = tiny(True, 64).eval()
    d = torch.randn(4, V, 3) * 1e-3
    gpu = DeformationFusionModule.from_pretrained(model.save_pretrained(tmp_path / "dfm"), model.map_matrix, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(gpu.fuse(d.cuda(), d.cuda()).cpu(), model.fuse(d, d), atol=1e-6, rtol=1e-4)


def test_expression_kept_scores_exact_fusions():
    """Interpolation keeps every emotion whole (1 by both measures); dropping the expression keeps none."""
    import numpy as np

    from blendtalk.evaluation.fusion import expression_kept
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    t = np.linspace(0, 1, 12, dtype=np.float32)
    d_s = rig.displacement(np.outer(np.sin(6 * t) ** 2, rig.weights({"jawOpen": 0.4})))  # (12, V, 3)
    whole = expression_kept(interpolate_inputs, [d_s], rig, "cpu", ("happy", "sad"))
    none = expression_kept(lambda s, e: s, [d_s], rig, "cpu", ("happy", "sad"))
    for emotion in ("happy", "sad"):
        for region in ("lower_face", "upper_face"):
            assert whole[emotion][region]["magnitude"] == pytest.approx(1.0, abs=1e-5)
            assert whole[emotion][region]["projection"] == pytest.approx(1.0, abs=1e-5)
            assert none[emotion][region]["magnitude"] == 0.0
