"""VOCASET / Florence4D layouts (readers and writers), the restricted unpickler, and the datasets."""

import os
import pickle

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from blendtalk.data.datasets import (
    VOCASET_SPLIT, VOCASET_TRAIN_SUBJECTS, ExpressionDataset, PairedFrameLoader, SpeechDataset, Split, collate,
)
from blendtalk.data.florence import read_florence, write_florence
from blendtalk.data.vocaset import (
    NpyFile, VocasetRawWriter, load_pickle, read_vocaset, write_vocaset_processed, write_vocaset_raw,
)

V = 30  # vertices of the toy topology
SR = 16_000  # Hz
FACES = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]])


def _corpus(subjects, sentences, seed=0, fps=60, num_vertices=V):
    """Templates, {(subject, sentence): (T, V, 3)} and matching audio."""
    rng = np.random.default_rng(seed)
    templates = {s: rng.normal(size=(num_vertices, 3)).astype(np.float32) for s in subjects}
    seqs, audio = {}, {}
    for s in subjects:
        for k in sentences:
            t = 4 + (k % 5)
            seqs[(s, f"sentence{k:02d}")] = templates[s] + 0.01 * rng.normal(size=(t, num_vertices, 3)).astype(np.float32)
            audio[(s, f"sentence{k:02d}")] = (rng.uniform(-0.5, 0.5, size=t * SR // fps).astype(np.float32), SR)
    return templates, seqs, audio


# ---------------------------------------------------------------- VOCASET


def test_vocaset_raw_round_trip(tmp_path):
    templates, seqs, audio = _corpus(["spkA", "spkB"], [1, 2, 3])
    write_vocaset_raw(tmp_path, seqs, templates, audio, fps=60)
    # The files are the real format: plain numpy / pickle readers see VOCA's structures.
    data = np.load(tmp_path / "data_verts.npy")
    assert data.dtype == np.float32 and data.shape == (sum(len(v) for v in seqs.values()), V, 3)
    with open(tmp_path / "subj_seq_to_idx.pkl", "rb") as f:
        idx = pickle.load(f, encoding="latin1")
    np.testing.assert_array_equal(data[[idx["spkB"]["sentence02"][t] for t in range(6)]], seqs[("spkB", "sentence02")])
    with open(tmp_path / "raw_audio_fixed.pkl", "rb") as f:
        raw_audio = pickle.load(f, encoding="latin1")
    assert raw_audio["spkA"]["sentence01"]["audio"].dtype == np.int16 and raw_audio["spkA"]["sentence01"]["sample_rate"] == SR

    index = read_vocaset(tmp_path)
    assert index.layout == "raw" and index.fps == 60 and len(index) == 6 and index.subjects == ("spkA", "spkB")
    for (s, n), v in seqs.items():
        seq = index.get(s, n)
        assert isinstance(seq.vertices, np.memmap)
        np.testing.assert_array_equal(seq.vertices, v)
        np.testing.assert_array_equal(seq.template, templates[s])
        samples, sr = seq.load_audio()
        assert sr == SR and np.abs(samples - audio[(s, n)][0]).max() < 1e-4


def test_vocaset_writer_streams_and_cleans_up(tmp_path):
    templates, seqs, audio = _corpus(["spkA"], [1, 2])
    gen = ((s, n, v) for (s, n), v in seqs.items())  # a generator: nothing held beyond one sequence
    write_vocaset_raw(tmp_path / "ok", gen, templates, audio, fps=30)
    assert read_vocaset(tmp_path / "ok").fps == 30
    with pytest.raises(FileExistsError, match="overwrite"):
        write_vocaset_raw(tmp_path / "ok", seqs, templates, audio)
    with pytest.raises(RuntimeError):
        with VocasetRawWriter(tmp_path / "bad", templates) as w:
            w.add("spkA", "sentence01", seqs[("spkA", "sentence01")], *audio[("spkA", "sentence01")])
            raise RuntimeError("generator crashed")
    assert not any((tmp_path / "bad").iterdir())  # no half corpus that reads as complete


def test_faceformer_layout_reads(tmp_path):
    # Written by hand the way FaceFormer's process_voca_data.py does: (T, V*3) npy, wav, py2-era pickle.
    templates, seqs, audio = _corpus(["FaceTalk_170725_00137_TA", "FaceTalk_170728_03272_TA"], [1, 2])
    (tmp_path / "vertices_npy").mkdir()
    (tmp_path / "wav").mkdir()
    for (s, n), v in seqs.items():
        np.save(tmp_path / "vertices_npy" / f"{s}_{n}.npy", v.reshape(len(v), -1))
        soundfile.write(str(tmp_path / "wav" / f"{s}_{n}.wav"), audio[(s, n)][0], SR, subtype="PCM_16")
    with open(tmp_path / "templates.pkl", "wb") as f:
        pickle.dump({s: t.astype(np.float64) for s, t in templates.items()}, f, protocol=2)
    index = read_vocaset(tmp_path)
    assert index.layout == "faceformer" and index.fps == 60 and len(index) == 4
    seq = index.get("FaceTalk_170725_00137_TA", "sentence02")
    assert isinstance(seq.vertices, np.memmap) and seq.sentence_number == 2
    np.testing.assert_allclose(seq.vertices, seqs[("FaceTalk_170725_00137_TA", "sentence02")])
    # 60 -> 30 fps is FaceFormer's [::2].
    split = Split(["FaceTalk_170725_00137_TA"], ["FaceTalk_170728_03272_TA"])
    item = SpeechDataset(index, split, "train", fps=30)[1]
    v = seqs[("FaceTalk_170725_00137_TA", item["name"].rpartition("_")[2])]
    np.testing.assert_allclose(item["displacement"].numpy(), v[::2] - templates["FaceTalk_170725_00137_TA"], atol=1e-6)
    assert abs(len(item["audio"]) - len(v) * SR / 60) <= 1


def test_vocaset_processed_writer_round_trip(tmp_path):
    templates, seqs, audio = _corpus(["spkA", "spkB"], [1, 2])
    write_vocaset_processed(tmp_path, seqs, templates, audio, fps=30)
    index = read_vocaset(tmp_path)
    assert index.layout == "faceformer" and index.fps == 30
    for (s, n), v in seqs.items():
        np.testing.assert_array_equal(index.get(s, n).vertices, v)


def test_layout_detection_prefers_raw_and_can_be_forced(tmp_path):
    templates, seqs, audio = _corpus(["spkA"], [1])
    write_vocaset_raw(tmp_path, seqs, templates, audio)
    write_vocaset_processed(tmp_path / "ff", seqs, templates, audio)
    for p in (tmp_path / "ff").iterdir():
        p.rename(tmp_path / p.name) if p.name != "blendtalk_corpus.json" else p.unlink()
    assert read_vocaset(tmp_path).layout == "raw"
    assert read_vocaset(tmp_path, layout="faceformer").layout == "faceformer"


def test_missing_files_name_the_file_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_verts.npy.*vertices_npy"):
        read_vocaset(tmp_path)
    templates, seqs, audio = _corpus(["spkA"], [1])
    write_vocaset_raw(tmp_path / "raw", seqs, templates, audio)
    (tmp_path / "raw" / "subj_seq_to_idx.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing subj_seq_to_idx\.pkl.*raw VOCASET layout"):
        read_vocaset(tmp_path / "raw")
    write_vocaset_processed(tmp_path / "ff", seqs, templates, audio)
    (tmp_path / "ff" / "templates.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"templates\.pkl.*FaceFormer layout"):
        read_vocaset(tmp_path / "ff")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no expression sequences.*Florence4D layout"):
        read_florence(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_florence(tmp_path / "nowhere")


def test_malformed_shapes_raise_clear_errors(tmp_path):
    templates, seqs, audio = _corpus(["spkA"], [1])
    with pytest.raises(ValueError, match=r"\(T, 30, 3\).*\(5, 30\)"):
        write_vocaset_raw(tmp_path / "w", {("spkA", "sentence01"): np.zeros((5, V))}, templates, audio)
    with pytest.raises(ValueError, match="may not contain '_'"):
        write_vocaset_raw(tmp_path / "w2", {("spkA", "sentence_1"): seqs[("spkA", "sentence01")]}, templates,
                          {("spkA", "sentence_1"): audio[("spkA", "sentence01")]})
    write_vocaset_raw(tmp_path / "raw", seqs, templates, audio)
    np.save(tmp_path / "raw" / "data_verts.npy", np.zeros((9, V + 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 30, 3\).*\(9, 31, 3\)"):
        read_vocaset(tmp_path / "raw")
    write_vocaset_processed(tmp_path / "ff", seqs, templates, audio)
    np.save(tmp_path / "ff" / "vertices_npy" / "spkA_sentence01.npy", np.zeros((5, 3 * V - 3), np.float32))
    with pytest.raises(ValueError, match=r"spkA_sentence01\.npy must have shape \(T, 90\)"):
        read_vocaset(tmp_path / "ff")
    with pytest.raises(ValueError, match=r"\(T, V, 3\)"):
        write_florence(tmp_path / "fl", "s1", "Happy", np.zeros((4, V)), FACES)
    d = tmp_path / "fl2" / "s1" / "Happy"
    d.mkdir(parents=True)
    np.save(d / "vertices.npy", np.zeros((4, V), np.float32))
    with pytest.raises(ValueError, match=r"vertices\.npy must have shape \(T, V, 3\)"):
        read_florence(tmp_path / "fl2")


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    templates, seqs, audio = _corpus(["spkA"], [1])
    write_vocaset_raw(tmp_path / "raw", seqs, templates, audio)
    with open(tmp_path / "raw" / "templates.pkl", "wb") as f:
        pickle.dump({"spkA": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"templates\.pkl.*refusing to load global (posix|os|nt)\.system"):
        read_vocaset(tmp_path / "raw")
    for payload in (b"cbuiltins\neval\n(S'1+1'\ntR.", b"c__builtin__\ngetattr\n(S'x'\nS'y'\ntR."):
        (tmp_path / "p.pkl").write_bytes(payload)
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            load_pickle(tmp_path / "p.pkl")
    assert not marker.exists()
    # Legitimate numpy data loads under every protocol, including Python 2 era ones.
    obj = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": {"s": {0: np.int64(3)}}, "c": [1.5, "x"]}
    for protocol in (0, 2, 4, 5):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
        back = load_pickle(tmp_path / "ok.pkl")
        np.testing.assert_array_equal(back["a"], obj["a"])
        assert back["b"]["s"][0] == 3 and back["c"] == [1.5, "x"]


# ---------------------------------------------------------------- Florence4D


def test_florence_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    template = rng.normal(size=(V, 3)).astype(np.float32)
    frames = template + 0.01 * rng.normal(size=(12, V, 3)).astype(np.float32)  # > 10 frames: numeric sort
    write_florence(tmp_path, "F001", "Afraid", frames, FACES, template=template, fps=25, write_npy=False)
    write_florence(tmp_path, "F001", "Sad1", frames[:5], FACES, template=template, write_meshes=False)
    assert (tmp_path / "F001" / "Afraid" / "Afraid_11.obj").is_file()
    index = read_florence(tmp_path)
    assert index.fps == 25 and index.expressions == ("Afraid", "Sad1") and index.subjects == ("F001",)
    afraid = index.get("F001", "Afraid")
    assert afraid.num_frames == 12 and afraid.num_vertices == V
    np.testing.assert_allclose(afraid.vertices, frames, atol=1e-6)  # OBJ text keeps 6 decimals
    np.testing.assert_allclose(afraid.template, template, atol=1e-6)
    assert isinstance(index.get("F001", "Sad1").vertices, np.memmap)
    np.testing.assert_array_equal(index.load_faces(), FACES)
    with pytest.raises(ValueError, match="different template"):
        write_florence(tmp_path, "F001", "Happy", frames, FACES, template=template + 1)
    with pytest.raises(FileExistsError):
        write_florence(tmp_path, "F001", "Afraid", frames, FACES)


def test_florence_reads_ply_and_numbered_frames_with_cache(tmp_path):
    import trimesh

    rng = np.random.default_rng(2)
    frames = rng.normal(size=(3, V, 3)).astype(np.float32)
    root = tmp_path / "florence"
    (root / "S1" / "Smile2").mkdir(parents=True)
    (root / "S2" / "Smile2").mkdir(parents=True)
    for t, f in enumerate(frames):
        trimesh.Trimesh(f, FACES, process=False).export(root / "S1" / "Smile2" / f"Smile2_{t}.ply")
        (root / "S2" / "Smile2" / f"{t:05d}.obj").write_text("".join(f"v {x} {y} {z} 0.5 0.5 0.5\n" for x, y, z in f))
    index = read_florence(root, cache_dir=tmp_path / "cache")
    for s in ("S1", "S2"):
        np.testing.assert_allclose(index.get(s, "Smile2").vertices, frames, atol=1e-6)
    assert (tmp_path / "cache" / "S1" / "Smile2.npy").is_file()
    assert isinstance(read_florence(root, cache_dir=tmp_path / "cache").get("S1", "Smile2").vertices, np.memmap)
    (root / "S2" / "Smile2" / "00001.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match=r"00001\.obj has 1 vertices"):
        read_florence(root).get("S2", "Smile2").vertices
    with pytest.raises(ValueError, match="outside the dataset root"):
        read_florence(root, cache_dir=root / "cache")


# ---------------------------------------------------------------- datasets


def test_vocaset_split_convention(tmp_path):
    subjects = VOCASET_SPLIT.train + VOCASET_SPLIT.val + VOCASET_SPLIT.test
    templates, seqs, audio = _corpus(subjects, [1, 20, 21, 40])
    write_vocaset_raw(tmp_path, seqs, templates, audio)
    index = read_vocaset(tmp_path)
    parts = {p: SpeechDataset(index, VOCASET_SPLIT, p) for p in ("train", "val", "test")}
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (8 * 4, 2 * 2, 2 * 2)
    assert {s.sentence_number for s in parts["val"].sequences} == {21, 40}  # FaceFormer: val/test use 21-40
    subj = {p: {s.subject for s in ds.sequences} for p, ds in parts.items()}
    assert not (subj["train"] & subj["val"] or subj["train"] & subj["test"] or subj["val"] & subj["test"])
    item = parts["train"][0]
    assert item["subject_index"] == VOCASET_TRAIN_SUBJECTS.index(item["subject"])
    assert set(parts["test"].subject_index) == {-1}
    with pytest.raises(ValueError, match="both the train and val"):
        Split(["a", "b"], ["b"])
    other = Split.by_fraction([f"spk{i:02d}" for i in range(10)][::-1])
    assert other == Split.by_fraction([f"spk{i:02d}" for i in range(10)])  # order-free, deterministic
    assert (len(other.train), len(other.val), len(other.test)) == (8, 1, 1)
    with pytest.raises(ValueError, match="selects no train sequences"):
        SpeechDataset(index, other, "train")


def test_dataset_shapes_windows_region_and_loader(tmp_path):
    templates, seqs, audio = _corpus(["spkA", "spkB", "spkC"], [1, 2, 3])
    write_vocaset_raw(tmp_path, seqs, templates, audio, fps=60)
    index = read_vocaset(tmp_path)
    split = Split.by_fraction(index.subjects, (0.67, 0.33, 0.0))
    region = np.zeros(V, dtype=bool)
    region[::3] = True
    win = SpeechDataset(index, split, "train", window=2, fps=30, region=region)
    item = win[0]
    assert item["displacement"].shape == (2, 10, 3) and item["template"].shape == (10, 3)
    assert item["audio"].shape == (round(2 * SR / 30),)
    seq = win.sequences[0]
    np.testing.assert_allclose(item["displacement"].numpy(), (seq.vertices[0:4:2] - seq.template)[:, region], atol=1e-6)
    loader = DataLoader(win, batch_size=4, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["displacement"].shape == (4, 2, 10, 3) and batch["audio"].shape == (4, round(2 * SR / 30))
    whole = SpeechDataset(index, split, "train")
    padded = collate([whole[0], whole[1]])
    assert padded["displacement"].shape[0] == 2 and padded["num_frames"].tolist() == [len(whole[0]["displacement"]), len(whole[1]["displacement"])]

    write_florence(tmp_path / "fl", "e1", "Afraid", templates["spkA"] + np.ones((5, V, 3)), FACES, template=templates["spkA"])
    write_florence(tmp_path / "fl", "e2", "Happy", templates["spkB"] + np.ones((3, V, 3)), FACES, template=templates["spkB"])
    fl = read_florence(tmp_path / "fl")
    expr = ExpressionDataset(fl, Split(["e1", "e2"]), region=region)
    assert len(expr) == 8 and expr[0]["displacement"].shape == (10, 3)
    np.testing.assert_allclose(expr[0]["displacement"].numpy(), 1.0, atol=1e-5)
    frames = SpeechDataset(index, split, "train", window=1, with_audio=False, region=region)
    pairs = PairedFrameLoader(frames, expr, batch_size=5, seed=3)
    batches = list(pairs)
    assert len(batches) == -(-len(frames) // 5) and batches[0]["speech"].shape == (5, 10, 3)
    assert batches[0]["expression"].shape == (5, 10, 3) and batches[-1]["speech"].shape[0] == (len(frames) % 5 or 5)
    seen = torch.cat([b["speech"] for b in batches]).reshape(len(frames), -1)
    every = frames.displacements(np.arange(len(frames)))[:, 0].reshape(len(frames), -1)
    assert torch.allclose(torch.sort(seen.sum(1)).values, torch.sort(torch.from_numpy(every.sum(1))).values)
    again = next(iter(PairedFrameLoader(frames, expr, batch_size=5, seed=3)))
    assert torch.equal(again["speech"], batches[0]["speech"])  # (seed, epoch) fixes the order


def test_rig_topology_corpus_and_pickling(tmp_path):
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    rng = np.random.default_rng(4)
    weights = rng.uniform(0, 0.5, size=(6, rig.num_blendshapes)).astype(np.float32)
    verts = rig(weights)
    write_vocaset_raw(tmp_path, {("spk0", "sentence01"): verts}, {"spk0": rig.vertices},
                      {("spk0", "sentence01"): (np.zeros(SR // 5, np.float32), SR)}, fps=30)
    index = read_vocaset(tmp_path)
    assert index.num_vertices == rig.num_vertices
    ds = SpeechDataset(index, Split(["spk0"]), window=1, region=rig.mask("face_crop"))
    np.testing.assert_allclose(ds.displacements([2])[0, 0], rig.displacement(weights[2])[rig.mask("face_crop")], atol=1e-6)
    # Workers get the path, not a copy of the frames.
    assert len(pickle.dumps(index.sequences[0].source)) < 1000
    assert isinstance(pickle.loads(pickle.dumps(index.sequences[0].source)), NpyFile)


@pytest.mark.gpu
def test_paired_loader_on_cuda(tmp_path):
    templates, seqs, audio = _corpus(["spkA"], [1, 2])
    write_vocaset_raw(tmp_path, seqs, templates, audio)
    write_florence(tmp_path / "fl", "e1", "Afraid", np.ones((5, V, 3)), FACES, template=np.zeros((V, 3)))
    sp = SpeechDataset(read_vocaset(tmp_path), Split(["spkA"]), window=1, with_audio=False)
    ex = ExpressionDataset(read_florence(tmp_path / "fl"), Split(["e1"]))
    batch = next(iter(PairedFrameLoader(sp, ex, batch_size=4, device="cuda")))
    assert batch["speech"].is_cuda and batch["expression"].shape == (4, V, 3)
