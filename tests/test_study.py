import csv
import http.client
import importlib.util
import json
import sys
import threading
import urllib.request
from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from blendtalk.evaluation.study import (
    METHODS, IncompleteDataError, Study, StudyError, appearance_counts, build_study, make_stimuli, position_counts)
from blendtalk.evaluation.study_analysis import (
    analyze, holm, paired_test, report_markdown, simulate_ratings, table_ablation, table_mos)
from blendtalk.evaluation.study_store import RatingStore

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"study_{name}", ROOT / "eval" / "study" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stimuli(n):
    return make_stimuli([f"a{i}.wav" for i in range(n)], (["happy", "sad", "angry", "disgusted"] * n)[:n])


def fake_render(audio_path, emotion, method, out_path):
    """A stand-in for the pipeline: a tiny file that names what it shows."""
    Path(out_path).write_bytes(f"{Path(audio_path).name}|{emotion}|{method}|".encode() * 20)


# ------------------------------------------------------------------------------------------ design

def test_panel_design_is_balanced():
    study = build_study(_stimuli(4), 12, layout="panel", seed=3)
    counts = appearance_counts(study)
    cells = set(product([p.id for p in study.participants], [s.id for s in study.stimuli], METHODS))
    assert set(counts) == cells and set(counts.values()) == {1}  # every participant x stimulus x method once
    pos = position_counts(study)
    assert all(c == [12 * 4 // 6] * 6 for c in pos.values())  # every method equally often in every column
    for s in study.stimuli:  # and per stimulus, over participants
        per = Counter((study.clip_by_id[c].method, k) for p in study.participants for t in p.trials
                      if t.stimulus == s.id for k, c in enumerate(t.clips))
        assert set(per.values()) == {2} and len(per) == 36
    orders = {tuple(t.stimulus for t in p.trials) for p in study.participants}
    assert len(orders) > 1  # orders are randomized per participant
    again = build_study(_stimuli(4), 12, layout="panel", seed=3)
    assert again.fingerprint() == study.fingerprint()
    assert build_study(_stimuli(4), 12, layout="panel", seed=4).fingerprint() != study.fingerprint()
    for c in study.clips:  # blind: the served id says nothing about the method
        assert c.method not in c.id and c.stimulus not in c.id


def test_pairs_design_counterbalances_sides():
    study = build_study(_stimuli(4), 6, layout="pairs", seed=0)
    others = [m for m in METHODS if m != "ours"]
    counts = appearance_counts(study)
    for p, s in product(study.participants, study.stimuli):
        assert all(counts[(p.id, s.id, m)] == 1 for m in others) and counts[(p.id, s.id, "ours")] == len(others)
    screens = [t for p in study.participants for t in p.trials]
    assert len(screens) == 6 * 4 * len(others) and all(len(t.clips) == 2 for t in screens)
    for m in others:
        sides = Counter(study.clip_by_id[t.clips[0]].method == "ours" for t in screens
                        if m in {study.clip_by_id[c].method for c in t.clips})
        assert sides[True] == sides[False] == 6 * 4 // 2  # ours left in exactly half of its screens with m


def test_single_design_and_manifest_round_trip(tmp_path):
    study = build_study(_stimuli(3), 2, layout="single", seed=1, method_info={"ours": {"training_set": "synth"}})
    assert set(appearance_counts(study).values()) == {1}
    assert all(len(t.clips) == 1 for p in study.participants for t in p.trials)
    study.save(tmp_path / "m.json")
    loaded = Study.load(tmp_path / "m.json")
    assert loaded.fingerprint() == study.fingerprint() and loaded.training_set("ours") == "synth"
    broken = study.to_dict()
    broken["clips"] = broken["clips"][1:]
    with pytest.raises(StudyError, match="exactly one clip per method"):
        Study.from_dict(broken)
    with pytest.raises(StudyError, match="participant id"):
        build_study(_stimuli(1), 1, participant_ids=["../x"])
    with pytest.raises(ValueError, match="unknown emotion"):
        make_stimuli(["a.wav"], ["bored"])
    with pytest.raises(StudyError, match="one emotion per audio"):
        make_stimuli(["a.wav", "b.wav", "c.wav"], ["happy", "sad"])


# ---------------------------------------------------------------------------------------- analysis

def test_paired_test_and_holm():
    ref, other = np.array([4, 5, 4, 3, 5.0]), np.array([3, 3, 4, 2, 4.0])
    t, p, d = paired_test(ref, other)
    diff = ref - other
    assert d == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert t == pytest.approx(diff.mean() / (diff.std(ddof=1) / np.sqrt(5))) and 0 < p < 0.05
    assert paired_test(other, ref)[1] > 0.95  # one-sided: the other direction is no evidence
    assert np.isnan(paired_test(ref, ref)[1])
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_analysis_recovers_known_effect():
    study = build_study(_stimuli(8), 25, layout="panel", seed=0)
    effects = {"ours": 1.0, ("speech_only", "expression"): -1.0}
    rows = simulate_ratings(study, effects, seed=1)
    res = analyze(study, rows)
    for c in res.comparisons:
        assert c.n == 200 and c.p < 0.05 and c.d > 0.4, c
        expected = 1.0 - (-1.0 if (c.method, c.aspect) == ("speech_only", "expression") else 0.0)
        assert 0.7 * expected < c.mean_diff < 1.2 * expected, c  # rounding to the scale and its ends shrink it a bit
    assert res.comparison("expression", "speech_only").mean_diff > res.comparison("lip_sync", "speech_only").mean_diff
    ours = [r["score"] for r in rows if r["aspect"] == "lip_sync" and study.clip_by_id[r["clip"]].method == "ours"]
    s = res.score("lip_sync", "ours")
    assert s.mos == pytest.approx(np.mean(ours)) and s.sd == pytest.approx(np.std(ours, ddof=1)) and s.n == 200
    by_participant = analyze(study, rows, unit="participant")
    assert {c.n for c in by_participant.comparisons} == {25}
    assert all(c.p < 0.05 for c in by_participant.comparisons)


@pytest.mark.slow
def test_null_studies_reject_at_about_alpha():
    """200 simulated studies without any effect: the one-sided tests reject at about 5 %."""
    study = build_study(_stimuli(4), 20, methods=("ours", "interpolation", "speech_only"), seed=0)
    p = [c.p for k in range(200) for c in analyze(study, simulate_ratings(study, seed=k)).comparisons]
    rate = np.mean(np.array(p) < 0.05)
    assert len(p) == 800 and 0.025 < rate < 0.08, rate


def test_analysis_refuses_incomplete_and_foreign_data():
    study = build_study(_stimuli(4), 6, methods=("ours", "interpolation"), seed=0)
    rows = simulate_ratings(study, seed=0)
    dropped = [r for r in rows if not (r["participant"] == "P03" and r["trial"] == "t001")]
    with pytest.raises(IncompleteDataError, match="P03: 4 of 16 ratings missing"):
        analyze(study, dropped)
    res = analyze(study, dropped, allow_incomplete=True)
    assert res.missing == ["P03: 4 of 16 ratings missing"] and {c.n for c in res.comparisons} == {23}
    assert "Incomplete data" in report_markdown(res, study)
    drafts = rows + [dict(rows[0], score=1, submitted=0)]
    assert analyze(study, drafts).n_ratings == len(rows)  # drafts never count
    with pytest.raises(IncompleteDataError, match="duplicate"):
        analyze(study, rows + [rows[0]], allow_incomplete=True)
    with pytest.raises(IncompleteDataError, match="disagrees with the manifest"):
        analyze(study, [dict(rows[0], method="interpolation" if study.clip_by_id[rows[0]["clip"]].method == "ours"
                             else "ours")] + rows[1:])
    with pytest.raises(IncompleteDataError, match="not an integer"):
        analyze(study, [dict(rows[0], score="4.5")] + rows[1:])


def test_tables_follow_the_paper_layout():
    study = build_study(_stimuli(4), 6, seed=0)
    res = analyze(study, simulate_ratings(study, {"ours": 1.5}, seed=0))
    t3 = table_mos(res, study, "lip_sync").splitlines()
    assert t3[0] == "| Method | Training Set | MOS | Score SD | p-value | Cohen's d |"
    assert t3[-1].startswith("| Ours |") and t3[-1].endswith("| – | – |") and len(t3) == 2 + len(METHODS)
    t5 = table_ablation(res, study).splitlines()
    assert t5[0] == "| Configuration | MOS (Lip-Sync) | MOS (Expression) |"
    assert "w/o L_sparse" in t5[3] and "±" in t5[3] and t5[3].endswith("* |")


# ------------------------------------------------------------------------------------ clip making

def test_make_clips_with_injected_renderer(tmp_path, capsys, monkeypatch):
    mc = _script("make_clips")
    audio = []
    for i in range(2):
        audio.append(tmp_path / f"in{i}.wav")
        audio[-1].write_bytes(b"RIFF")
    out = tmp_path / "study"
    study = mc.create_study(out, audio, ["happy", "sad"], 6, seed=0)
    assert (out / "manifest.json").is_file() and (out / "audio" / "s01.wav").is_file()
    assert all(len(p.id) > 4 for p in study.participants)  # P01-<random>: ids are not guessable
    done = mc.render_clips(study, out, fake_render, progress=False)
    assert len(done) == 2 * len(METHODS)
    clip = study.clips[0]
    emotion = study.stimulus_by_id[clip.stimulus].emotion
    assert (out / clip.path).read_bytes().startswith(f"{clip.stimulus}.wav|{emotion}|{clip.method}|".encode())
    assert not list(out.rglob("*.partial*"))
    assert mc.render_clips(study, out, fake_render, progress=False) == []  # resumable: nothing left to do
    with pytest.raises(StudyError, match="exists"):
        mc.create_study(out, audio, ["happy"], 6)
    (out / study.clips[0].path).unlink()
    with pytest.raises(RuntimeError, match="wrote nothing"):
        mc.render_clips(study, out, lambda *a: None, progress=False)

    dry = tmp_path / "dry"
    args = ["--out", str(dry), "--audio", *map(str, audio), "--emotions", "happy", "--participants", "4",
            "--layout", "pairs", "--plain-ids"]
    assert mc.main(args + ["--dry-run"]) == 0
    assert Study.load(dry / "manifest.json").participants[0].id == "P01" and not (dry / "clips").exists()
    monkeypatch.setitem(sys.modules, "blendtalk.pipeline", None)  # the pipeline is not there
    assert mc.main(["--out", str(dry), "--resume"]) == 2
    assert "blendtalk.pipeline" in capsys.readouterr().err
    assert mc.resolve_renderer(f"{__name__}:fake_render") is fake_render


# -------------------------------------------------------------------------------------- rating app

@pytest.fixture
def app(tmp_path):
    """A tiny rendered study (3 methods, 2 stimuli, 2 participants) served on a free localhost port."""
    rate = _script("rate")
    study = build_study(_stimuli(2), 2, methods=("ours", "interpolation", "speech_only"), seed=0)
    for c in study.clips:
        (tmp_path / c.path).parent.mkdir(parents=True, exist_ok=True)
        fake_render(Path(c.stimulus + ".wav"), "happy", c.method, tmp_path / c.path)
    for s in study.stimuli:
        (tmp_path / s.audio).write_bytes(b"RIFF....WAVE")
    study.save(tmp_path / "manifest.json")
    servers = []

    def start():
        store = RatingStore(tmp_path / "ratings.sqlite", study)
        server = rate.make_server(study, store, tmp_path, port=0, quiet=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, store))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield rate, study, tmp_path, start
    for server, store in servers:
        server.shutdown()
        server.server_close()
        store.close()


def _call(base, path, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rating_app_stores_and_resumes(app):
    rate, study, root, start = app
    base = start()
    p1, p2 = (p.id for p in study.participants)
    status, state = _call(base, f"/api/next?participant={p1}")
    trial = state["trial"]
    assert status == 200 and state["done"] == 0 and state["total"] == 2 and trial["id"] == "t000"
    assert [c["label"] for c in trial["clips"]] == ["A", "B", "C"] and "method" not in json.dumps(state)
    clips = [c["id"] for c in trial["clips"]]
    status, _ = _call(base, "/api/rate", {"participant": p1, "trial": "t000",
                                          "ratings": [{"clip": clips[0], "aspect": "lip_sync", "score": 4}]})
    assert status == 200
    status, err = _call(base, "/api/rate", {"participant": p1, "trial": "t000", "ratings": [], "submit": True})
    assert status == 400 and "missing" in err["error"]

    base = start()  # a new process on the same database: the draft is still there
    state = _call(base, f"/api/next?participant={p1}")[1]
    assert state["trial"]["id"] == "t000" and state["trial"]["ratings"] == {clips[0]: {"lip_sync": 4}}
    assert _call(base, f"/api/next?participant={p2}")[1]["trial"]["ratings"] == {}  # nobody sees another's answers
    every = [{"clip": c, "aspect": a, "score": 1 + k % 5} for k, (c, a) in enumerate(product(clips, study.aspects))]
    status, state = _call(base, "/api/rate", {"participant": p1, "trial": "t000", "ratings": every, "submit": True})
    assert status == 200 and state["done"] == 1 and state["trial"]["id"] == "t001"

    bad = [({"participant": p1, "trial": "t000", "ratings": []}, 409),  # a submitted screen is locked
           ({"participant": p1, "trial": "t001", "ratings": [{"clip": clips[0], "aspect": "lip_sync", "score": 3}]}, 400),
           ({"participant": p1, "trial": "t001", "ratings": [{"clip": state["trial"]["clips"][0]["id"],
                                                              "aspect": "lip_sync", "score": 6}]}, 400),
           ({"participant": p1, "trial": "t001", "ratings": [{"clip": state["trial"]["clips"][0]["id"],
                                                              "aspect": "lip_sync", "score": True}]}, 400),
           ({"participant": p1, "trial": "t001", "ratings": [{"clip": state["trial"]["clips"][0]["id"],
                                                              "aspect": "realism", "score": 3}]}, 400),
           ({"participant": "../etc", "trial": "t000", "ratings": []}, 400),
           ({"participant": "P99", "trial": "t000", "ratings": []}, 404),
           ({"participant": p1, "trial": "t001", "ratings": [], "extra": 1}, 400)]
    for body, code in bad:
        assert _call(base, "/api/rate", body)[0] == code, body
    assert _call(base, f"/api/next?participant={p2}")[1]["done"] == 0
    plain = urllib.request.Request(base + "/api/rate", data=json.dumps(bad[0][0]).encode(),
                                   headers={"Content-Type": "text/plain"})  # what a cross-site form could send
    with pytest.raises(urllib.error.HTTPError, match="415"):
        urllib.request.urlopen(plain)

    out = root / "export.csv"
    assert rate.main(["--manifest", str(root / "manifest.json"), "--db", str(root / "ratings.sqlite"),
                      "--export", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(every) and {r["submitted"] for r in rows} == {"1"}
    assert sorted(int(r["score"]) for r in rows) == sorted(r["score"] for r in every)
    assert {r["method"] for r in rows} == set(study.methods)
    other = build_study(_stimuli(2), 2, seed=5)
    with pytest.raises(StudyError, match="another manifest"):
        RatingStore(root / "ratings.sqlite", other)


def test_rating_app_serves_only_manifest_files(app):
    rate, study, root, start = app
    base = start()
    clip = study.clips[0]
    with urllib.request.urlopen(f"{base}/clip/{clip.id}") as r:
        assert r.read() == (root / clip.path).read_bytes()
    req = urllib.request.Request(f"{base}/clip/{clip.id}", headers={"Range": "bytes=5-9"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.read() == (root / clip.path).read_bytes()[5:10]
    with urllib.request.urlopen(base + "/") as r:
        assert b"/api/next" in r.read()
    host, port = base.removeprefix("http://").split(":")
    for path in ["/clip/../manifest.json", "/clip/..%2fmanifest.json", "/clip/%2e%2e/%2e%2e/etc/passwd",
                 "/audio/../../../etc/passwd", f"/{clip.path}", "/manifest.json", "/ratings.sqlite",
                 "/clip/", f"/clip/{clip.id}/", f"/clip/{clip.id}/../{clip.id}", "/audio/s00/../s01",
                 "/api/participants", "/api/next/../../manifest.json", "//etc/passwd", "/rate.py"]:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", path)  # sent as is: no client-side normalisation
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 404 and b"RIFF" not in body and b"schema" not in body, path
        conn.close()


def test_analyze_script_from_the_database(tmp_path, capsys):
    analyze_script = _script("analyze")
    study = build_study(_stimuli(4), 4, methods=("ours", "interpolation", "no_sparsity"), seed=2)
    study.save(tmp_path / "manifest.json")
    store = RatingStore(tmp_path / "ratings.sqlite", study)
    rows = simulate_ratings(study, {"ours": 1.0}, seed=0)
    by_trial = {}
    for r in rows:
        by_trial.setdefault((r["participant"], r["trial"]), []).append(
            {"clip": r["clip"], "aspect": r["aspect"], "score": r["score"]})
    last = study.participants[-1]
    for (pid, tid), ratings in by_trial.items():
        if (pid, tid) != (last.id, last.trials[-1].id):  # one screen left unrated
            store.rate(pid, tid, ratings, submit=True)
    store.close()
    args = ["--manifest", str(tmp_path / "manifest.json"), "--db", str(tmp_path / "ratings.sqlite"),
            "--out", str(tmp_path / "out")]
    assert analyze_script.main(args) == 2
    assert f"{last.id}: 6 of 24 ratings missing" in capsys.readouterr().err
    assert analyze_script.main(args + ["--allow-incomplete"]) == 0
    text = (tmp_path / "out" / "study_tables.md").read_text()
    assert "| Ours |" in text and "Incomplete data" in text
    result = json.loads((tmp_path / "out" / "study_results.json").read_text())
    assert {c["method"] for c in result["comparisons"]} == {"interpolation", "no_sparsity"}
    assert any((tmp_path / "out").glob("study_mos.*"))


def test_concurrent_submits_lock_the_screen_once(tmp_path):
    study = build_study(_stimuli(2), 1, methods=("ours", "speech_only"), seed=0)
    store = RatingStore(tmp_path / "r.sqlite", study)
    trial = study.participants[0].trials[0]
    every = [{"clip": c, "aspect": a, "score": 3} for c, a in product(trial.clips, study.aspects)]
    outcomes = []

    def submit():
        try:
            store.rate("P01", trial.id, every, submit=True)
            outcomes.append("ok")
        except StudyError as e:
            outcomes.append(e.status)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) == [409] * 7 + ["ok"]
    assert store.progress("P01") == (1, 2) and len(store.rows()) == len(every)
    store.close()
