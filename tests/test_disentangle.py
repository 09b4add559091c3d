"""eval/disentangle.py end to end on a small corpus: the report, its table, its chart and the blendshape picture."""

import json

import imageio.v3 as iio
import pytest
import torch

from blendtalk.face.geometry import load_square_map
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.face.rig import load_rig
from eval.disentangle import main


@pytest.mark.slow
def test_report_table_chart_and_picture(tiny_corpus, tmp_path):
    rig = load_rig()
    torch.manual_seed(0)
    config = DFMConfig(num_vertices=rig.num_vertices, num_blendshapes=4, num_expression_blendshapes=3, map_size=32,
                       channels=(8, 8, 8, 8))
    DeformationFusionModule(config, load_square_map(rig, 32).matrix()).save_pretrained(tmp_path / "dfm")
    out = tmp_path / "report" / "disentangle.json"
    main(["--data", str(tiny_corpus), "--dfm", str(tmp_path / "dfm"), "--ablation", f"again={tmp_path / 'dfm'}",
          "--json", str(out), "--blendshapes", str(tmp_path / "shapes.png"), "--max-sentences", "1", "--device", "cpu"])
    report = json.loads(out.read_text())
    fusion = report["fusion"]
    assert {"dfm", "dfm_keeping_residuals", "again", "interpolation", "speech_only", "truth"} <= set(fusion)
    assert fusion["again"]["fused_mve"] == pytest.approx(fusion["dfm"]["fused_mve"])  # the same checkpoint twice
    assert fusion["interpolation"]["fused_mve"] > 0 and report["lve_through_dfm"]["sequences"] >= 1
    assert report["lve_through_dfm_keeping_residuals"]["sequences"] == report["lve_through_dfm"]["sequences"]
    for domain in ("speech", "expression"):
        rec = report["reconstruction"][domain]
        assert rec["sequences"] >= 1
        # an untrained encoder is far from the least-squares weights of its own blendshapes
        assert rec["least_squares"] < rec["encoder"] and 0 < rec["own_blendshapes_floor"] < rec["own_part"]
    kept = report["expression_kept"]["dfm"]
    assert set(kept) == {"happy", "sad", "angry", "surprised", "fearful", "disgusted", "contempt"}
    assert kept["happy"]["lower_face"]["input_mm"] > 1 and kept["surprised"]["upper_face"]["input_mm"] > 1
    assert all(0 <= region["magnitude"] for regions in kept.values() for region in regions.values() if region)
    table = out.with_suffix(".md").read_text()
    assert table.count("\n") == len(fusion) + 2 and "| interpolation |" in table
    assert iio.imread(out.with_suffix(".png")).ndim == 3  # the bar chart
    picture = iio.imread(tmp_path / "shapes.png")
    assert picture.shape[0] > 0 and picture.std() > 0  # rows of rendered faces, not a blank image


def test_missing_checkpoint_is_named(tiny_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        main(["--data", str(tiny_corpus), "--dfm", str(tmp_path / "nothing"), "--json", str(tmp_path / "r.json")])
