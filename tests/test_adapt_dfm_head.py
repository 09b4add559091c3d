"""train/adapt_dfm_head.py: its weight-space loss is the DFM loss, and it changes only the expression head."""

import sys
from pathlib import Path

import pytest
import torch

from blendtalk.face.geometry import load_square_map, uniform_laplacian
from blendtalk.face.rig import load_rig
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.training.losses import DFMLossConfig, invariance_loss, laplacian_loss, l2_loss, reconstruction_loss, vertex_weights

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
import adapt_dfm_head as adapt  # noqa: E402


def _model(rig, seed=0):
    torch.manual_seed(seed)
    config = DFMConfig(num_vertices=rig.num_vertices, num_blendshapes=4, num_expression_blendshapes=3, map_size=32,
                       channels=(8, 8, 8, 8), cross_init=0.5)
    return DeformationFusionModule(config, load_square_map(rig, config.map_size).matrix()).eval()


def test_head_objective_is_the_dfm_loss():
    rig = load_rig()
    model = _model(rig)
    gen = torch.Generator().manual_seed(1)
    deltas = torch.as_tensor(rig.deltas)
    expr = torch.einsum("tk,kvc->tvc", 0.3 * torch.rand(5, len(deltas), generator=gen), deltas)  # (5, V, 3)
    mixed = torch.cat([expr + torch.einsum("tk,kvc->tvc", 0.2 * torch.rand(5, len(deltas), generator=gen), deltas)
                       for _ in range(2)])
    loss = DFMLossConfig(lambda_invariance=100.0, lambda_sparse=0.5)
    m = vertex_weights(rig.num_vertices, torch.as_tensor(rig.mask("lips")), loss.lip_weight)
    with torch.no_grad():
        w = model.encode_expression(expr).double()
        own_mixed = model.split(model.encode_expression(mixed))[1].double()
        g = adapt.gram_terms(model, rig, loss)
        target, const = adapt.rec_terms(expr, g, m)
        _, parts = adapt.head_objective(w, own_mixed, g, target, const, loss, model.config.k_speech)
        s, rec = loss.scale, model.decode(w.float()).double()
        lap = uniform_laplacian(rig.num_vertices, torch.as_tensor(rig.triangles), dtype=torch.float64)
        direct = {"rec_e": reconstruction_loss(s * rec, s * expr.double(), m.double()),
                  "lap_e": laplacian_loss(s * rec, lap), "reg_e": l2_loss(s * rec),
                  "sparse_e": s * model.split(w)[0].abs().sum(-1).mean(),
                  "invariance": invariance_loss(s * own_mixed, s * model.split(w)[1].repeat(2, 1))}
    for name, value in direct.items():
        assert float(parts[name]) == pytest.approx(float(value), rel=1e-4), name
    assert float(direct["rec_e"]) > 0 and float(direct["invariance"]) > 0


@pytest.mark.slow
def test_adaptation_changes_only_the_expression_head(tiny_corpus, tmp_path):
    rig = load_rig()
    start = _model(rig, seed=3)
    start.save_pretrained(tmp_path / "start")
    assert adapt.main(["--dfm", str(tmp_path / "start"), "--data", str(tiny_corpus), "--out", str(tmp_path / "out"),
                       "--steps", "200", "--lr", "1e-3", "--rank", "8", "--stride", "2"]) == 0
    done = DeformationFusionModule.from_pretrained(tmp_path / "out", start.map_matrix)
    before, after = start.state_dict(), done.state_dict()
    head = {f"expression_encoder.{len(start.expression_encoder) - 1}.{k}" for k in ("weight", "bias")}
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same != (key in head), key  # the head moved, nothing else did
    report = __import__("json").loads((tmp_path / "out" / "adapt.json").read_text())
    assert report["final"]["total"] < report["initial"]["total"]
    with pytest.raises(SystemExit):  # an existing folder is never overwritten
        adapt.main(["--dfm", str(tmp_path / "start"), "--data", str(tiny_corpus), "--out", str(tmp_path / "out")])
