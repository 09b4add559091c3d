"""eval/end_to_end.py on a short clip: both modes timed, every stage reported, the video cleaned up."""

import json

import pytest

from eval.end_to_end import STAGES, main


@pytest.mark.slow
def test_end_to_end_reports_wall_time_and_stages(tmp_path):
    out = tmp_path / "e2e.json"
    assert main(["--device", "cpu", "--seconds", "1", "--size", "64", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"with transcript", "audio alone"}
    for mode in report["modes"].values():
        run = mode["runs"][0]
        assert set(run) == {"wall_s", *STAGES}
        assert all(run[k] >= 0 for k in STAGES)
        # The stages run one after another except render and encode, which overlap.
        assert run["wall_s"] >= sum(run[k] for k in STAGES if k not in ("render", "encode"))
