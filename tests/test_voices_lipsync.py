"""eval/voices_lipsync.py: a short run scores each clip with and without the lip seal."""

import json

import pytest

from eval.voices_lipsync import SENTENCES, main


@pytest.mark.slow
def test_one_voice_scores_both_ways_and_the_seal_never_opens_a_closure(tmp_path, capsys):
    out = tmp_path / "voices.json"
    assert main(["--voices", "espeak:en-us", "--rate", "220", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["clips"]) == len(SENTENCES) and "closed over all clips" in capsys.readouterr().out
    for clip in report["clips"]:
        sealed, model = clip["sealed"], clip["model"]
        assert sealed["bilabials"] == model["bilabials"] > 0
        assert sealed["bilabials_closed"] >= model["bilabials_closed"]  # closing at heard bilabials only adds closures
        assert sealed["pauses_closed"] >= model["pauses_closed"]  # the seal only ever brings lips together
    assert 0 <= report["bilabials_closed_share"]["model"] <= report["bilabials_closed_share"]["sealed"] <= 1


def test_a_bad_voice_is_one_line(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--voices", "festival:kal"])
    assert err.value.code == 2 and "ENGINE:VOICE" in capsys.readouterr().err
