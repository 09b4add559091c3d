"""FaceFormer training: feature cache, windows, loss, evaluation, runs and resume, on a tiny synthetic corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blendtalk.evaluation.faceformer import (
    evaluate_driver, evaluate_model, motion_metrics, region_masks, summarise,
)
from blendtalk.training.faceformer import (
    FaceFormerTrainConfig, augment_mel, cache_features, faceformer_loss, fit_frames, load_sequences, load_train_config, new_model,
    sample_batch, train_faceformer,
)
from blendtalk.models.audio_encoders import AudioEncoderConfig
from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig
from blendtalk.speech.features import FeatureCache

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("librosa", "pocketsphinx", "soundfile")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 speakers (2 train, 1 val, 1 test) x 2 sentences, and its feature cache."""
    from blendtalk.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(num_speakers=4, sentences_per_speaker=2, num_subjects=1, takes_per_emotion=1,
                               expression_seconds=1.0))
    features = cache_features(FaceFormerTrainConfig(data=str(root)), root / "features.npz")
    return root, features


def tiny_model(v: int, dropout: float = 0.1) -> FaceFormerConfig:
    return FaceFormerConfig(num_vertices=v, feature_dim=16, num_heads=2, num_speakers=2, motion_scale=1e-3, dropout=dropout,
                            encoder=AudioEncoderConfig(hidden_dim=16, conv_layers=1))


def config(corpus, tmp_path, **kw) -> FaceFormerTrainConfig:
    root, features = corpus
    args = dict(data=str(root), features=str(features), out=str(tmp_path / "runs"), batch_size=2, val_sequences=2,
                device="cpu", threads=1, min_seconds=0.5, max_seconds=1.0)
    args.update(kw)
    return FaceFormerTrainConfig(**args)


def test_cache_matches_live_features_and_is_compact(corpus):
    from blendtalk.data.vocaset import read_vocaset
    from blendtalk.speech.features import phonetic_features

    root, path = corpus
    cache = FeatureCache.load(path)
    assert cache.sources == ("exact", "aligned", "recognized") and len(cache.names) == 8
    seq = read_vocaset(root / "speech").sequences[0]
    audio, _ = seq.load_audio()
    with np.load(root / "truth" / "speech" / f"{seq.name}.npz") as z:
        live = phonetic_features(audio, str(z["text"]))
    cached = cache.features(seq.name, "aligned")
    assert cached.shape == live.shape
    assert np.array_equal(cached[:, :40], live[:, :40])  # the same aligned phones
    assert np.abs(cached[:, 40:] - live[:, 40:]).max() < 0.02  # log-mel through float16
    assert path.stat().st_size < 200 * cached.shape[0] * 8  # < 200 bytes a frame (float16 mel + phone segments)
    with pytest.raises(KeyError, match="--cache-features"):
        cache.features("nobody_sentence01")


@pytest.mark.slow
def test_training_imports_need_no_audio_stack(corpus, tmp_path):
    """What the GPU machine runs: train from the cache with librosa, pocketsphinx and soundfile unimportable."""
    root, features = corpus
    code = (
        "import sys\n"
        f"for m in {HEAVY!r}: sys.modules[m] = None  # any import of them now fails\n"
        "import blendtalk.training.faceformer as t, blendtalk.evaluation.faceformer, blendtalk.speech.features\n"
        "from blendtalk.models.faceformer import FaceFormerConfig\n"
        "from blendtalk.models.audio_encoders import AudioEncoderConfig\n"
        f"c = t.FaceFormerTrainConfig(data={str(root)!r}, features={str(features)!r}, out={str(tmp_path)!r},"
        " batch_size=2, epochs=1, device='cpu', threads=1, val_sequences=1,"
        " model=FaceFormerConfig(num_vertices=4278, feature_dim=16, num_heads=2, num_speakers=2,"
        " encoder=AudioEncoderConfig(hidden_dim=16, conv_layers=1)))\n"
        "run = t.train_faceformer(c)\n"
        "assert (run / 'best' / 'model.safetensors').is_file()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def test_windows_have_one_length_and_match_the_motion(corpus, tmp_path):
    cfg = config(corpus, tmp_path, batch_size=3, phone_mix={"recognized": 1.0})
    cache = FeatureCache.load(cfg.feature_path())
    data = load_sequences(cfg, "train", "cpu", cache)
    assert len(data) == 4 and set(data.speaker.tolist()) == {0, 1}
    rng = np.random.default_rng(0)
    for _ in range(5):
        b = sample_batch(data, cfg, rng, "cpu")
        t = b["num_frames"]
        assert 15 <= t <= 30 and b["inputs"].shape == (3, t, 120) and b["target"].shape == (3, t, 4278, 3)
        # every window is a contiguous stretch of one sequence, with that sequence's recognised phones
        for k in range(3):
            hits = [n for n in range(len(data)) for s in range(data.lengths[n] - t + 1)
                    if torch.equal(data.motion[data.rows(n)][s:s + t], b["target"][k])]
            n = hits[0]
            start = [s for s in range(data.lengths[n] - t + 1) if torch.equal(data.motion[data.rows(n)][s:s + t], b["target"][k])][0]
            ids = fit_frames(cache.phone_ids(data.names[n], "recognized"), int(data.lengths[n]), "x")[start:start + t]
            assert torch.equal(b["inputs"][k, :, :40].argmax(-1), torch.from_numpy(ids))
            assert b["speaker"][k] == data.speaker[n]
    with pytest.raises(ValueError, match="rebuild"):
        fit_frames(np.zeros((10, 3)), 30, "seq")
    assert fit_frames(np.arange(5.0)[:, None], 7, "seq")[:, 0].tolist() == [0, 1, 2, 3, 4, 4, 4]


def test_loss_and_metrics_definitions():
    target = torch.zeros(1, 4, 5, 3)
    pred = target.clone()
    pred[0, 1, 2, 1] = 2e-3  # one lip vertex 2 mm off on one frame
    loss, parts = faceformer_loss(pred, target, torch.ones(5), scale=1e-3)
    assert loss.item() == pytest.approx(4.0 / 20) and parts["velocity"] == 0
    assert faceformer_loss(target, target, torch.ones(5), 1e-3, lambda_velocity=1.0)[0].item() == 0
    masks = {"lips": np.array([1, 2]), "upper_face": np.array([0, 4])}
    m = summarise([motion_metrics(pred, target, masks)])
    assert m["lve_mm2"] == pytest.approx(4.0 / 4)  # max over lips per frame (4 mm^2 once), mean over 4 frames
    assert m["fdd_mm"] == 0 and m["mve_mm"] == pytest.approx(2.0 / 20)  # the upper face does not move
    # Upper-face vertex 4 moves 1 mm on every other frame in the truth, 3 mm in the prediction: the std over
    # time of its displacement is 0.5 vs 1.5 mm, and vertex 0 (still in both) halves the mean over vertices.
    moving_t, moving_p = target.clone(), pred.clone()
    moving_t[0, 1::2, 4, 1], moving_p[0, 1::2, 4, 1] = 1e-3, 3e-3
    m = summarise([motion_metrics(moving_p, moving_t, masks)])
    assert m["fdd_mm"] == pytest.approx((1.5 - 0.5) / 2)
    assert m["fdd_codetalker_mm2"] == pytest.approx((0.5 - 4.5) / 2)  # std of 0/1 vs 0/9 mm^2, truth minus prediction
    assert m["lve_mm2"] == pytest.approx(4.0 / 4) and m["mve_mm"] == pytest.approx((2.0 + 2 * 2.0) / 20)
    m = summarise([motion_metrics(moving_p.flip(1), moving_t, masks)])  # the same motion a frame out of phase
    assert m["fdd_mm"] == pytest.approx(0.5)  # FDD compares the amount of motion, not its timing
    pairs = torch.tensor([[2, 3]])  # one lip pair: upper 2, lower 3; pred raises the upper lip by 2 mm on 1 of 4 frames
    _, parts = faceformer_loss(pred, target, torch.ones(5), 1e-3, lip_pairs=pairs, lambda_lip_gap=1.0)
    assert parts["lip_gap"] == pytest.approx(2.0 / 4) and parts["total"] == pytest.approx(4.0 / 20 + 0.5)
    with pytest.raises(ValueError, match=r"\(B, T, V, 3\)"):
        faceformer_loss(pred[0], target[0], torch.ones(5), 1e-3)


def test_untrained_model_scores_like_no_motion(corpus, tmp_path):
    cfg = config(corpus, tmp_path, model=tiny_model(4278))
    data = load_sequences(cfg, "val", "cpu", FeatureCache.load(cfg.feature_path()))
    masks = region_masks(cfg, 4278)
    model = new_model(cfg, 4278, 2, "cpu")
    got = evaluate_model(model, data, masks, sources=("aligned", "exact"), styles="all")
    zero = evaluate_driver(lambda n, s: torch.zeros_like(data.motion[data.rows(n)])[None], data, masks, ["z"])["z"]
    assert got["aligned"]["lve_mm2"] == pytest.approx(zero["lve_mm2"]) and zero["lve_mm2"] > 1.0
    assert got["exact"]["frames"] == int(data.lengths.sum())


def test_steps_lower_the_loss(corpus, tmp_path):
    torch.manual_seed(0)
    cfg = config(corpus, tmp_path, model=tiny_model(4278, dropout=0.0))
    data = load_sequences(cfg, "train", "cpu", FeatureCache.load(cfg.feature_path()))
    model = new_model(cfg, 4278, 2, "cpu")
    batch = sample_batch(data, cfg, np.random.default_rng(1), "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = faceformer_loss(model(batch["inputs"], batch["num_frames"], batch["speaker"], batch["target"]),
                                  batch["target"], torch.ones(4278), cfg.motion_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0] and min(losses[-5:]) < min(losses[:5])


def test_run_folder_and_resume(corpus, tmp_path):
    cfg = config(corpus, tmp_path, model=tiny_model(4278), epochs=2, self_feed=1.0, lambda_velocity=0.5)
    run = train_faceformer(cfg)
    for name in ("train_config.json", "state.pt", "metrics.jsonl", "checkpoint/model.safetensors", "best/config.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]  # 4 train sequences / batch 2 = 2 steps an epoch
    assert {"aligned", "recognized"} <= set(lines[-1]["val"]) and lines[-1]["val_loss"] == lines[-1]["val"]["aligned"]["lve_mm2"]
    again = load_train_config(run)
    assert again.model == cfg.model and again.phone_mix == cfg.phone_mix
    again.epochs = 3
    assert train_faceformer(again, run_dir=run, resume=True) == run
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    second = train_faceformer(config(corpus, tmp_path, model=tiny_model(4278), epochs=1))
    assert second != run and run.is_dir()  # runs are never reused


def test_a_resumed_run_is_the_uninterrupted_run(corpus, tmp_path):
    """Stopped after a validation and resumed, a run draws the same windows, augmentation and dropout
    as one that never stopped: the same losses, the same weights (state.pt holds every random state)."""
    whole = train_faceformer(config(corpus, tmp_path, model=tiny_model(4278), epochs=4, val_every=1,
                                    self_feed=0.5, mel_dropout=0.2))
    first = train_faceformer(config(corpus, tmp_path, model=tiny_model(4278), epochs=2, val_every=1,
                                    self_feed=0.5, mel_dropout=0.2))
    again = load_train_config(first)
    again.epochs = 4
    train_faceformer(again, run_dir=first, resume=True)
    lines = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (whole, first)]
    assert [m["step"] for m in lines[0]] == [m["step"] for m in lines[1]] == list(range(1, 9))
    for a, b in zip(*lines):
        assert a["loss"]["total"] == pytest.approx(b["loss"]["total"], rel=1e-5), a["step"]
    got, want = (FaceFormer.from_pretrained(run / "checkpoint").state_dict() for run in (first, whole))
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-7)


KILLED_RUN = """
import sys
from blendtalk.models.audio_encoders import AudioEncoderConfig
from blendtalk.models.faceformer import FaceFormerConfig
from blendtalk.training.faceformer import FaceFormerTrainConfig, train_faceformer
model = FaceFormerConfig(num_vertices=4278, feature_dim=16, num_heads=2, num_speakers=2, motion_scale=1e-3,
                         encoder=AudioEncoderConfig(hidden_dim=16, conv_layers=1))
train_faceformer(FaceFormerTrainConfig(data=sys.argv[1], features=sys.argv[2], out=sys.argv[3], model=model, batch_size=2,
                                       val_sequences=2, device="cpu", threads=1, min_seconds=0.5, max_seconds=1.0,
                                       epochs=30, val_every=2, self_feed=0.5))
"""


@pytest.mark.slow
def test_training_killed_mid_run_resumes_with_nothing_lost(corpus, tmp_path):
    """SIGKILL after a few validations, then --resume: the same metrics lines and weights as a run
    that was never stopped, and only whole files left behind."""
    import time

    root, features = corpus
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(root), str(features), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def logged(run):
        path = run / "metrics.jsonl"
        return len(path.read_text().split("\n")[:-1]) if path.is_file() else 0

    deadline, run = time.monotonic() + 180, None
    while time.monotonic() < deadline and proc.poll() is None:
        run = next((r for r in out.glob("faceformer-*") if logged(r) >= 3), None)
        if run is not None:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert run is not None, "the run ended (or never logged) before it could be stopped"
    state = torch.load(run / "state.pt", weights_only=True)
    assert 4 <= state["step"] < 60  # 30 epochs of 2 steps
    for part in ("checkpoint", "best"):
        FaceFormer.from_pretrained(run / part)  # whole files: they load strictly
    cfg = load_train_config(run)
    train_faceformer(cfg, run_dir=run, resume=True)
    cfg.out = str(tmp_path / "reference")
    reference = train_faceformer(cfg)
    got, want = ([json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (run, reference))
    assert [m["step"] for m in got] == list(range(2, 61, 2)) == [m["step"] for m in want]  # no gap, no repeat
    for a, b in zip(got, want, strict=True):
        assert a["loss"]["total"] == pytest.approx(b["loss"]["total"], rel=1e-4), a["step"]
    final, uninterrupted = (FaceFormer.from_pretrained(r / "checkpoint").state_dict() for r in (run, reference))
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-3, atol=1e-6)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="phone_mix"):
        FaceFormerTrainConfig(phone_mix={"guessed": 1.0})
    with pytest.raises(ValueError, match="encoder"):
        FaceFormerTrainConfig(encoder="mfcc")
    with pytest.raises(ValueError, match="min_seconds"):
        FaceFormerTrainConfig(min_seconds=3, max_seconds=2)
    with pytest.raises(ValueError, match="mel_warp"):
        FaceFormerTrainConfig(mel_warp=0.7)
    with pytest.raises(ValueError, match="mel_dropout"):
        FaceFormerTrainConfig(mel_dropout=1.5)


def test_mel_augmentation():
    rng = np.random.default_rng(0)
    mel = torch.randn(6, 40, 80)
    off = FaceFormerTrainConfig(mel_warp=0.0, mel_masks=0, mel_dropout=0.0)
    assert torch.equal(augment_mel(mel, off, rng), mel)
    # Stretch: a formant-like peak at mel bin 30 moves by the window's factor, never beyond +-15%.
    peak = torch.zeros(6, 40, 80)
    peak[..., 30] = 10.0
    moved = augment_mel(peak, FaceFormerTrainConfig(mel_warp=0.15, mel_masks=0), rng).argmax(-1)  # (6, 40)
    assert ((moved >= 25) & (moved <= 35)).all() and (moved != 30).any()
    assert (moved == moved[:, :1]).all()  # one factor per window
    # Masks: blanked entries hold the window's mean level, whole bands or whole frames.
    masked = augment_mel(mel, FaceFormerTrainConfig(mel_warp=0.0, mel_masks=2), rng)
    level = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)
    blank = masked == level
    assert blank.any() and torch.equal(masked[~blank], mel[~blank])
    bands, spans = blank.all(1), blank.all(2)  # (B, M) bands, (B, L) frames
    assert torch.equal(blank, bands[:, None, :] | spans[:, :, None])
    assert (bands.sum(1) <= 20).all() and (spans.sum(1) <= 8).all()
    # Dropout blanks whole windows, only those whose phones are trusted.
    trusted = torch.tensor([True, True, True, False, False, False])
    dropped = augment_mel(mel, FaceFormerTrainConfig(mel_warp=0.0, mel_masks=0, mel_dropout=1.0), rng, trusted)
    flat = dropped.flatten(1).std(1) == 0
    assert flat.tolist() == trusted.tolist() and torch.equal(dropped[3:], mel[3:])


@pytest.mark.slow
def test_cli_caches_then_trains(corpus, tmp_path):
    root, _ = corpus
    script = ROOT / "train" / "train_faceformer.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    feats = tmp_path / "f.npz"
    out = subprocess.run([sys.executable, str(script), "--data", str(root), "--cache-features", str(feats)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and feats.is_file(), out.stderr[-1500:]
    out = subprocess.run([sys.executable, str(script), "--data", str(root), "--features", str(feats), "--out",
                          str(tmp_path / "runs"), "--max-minutes", "0.02", "--epochs", "1000", "--device", "cpu",
                          "--threads", "1", "--batch-size", "2", "--val-sequences", "1"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-1500:]
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "train_config.json").read_text())["max_minutes"] == 0.02
    assert (run / "best" / "model.safetensors").is_file()


def test_vocaset_layout_split_recognised_phones_and_flame_masks(tmp_path):
    """Real-VOCASET path on a fake corpus with FaceFormer's subject names: split, 22.05 kHz audio, FLAME masks."""
    import pickle

    from blendtalk.data.datasets import VOCASET_TEST_SUBJECTS, VOCASET_TRAIN_SUBJECTS, VOCASET_VAL_SUBJECTS
    from blendtalk.data.vocaset import write_vocaset_raw
    from blendtalk.speech.tts import synthesize

    v, rng = 30, np.random.default_rng(0)
    audio, _ = synthesize("Maybe a bit more.")
    from scipy.signal import resample_poly

    audio22 = np.clip(resample_poly(audio, 441, 320), -1, 1).astype(np.float32)  # stored at 22.05 kHz
    t60 = int(round(len(audio) / 16000 * 60))
    subjects = VOCASET_TRAIN_SUBJECTS + VOCASET_VAL_SUBJECTS + VOCASET_TEST_SUBJECTS
    templates = {s: rng.normal(size=(v, 3)).astype(np.float32) * 0.1 for s in subjects}
    seqs, sound = {}, {}
    for s in subjects:
        for n in ((1,) if s in VOCASET_TRAIN_SUBJECTS else (1, 21)):  # val/test keep sentences 21-40 only
            wiggle = 1e-3 * np.sin(np.arange(t60) / 5.0)[:, None, None] * np.ones((1, v, 3))
            seqs[(s, f"sentence{n:02d}")] = templates[s] + wiggle.astype(np.float32)
            sound[(s, f"sentence{n:02d}")] = (audio22, 22050)
    write_vocaset_raw(tmp_path / "voca", seqs, templates, sound, fps=60)
    with open(tmp_path / "masks.pkl", "wb") as f:
        pickle.dump({"lips": np.arange(5), "forehead": np.arange(20, 25), "eye_region": np.arange(24, 28)}, f)
    cfg = FaceFormerTrainConfig(vocaset=str(tmp_path / "voca"), flame_masks=str(tmp_path / "masks.pkl"), out=str(tmp_path / "runs"),
                                batch_size=2, epochs=1, device="cpu", threads=1, min_seconds=0.5, max_seconds=1.0,
                                model=FaceFormerConfig(num_vertices=v, feature_dim=16, num_heads=2, num_speakers=8,
                                                       encoder=AudioEncoderConfig(hidden_dim=16, conv_layers=1)))
    path = cache_features(cfg)
    assert path == tmp_path / "voca" / "phonetic_features.npz"
    cache = FeatureCache.load(path)
    assert cache.sources == ("aligned", "recognized") and len(cache.names) == 16  # no transcripts: recognised phones
    val = load_sequences(cfg, "val", "cpu", cache)
    assert val.names == [f"{s}_sentence21" for s in sorted(VOCASET_VAL_SUBJECTS)] and (val.speaker == -1).all()
    assert val.lengths[0] == len(range(0, t60, 2))  # 60 fps subsampled to 30 ([::2])
    run = train_faceformer(cfg)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["val"]["aligned"]["lve_mm2"] > 0 and json.loads((run / "train_config.json").read_text())["vocaset"]


@pytest.mark.slow
def test_lvefdd_script_compares_with_the_procedural_driver(corpus, tmp_path):
    root, features = corpus
    cfg = config(corpus, tmp_path, model=tiny_model(4278))
    new_model(cfg, 4278, 2, "cpu").save_pretrained(tmp_path / "ckpt")  # untrained: outputs the template
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "lvefdd.json"
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "lvefdd.py"), "--checkpoint", str(tmp_path / "ckpt"),
                           "--data", str(root), "--features", str(features), "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(out.read_text())
    assert report["sequences"] == 2 and report["vertex_sets"] == {"lips": int(region_masks(cfg, 4278)["lips"].size),
                                                                   "upper_face": int(region_masks(cfg, 4278)["upper_face"].size)}
    assert set(report["faceformer"]) == set(report["procedural"]) == {"exact", "aligned", "recognized"}
    assert report["faceformer"]["aligned"]["lve_mm2"] == pytest.approx(report["no_motion"]["lve_mm2"])
    assert report["procedural"]["exact"]["lve_mm2"] < 0.5 * report["no_motion"]["lve_mm2"]  # it made the data
    assert "LVE" in proc.stdout and report["units"]["lve_mm2"] == "mm^2"
    assert report["ground_truth"]["lve_mm2"] == 0 and report["ground_truth"]["bilabial_closure"] > 0.8  # the data close
    assert report["no_motion"]["bilabial_closure"] == 1.0  # closure alone proves nothing: see LVE


def test_wav2vec2_encoder_trains_on_audio_windows(corpus, tmp_path):
    tiny_w2v = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, layerdrop=0.0)
    model = FaceFormerConfig(num_vertices=4278, feature_dim=16, num_heads=2, num_speakers=2,
                             encoder=AudioEncoderConfig(kind="wav2vec2", wav2vec2=tiny_w2v))
    cfg = config(corpus, tmp_path, model=model, features=str(tmp_path / "absent.npz"), epochs=1)
    assert cfg.encoder == "wav2vec2"
    data = load_sequences(cfg, "train", "cpu")
    b = sample_batch(data, cfg, np.random.default_rng(0), "cpu")
    assert b["inputs"].shape == (2, round(b["num_frames"] * 16000 / 30))
    run = train_faceformer(cfg)  # no feature cache needed
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(line["val"]) == {"audio"} and line["val"]["audio"]["lve_mm2"] > 0
