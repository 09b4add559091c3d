"""Checkpoint resolution: local folders, a fake Hub server (real downloads), a hand-built offline cache, fallbacks.

No network: the Hub is a small HTTP server in a thread serving the routes snapshot_download uses
(huggingface_hub 2.4: GET /api/models/{repo}/revision/{rev}, GET /api/models/{repo}/tree/{sha},
HEAD and GET /{repo}/resolve/{sha}/{file}). HF_HOME points into tmp_path.
"""

import hashlib
import json
import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from huggingface_hub import constants as hf_constants

from blendtalk.hub import (CheckpointError, CheckpointNotFoundError, parse_repo_id, resolve_checkpoint,
                           validate_checkpoint)
from blendtalk.models.audio_encoders import AudioEncoderConfig
from blendtalk.models.dfm import DeformationFusionModule, DFMConfig
from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig

V = 10


def tiny_dfm(folder: Path, seed: int = 0) -> DeformationFusionModule:
    torch.manual_seed(seed)
    model = DeformationFusionModule(DFMConfig(num_vertices=V, num_blendshapes=2, use_geometric_map=False, mlp_hidden=(8,)))
    model.save_pretrained(folder)
    return model


def tiny_speech(folder: Path) -> FaceFormer:
    torch.manual_seed(0)
    config = FaceFormerConfig(num_vertices=V, feature_dim=8, num_heads=2, num_speakers=2,
                              encoder=AudioEncoderConfig(hidden_dim=8, conv_layers=1))
    model = FaceFormer(config)
    model.save_pretrained(folder)
    return model


def same_output(a: DeformationFusionModule, b: DeformationFusionModule) -> bool:
    d_s, d_e = torch.randn(3, V, 3) * 1e-2, torch.randn(3, V, 3) * 1e-2
    return torch.equal(a.eval().fuse(d_s, d_e), b.eval().fuse(d_s, d_e))


class FakeHub:
    """Model repos {repo_id: {"sha": commit, "refs": {name: sha}, "files": {path: bytes}}} served over HTTP."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub.handle(self, body=False)

            def do_GET(self):
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, repo_id: str, folder: Path, tag: str | None = None, extra: dict[str, bytes] | None = None) -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        files |= extra or {}
        sha = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()).hexdigest()
        refs = {"main": sha} | ({tag: sha} if tag else {})
        self.repos[repo_id] = {"sha": sha, "refs": refs, "files": files}
        return sha

    def close(self):
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()

    def handle(self, req: BaseHTTPRequestHandler, body: bool):
        path = urlsplit(req.path).path
        self.requests.append(f"{req.command} {path}")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, route, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo, sha = self._lookup(req, repo_id, rev)
            if repo is None:
                return
            if route == "revision":
                payload = {"id": repo_id, "sha": sha, "siblings": [{"rfilename": f} for f in repo["files"]]}
            else:
                payload = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                           for f, b in repo["files"].items()]
            return self._send(req, 200, json.dumps(payload).encode(), body, {"Content-Type": "application/json"})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, sha = self._lookup(req, f"{parts[0]}/{parts[1]}", parts[3])
            if repo is None:
                return
            name = "/".join(parts[4:])
            if name not in repo["files"]:
                return self._send(req, 404, b"", body, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            data = repo["files"][name]
            return self._send(req, 200, data, body, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
        self._send(req, 404, b"", body, {})

    def _lookup(self, req, repo_id: str, rev: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(req, 404, b"", True, {"X-Error-Code": "RepoNotFound"})
            return None, None
        sha = repo["refs"].get(rev, rev if rev == repo["sha"] else None)
        if sha is None:
            self._send(req, 404, b"", True, {"X-Error-Code": "RevisionNotFound"})
            return None, None
        return repo, sha

    @staticmethod
    def _send(req, status: int, data: bytes, body: bool, headers: dict):
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """Fresh HF_HOME in tmp_path, online, no env sources; huggingface_hub's import-time offline flag cleared."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN",
                "BLENDTALK_DFM", "BLENDTALK_SPEECH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf_home"


@pytest.fixture
def hub(hf_env, monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    yield server
    server.close()


@pytest.fixture
def shipped(tmp_path):
    folder = tmp_path / "assets" / "dfm"
    tiny_dfm(folder, seed=1)
    return folder


# ---- repo ids and folder validation ----

def test_parse_repo_id():
    assert parse_repo_id("org/name") == ("org/name", None)
    assert parse_repo_id(" org/my-model.v2@v1 ") == ("org/my-model.v2", "v1")
    assert parse_repo_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for bad in ("name", "a/b/c", "org/na..me", "org/-x", "org/name@", "org/name@a@b", "org/name@has space", ""):
        with pytest.raises(CheckpointError, match="repo id|revision"):
            parse_repo_id(bad)


def test_validate_checkpoint_kinds(tmp_path):
    tiny_dfm(tmp_path / "dfm")
    tiny_speech(tmp_path / "speech")
    assert validate_checkpoint(tmp_path / "dfm").name == "dfm"
    assert validate_checkpoint(tmp_path / "speech", "speech").name == "speech"
    with pytest.raises(CheckpointError, match="not a speech"):
        validate_checkpoint(tmp_path / "dfm", "speech")
    with pytest.raises(ValueError, match="kind must be one of"):
        validate_checkpoint(tmp_path / "dfm", "face")


def test_validate_refuses_pickle_and_broken_files(tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_dfm(ckpt)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(ckpt / "config.json", pickled / "config.json")
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights .*pytorch_model.bin"):
        validate_checkpoint(pickled, "dfm")

    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:200])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        validate_checkpoint(ckpt, "dfm")
    tiny_dfm(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        validate_checkpoint(ckpt, "dfm")
    (ckpt / "config.json").write_text(json.dumps({"model_type": "blendtalk-dfm", "num_blendshapes": 2}))
    with pytest.raises(CheckpointError, match="num_vertices"):
        validate_checkpoint(ckpt, "dfm")
    (ckpt / "config.json").write_text(json.dumps({"num_vertices": V, "colour": "red"}))
    with pytest.raises(CheckpointError, match="unknown fields"):
        validate_checkpoint(ckpt, "dfm")


# ---- local sources and the shipped default ----

def test_default_is_shipped_and_missing_shipped_is_clear(hf_env, shipped, tmp_path):
    got = resolve_checkpoint("dfm", shipped=shipped)
    assert (got.source, got.fell_back, got.path) == ("shipped", False, shipped)
    assert "BLENDTALK_DFM is not set" in got.message
    with pytest.raises(CheckpointNotFoundError, match=r"none is shipped at .*nowhere.*train/train_faceformer.py.*BLENDTALK_SPEECH"):
        resolve_checkpoint("speech", shipped=tmp_path / "nowhere")


def test_local_folder_from_argument_env_and_run_folder(hf_env, shipped, tmp_path, monkeypatch):
    model = tiny_dfm(tmp_path / "run" / "best")
    (tmp_path / "run" / "train_config.json").write_text("{}")
    got = resolve_checkpoint("dfm", str(tmp_path / "run"), shipped=shipped)
    assert (got.source, got.path, got.fell_back) == ("local", tmp_path / "run" / "best", False)
    assert "from argument" in got.message
    assert same_output(model, DeformationFusionModule.from_pretrained(got.path))

    monkeypatch.setenv("BLENDTALK_DFM", str(tmp_path / "run" / "best"))
    got = resolve_checkpoint("dfm", shipped=shipped)
    assert got.source == "local" and "from BLENDTALK_DFM" in got.message


def test_bad_local_sources_raise_not_fall_back(hf_env, shipped, tmp_path, monkeypatch):
    with pytest.raises(CheckpointNotFoundError, match="is not a folder"):
        resolve_checkpoint("dfm", str(tmp_path / "missing" / "ckpt"), shipped=shipped)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({}, pickled / "model.pt")
    with pytest.raises(CheckpointError, match="only pickle"):
        resolve_checkpoint("dfm", str(pickled), shipped=shipped)
    monkeypatch.setenv("BLENDTALK_DFM", "org/na..me")
    with pytest.raises(CheckpointError, match="not a valid Hub repo id"):
        resolve_checkpoint("dfm", shipped=shipped)


# ---- the Hub ----

def test_hub_download_loads_strictly_and_skips_pickle(hub, shipped, tmp_path, hf_env):
    model = tiny_dfm(tmp_path / "src", seed=3)
    sha = hub.add("org/dfm", tmp_path / "src", tag="v1", extra={"pytorch_model.bin": b"pickle", "mapping/arkit.json": b"{}"})
    got = resolve_checkpoint("dfm", "org/dfm@v1", shipped=shipped)
    assert (got.source, got.fell_back, got.revision) == ("hub", False, sha)
    assert got.path.is_relative_to(hf_env) and got.path.name == sha
    assert "org/dfm@v1" in got.message and "from argument" in got.message
    assert (got.path / "mapping" / "arkit.json").is_file() and not (got.path / "pytorch_model.bin").exists()
    assert not any("pytorch_model.bin" in r for r in hub.requests)
    assert same_output(model, DeformationFusionModule.from_pretrained(got.path))


def test_hub_speech_checkpoint_from_env(hub, tmp_path, monkeypatch):
    model = tiny_speech(tmp_path / "src")
    hub.add("org/speech", tmp_path / "src")
    monkeypatch.setenv("BLENDTALK_SPEECH", "org/speech")
    got = resolve_checkpoint("speech", shipped=tmp_path / "none")
    assert got.source == "hub" and "from BLENDTALK_SPEECH" in got.message
    loaded = FaceFormer.from_pretrained(got.path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_hub_404_falls_back_with_one_warning(hub, shipped, caplog):
    with caplog.at_level(logging.INFO, logger="blendtalk.hub"):
        got = resolve_checkpoint("dfm", "org/missing", shipped=shipped)
    assert (got.source, got.fell_back, got.path, got.requested) == ("shipped", True, shipped, "org/missing")
    assert "org/missing" in got.message and "not found" in got.message and "\n" not in got.message
    records = [r for r in caplog.records if r.name == "blendtalk.hub"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and records[0].getMessage() == got.message
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint("dfm", "org/missing", shipped=shipped, fallback=False)


def test_hub_revision_not_found_falls_back(hub, shipped, tmp_path):
    tiny_dfm(tmp_path / "src")
    hub.add("org/dfm", tmp_path / "src")
    got = resolve_checkpoint("dfm", "org/dfm@v9", shipped=shipped)
    assert got.fell_back and "revision not found" in got.message


@pytest.mark.parametrize("corrupt, expected", [
    ("model.safetensors", "not a readable safetensors"),
    ("config.json", "not valid JSON"),
])
def test_hub_corrupt_file_falls_back(hub, shipped, tmp_path, corrupt, expected):
    tiny_dfm(tmp_path / "src")
    (tmp_path / "src" / corrupt).write_bytes(b"\x00garbage")
    hub.add("org/broken", tmp_path / "src")
    got = resolve_checkpoint("dfm", "org/broken", shipped=shipped)
    assert got.fell_back and got.path == shipped and expected in got.message


def test_damaged_cache_is_downloaded_again(hub, shipped, tmp_path):
    model = tiny_dfm(tmp_path / "src", seed=6)
    hub.add("org/dfm", tmp_path / "src")
    first = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    weights = (first.path / "model.safetensors").resolve()  # the cache blob behind the snapshot symlink
    weights.write_bytes(weights.read_bytes()[:100])
    got = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    assert (got.source, got.fell_back) == ("hub", False)
    assert same_output(model, DeformationFusionModule.from_pretrained(got.path))


def test_hub_pickle_only_repo_falls_back(hub, shipped, tmp_path):
    src = tmp_path / "src"
    tiny_dfm(src)
    (src / "model.safetensors").unlink()
    hub.add("org/pickled", src, extra={"pytorch_model.bin": b"pickle"})
    got = resolve_checkpoint("dfm", "org/pickled", shipped=shipped)
    assert got.fell_back and "no model.safetensors" in got.message


def test_unreachable_hub_falls_back(hf_env, shipped, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    got = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    assert got.fell_back and "unreachable" in got.message


def test_offline_uses_the_cache_a_download_left(hub, shipped, tmp_path, monkeypatch):
    model = tiny_dfm(tmp_path / "src", seed=4)
    hub.add("org/dfm", tmp_path / "src")
    online = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    hub.close()  # the server is gone: only the cache can answer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = resolve_checkpoint("dfm", "org/dfm", shipped=shipped)
    assert (got.source, got.path, got.fell_back) == ("hub", online.path, False) and "offline" in got.message
    assert same_output(model, DeformationFusionModule.from_pretrained(got.path))

    got = resolve_checkpoint("dfm", "org/never-downloaded", shipped=shipped)
    assert got.fell_back and "offline (HF_HUB_OFFLINE) and not in the Hugging Face cache" in got.message


def test_offline_hand_built_cache(hf_env, shipped, tmp_path, monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_env / "hub" / "models--org--cached"
    model = tiny_dfm(repo / "snapshots" / sha, seed=5)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = resolve_checkpoint("dfm", "org/cached", shipped=shipped)
    assert (got.source, got.revision, got.path) == ("hub", sha, repo / "snapshots" / sha)
    assert same_output(model, DeformationFusionModule.from_pretrained(got.path))
    got = resolve_checkpoint("dfm", f"org/cached@{sha}", shipped=shipped)  # a commit sha needs no refs/
    assert got.source == "hub"
