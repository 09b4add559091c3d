"""eval/phone_recognition.py: recognised phones scored against exact ones."""

import json

import pytest

from blendtalk.speech.phones import Phone
from blendtalk.evaluation.recognition import recognition_scores
from eval.phone_recognition import SENTENCES, main


def test_scores_count_frames_vowels_and_bilabials():
    truth = [Phone("sil", 0.0, 0.1), Phone("m", 0.1, 0.2), Phone("aa", 0.2, 0.4), Phone("t", 0.4, 0.5)]
    found = [Phone("sil", 0.0, 0.12), Phone("b", 0.12, 0.2), Phone("ae", 0.2, 0.3), Phone("aa", 0.3, 0.4), Phone("p", 0.4, 0.5)]
    s = recognition_scores(found, truth, 0.5)
    assert s["frames"] == 50 and s["right"] == 10 + 10 + 0  # sil 0-0.1, aa 0.3-0.4; m heard as sil then b
    assert s["vowel_frames"] == 20 and s["vowels_right"] == 10
    assert s["bilabials"] == 1 and s["bilabials_heard"] == 1  # /b/ for /m/: the lips close all the same
    assert s["false_bilabials"] == 1  # the /p/ over /t/, 0.2 s from the /m/


@pytest.mark.slow
def test_a_short_run_scores_both_recognisers(tmp_path, capsys, word_lm):
    out = tmp_path / "phones.json"
    assert main(["--voices", "espeak:en-us", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["clips"]) == 1 + len(SENTENCES) and "s per s of speech" in capsys.readouterr().out
    arctic = report["clips"][0]
    assert arctic["words"]["right"] / arctic["words"]["frames"] > 0.75 > arctic["allphone"]["right"] / arctic["allphone"]["frames"]
    for key, summary in report["summary"].items():  # the totals are the clips' counts added up
        right = sum(c[key]["right"] for c in report["clips"]) / sum(c[key]["frames"] for c in report["clips"])
        assert summary["frames_right"] == round(right, 3)


@pytest.mark.slow
def test_joined_clips_are_scored_whole_and_in_pieces(tmp_path, word_lm):
    """--join 4 makes one clip of a voice's four sentences with their phones in place; --pieces 2 scores
    the words recogniser on it cut at a pause too, about as right as whole."""
    out = tmp_path / "phones.json"
    assert main(["--voices", "espeak:en-us", "--join", "4", "--pieces", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["clips"]) == 1 + len(SENTENCES) // 4 and report["pieces"] == 2
    joined = report["clips"][1]
    assert joined["clip"].startswith("espeak:en-us " + " ".join(SENTENCES[:4])) and joined["seconds"] > 6
    whole, cut = joined["words"], joined["words, up to 2 pieces"]
    assert whole["frames"] == cut["frames"]  # the same clip, scored over the same frames
    assert cut["right"] / cut["frames"] > whole["right"] / whole["frames"] - 0.1


def test_a_bad_voice_is_one_line(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--voices", "festival:kal"])
    assert err.value.code == 2 and "ENGINE:VOICE" in capsys.readouterr().err
    for bad in (["--join", "0"], ["--pieces", "9"]):
        with pytest.raises(SystemExit) as err:
            main(bad)
        assert err.value.code == 2 and "--join must be" in capsys.readouterr().err
