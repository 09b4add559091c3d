"""The shipped checkpoints' model cards: in the Hub's format, up to date, and their figures those of metrics.json."""

import json

import pytest
import yaml

from blendtalk.constants import ASSETS_DIR
from blendtalk.model_card import FUSION_COLUMNS, FUSION_ROWS, PHONE_SOURCES, build_model_card
from blendtalk.publish import stage_for_upload

KINDS = ("dfm", "speech")


def card(kind: str) -> str:
    return (ASSETS_DIR / kind / "README.md").read_text()


def metrics(kind: str) -> dict:
    return json.loads((ASSETS_DIR / kind / "metrics.json").read_text())


def table_row(text: str, label: str) -> list[str]:
    """The cells after `label` of the first markdown table row that starts with it."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no table row {label!r} in the card")


def close(cell: str, value: float, decimals: int) -> bool:
    return abs(float(cell) - value) <= 0.5 * 10 ** -decimals + 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_card_is_up_to_date(kind):
    """The committed README.md is what build_model_card makes from metrics.json now (rebuild it if this fails:
    python -c "from blendtalk.model_card import build_model_card; print(build_model_card('assets/dfm'), end='')" > assets/dfm/README.md)."""
    assert card(kind) == build_model_card(ASSETS_DIR / kind)


@pytest.mark.parametrize("kind", KINDS)
def test_card_front_matter_is_hub_metadata(kind):
    text = card(kind)
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "mit" and meta["library_name"] == "blendtalk" and meta["datasets"] == ["synthetic"]
    assert "blendtalk" in meta["tags"] and "safetensors" in meta["tags"]
    for section in ("Model details", "Intended use", "How to load", "Training data", "Training", "Evaluation",
                    "Limitations", "Licences"):
        assert f"\n## {section}\n" in text
    assert metrics(kind)["command"].splitlines()[0] in text and metrics(kind)["evaluation"].splitlines()[0] in text


def test_dfm_card_figures_match_metrics():
    text, fusion = card("dfm"), metrics("dfm")["test"]["fusion"]
    rows = [(key, label) for key, label in FUSION_ROWS.items() if key in fusion]
    assert {"dfm", "dfm_keeping_residuals", "interpolation"} <= {key for key, _ in rows}
    for key, label in rows:
        cells = table_row(text, label)
        for cell, (column, _, decimals) in zip(cells, FUSION_COLUMNS, strict=True):
            assert close(cell, fusion[key][column], decimals), (label, column, cell)
    ratio = fusion["interpolation"]["fused_mve"] / fusion["dfm"]["fused_mve"]
    assert f"Fused error of eq. 13: the sum of the inputs' is {ratio:.2f}x this (target 2x): **missed**" in text
    kept = metrics("dfm")["test"]["expression_kept"]["dfm_keeping_residuals"]
    lower = [kept[e]["lower_face"]["magnitude"] for e in ("angry", "disgusted", "fearful", "happy", "sad", "surprised")]
    assert f"lower face {min(lower):.2f}-{max(lower):.2f}" in text and "(target 0.9-1.1): met" in text
    pct = metrics("dfm")["test"]["lve_through_dfm"]["increase_percent"]
    assert f"{pct:+.1f}% after the model" in text and "Table 1): **missed**" in text


def test_speech_card_figures_match_metrics():
    text, m = card("speech"), metrics("speech")
    seen = 0
    for line in text.splitlines():
        for key, name in (("faceformer", "this model"), ("procedural", "procedural visemes")):
            for source, label in PHONE_SOURCES.items():
                if line.startswith(f"| {name} | {label} |"):
                    lve, fdd, closed = line.strip("|").split("|")[2:5]
                    run = m["test"][key][source]
                    assert close(lve, run["lve_mm2"], 2) and close(fdd, run["fdd_mm"], 4)
                    assert close(closed, run["bilabial_closure"], 3)
                    seen += 1
    assert seen == 6
    for name, run in m["lipsync_arctic_a0009"].items():
        closed = table_row(text, name.replace("_", " "))[0]
        assert closed == f"{round(run['bilabial_closure'] * run['bilabials'])} of {run['bilabials']}"
    ratio = m["test"]["faceformer"]["recognized"]["lve_mm2"] / m["test"]["procedural"]["recognized"]["lve_mm2"]
    assert f"LVE from audio alone {ratio:.2f} of the procedural driver's" in text


@pytest.mark.parametrize("kind", KINDS)
def test_publish_uploads_the_same_card(kind, tmp_path):
    """train/publish.py stages build_model_card's card: the shipped one, with the repo id in the load line."""
    files = stage_for_upload(ASSETS_DIR / kind, None, tmp_path / "a")
    assert "README.md" in files and "metrics.json" in files
    assert (tmp_path / "a" / "README.md").read_text() == card(kind)
    stage_for_upload(ASSETS_DIR / kind, None, tmp_path / "b", "org/name")
    ours, shipped = (tmp_path / "b" / "README.md").read_text().splitlines(), card(kind).splitlines()
    differ = [(a, b) for a, b in zip(ours, shipped, strict=True) if a != b]
    assert len(differ) == 1 and f'resolve_checkpoint("{kind}", "org/name")' in differ[0][0]
