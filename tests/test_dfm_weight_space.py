"""eval/dfm_weight_space.py: the error decomposition is exact, and a short run reports every method."""

import json

import pytest
import torch

from blendtalk.evaluation.fusion import fusion_cases
from blendtalk.face.rig import load_rig
from eval.dfm_weight_space import evaluate, main, subspace_split


@pytest.mark.slow
def test_decomposition_of_known_parts(tiny_corpus):
    deltas = torch.as_tensor(load_rig().deltas, dtype=torch.float32)
    cases = list(fusion_cases(tiny_corpus, "test"))
    keep_all = evaluate(lambda s, e: (s, e), cases, deltas)  # the naive sum: parts keep their leaks
    assert keep_all["fused"] == pytest.approx(keep_all["interpolation"], rel=1e-5)
    assert keep_all["speech_vs_with_leak"] == pytest.approx(0.0, abs=1e-6)  # mm; float32 rounding
    assert keep_all["expression_vs_with_leak"] == pytest.approx(0.0, abs=1e-6)  # mm; float32 rounding
    assert keep_all["interpolation"] > 0
    it = iter(cases)

    def perfect(s, e):  # called once per case, in order: answer with that case's pure parts
        c = next(it)
        return torch.as_tensor(c.speech), torch.as_tensor(c.expression)

    exact = evaluate(perfect, cases, deltas)
    assert exact["fused"] == pytest.approx(0.0, abs=1e-6)  # mm; float32 rounding
    assert exact["speech_vs_pure"] == pytest.approx(0.0, abs=1e-6)  # mm; float32 rounding


@pytest.mark.slow
def test_short_run_reports_dfm_and_bound(tiny_corpus, tmp_path):
    out = tmp_path / "ws.json"
    report = main(["--data", str(tiny_corpus), "--steps", "20", "--batch", "16", "--invariance", "1",
                   "--speech-upper-face", "1", "--json", str(out)])
    assert json.loads(out.read_text())["dfm"] == pytest.approx(report["dfm"])
    for name in ("dfm", "bound"):
        assert set(report[name]) == {"fused", "interpolation", "speech_vs_pure", "speech_vs_with_leak",
                                     "expression_vs_pure", "expression_vs_with_leak"}
        assert all(v >= 0 for v in report[name].values())
    assert report["subspace"]["k_s"] in (6, 8, 10, 12) and report["subspace"]["fused"] >= 0
    rec = report["dfm_expression_reconstruction"]
    assert rec["own_part"] == pytest.approx(report["dfm"]["expression_vs_pure"])  # B_e w_e^e, measured twice
    assert 0 < rec["own_blendshapes_floor"] < rec["own_part"]  # 20 steps leave the encoder far from least squares


def test_bad_arguments_are_refused(tiny_corpus, tmp_path):
    with pytest.raises(SystemExit):
        main(["--data", str(tiny_corpus), "--steps", "0"])
    with pytest.raises(SystemExit, match="no truth files"):
        main(["--data", str(tmp_path)])


def test_subspace_split_recovers_parts_that_lie_in_the_subspaces():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(52, 52, generator=g)
    metric = a @ a.T / 52  # any positive definite metric
    metric[51] = metric[:, 51] = 0  # and one unit that moves nothing, as on the rig
    basis_s, basis_e = torch.randn(3, 52, generator=g), torch.randn(2, 52, generator=g)
    basis_s[:, 51] = basis_e[:, 51] = 0
    speech, expression = torch.randn(200, 3, generator=g) @ basis_s, torch.randn(200, 2, generator=g) @ basis_e
    parts = subspace_split(speech, expression, metric, 3, 2)
    s, e = speech[:7], expression[:7]
    ps, pe = parts(s + e, e + s)  # each input holds both parts; each keeps its own
    torch.testing.assert_close(ps, s, atol=1e-4, rtol=0)
    torch.testing.assert_close(pe, e, atol=1e-4, rtol=0)
