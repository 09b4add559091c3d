"""Security: what the app serves and reads, where exports go, and what may be unpickled.

One app per module (launched as `python app.py` on a free port, offline). Requests go out raw
(http.client / httpx), not through gradio_client: the client uploads any local file it is handed,
so a server-side path "passed via the API" has to be sent as JSON to be tested at all.
"""

from __future__ import annotations

import ast
import http.client
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf

from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"  # a real audio file on the server: the app could animate it
SCANNED = ["blendtalk", "train", "eval", "tools", "app.py"]  # the code that ships (tests may build pickles on purpose)
RESTRICTED_UNPICKLERS = {"blendtalk/face/flame.py", "blendtalk/data/vocaset.py"}  # user-given FLAME / VOCASET files only
MAX_UPLOAD_BYTES = 20 * 2**20  # app.MAX_UPLOAD "20mb", as Gradio reads it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from eval.load_test import launch_app

    with launch_app(tmp_path_factory.mktemp("app"), "--size", "128") as app:
        yield app


def get_raw(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no normalisation of '..' or %-escapes) -> (status, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def call_animate(url: str, audio_path: str) -> str:
    """/animate through the HTTP API with `audio_path` as the file -> the server-sent events, as text."""
    data = [{"path": audio_path, "meta": {"_type": "gradio.FileData"}}, "", "", "happy", 0.8, "", 0.5, "", True, 128, True]
    post = httpx.post(f"{url}gradio_api/call/animate", json={"data": data}, timeout=30)
    post.raise_for_status()
    return httpx.get(f"{url}gradio_api/call/animate/{post.json()['event_id']}", timeout=300).text


# ---------------------------------------------------------------------------------------------
# The running app


@pytest.mark.slow
def test_the_app_serves_no_other_files(server):
    from app import plotly_js_path

    work, log = server.workdir, server.workdir.parent / "server.log"
    plotly = plotly_js_path()
    forbidden = [
        "/file=/etc/passwd", "/gradio_api/file=/etc/passwd", "/gradio_api/file=%2Fetc%2Fpasswd",
        "/gradio_api/file=../../../../../etc/passwd", "/gradio_api/file=//etc/passwd", "/gradio_api/file=~/.bashrc",
        "/gradio_api/file=file:///etc/passwd", "/gradio_api/file=/proc/self/environ",
        "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/../../../../etc/passwd",
        "/assets/../../../../etc/passwd", "/gradio_api/file=app.py", f"/gradio_api/file={ROOT / 'app.py'}",
        f"/gradio_api/file={log}", f"/gradio_api/file={work / 'gradio'}/../../server.log",
        f"/gradio_api/file={work / 'gradio'}/%2e%2e/%2e%2e/server.log", f"/gradio_api/file={work / 'requests'}",
        f"/gradio_api/file={plotly.parent}/../../../../../../etc/passwd",  # next to plotly.js
        "/gradio_api/proxy=http://127.0.0.1:1/", "/gradio_api/proxy=http://169.254.169.254/latest/meta-data/",
    ]
    for path in forbidden:
        status, body = get_raw(server.url, path)
        assert status in (400, 403, 404), (path, status, body[:200])
        assert b"root:" not in body, path
    status, body = get_raw(server.url, f"/gradio_api/file={plotly}")  # served at its own route, not by its path
    assert status == 403, status
    status, body = get_raw(server.url, "/blendtalk/plotly.min.js")
    assert status == 200 and b"plotly.js" in body[:200]


@pytest.mark.slow
def test_the_api_reads_only_uploaded_files(server):
    outside = [str(WAV), str(server.workdir.parent / "server.log"), f"{server.workdir / 'gradio'}/../../server.log",
               "/etc/hostname"]
    for path in outside:
        events = call_animate(server.url, path)
        assert "event: error" in events and "event: complete" not in events, (path, events[:300])
    # The same audio, uploaded, is animated: the refusals above were about where the file is.
    with open(WAV, "rb") as f:
        upload = httpx.post(f"{server.url}gradio_api/upload", files={"files": (WAV.name, f, "audio/wav")}, timeout=30)
    upload.raise_for_status()
    events = call_animate(server.url, upload.json()[0])
    assert "event: complete" in events and "blendtalk_happy.mp4" in events, events[:300]


@pytest.mark.slow
def test_uploads_are_size_limited_by_the_server(server):
    big = np.zeros(MAX_UPLOAD_BYTES + 4096, np.uint8).tobytes()
    response = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.wav", big, "audio/wav")}, timeout=60)
    assert response.status_code == 413, (response.status_code, response.text[:200])
    small = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("small.wav", b"RIFF" + bytes(100), "audio/wav")},
                       timeout=30)
    assert small.status_code == 200
    assert httpx.get(server.url, timeout=10).status_code == 200  # still serving


# ---------------------------------------------------------------------------------------------
# In-process checks


def test_check_request_refuses_links_and_dot_dot_out_of_the_upload_folder(tmp_path):
    import app

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    outside = tmp_path / "outside.wav"
    sf.write(str(outside), np.zeros(SAMPLE_RATE, np.float32) + 0.1, SAMPLE_RATE)
    (uploads / "link.wav").symlink_to(outside)
    args = dict(text="", transcript="", emotion="happy", intensity=0.8, mix_with="", mix_ratio=0.5, timeline="",
                blinks=True, size=128, allowed_dirs=[uploads])
    for path in (uploads / "link.wav", f"{uploads}/../outside.wav"):
        with pytest.raises(ValueError, match="uploaded or recorded"):
            app.check_request(audio=str(path), **args)
    with pytest.raises(ValueError, match="unknown emotion"):  # the emotion names the export files
        app.check_request(audio=None, **{**args, "text": "hello", "emotion": "happy/../../x"})


def test_export_names_cannot_leave_the_folder(tmp_path):
    from blendtalk.animation import Animation
    from blendtalk.render.exports import export_all

    anim = Animation(np.zeros((2, 3, 3), np.float32), np.array([[0, 1, 2]]), np.zeros(SAMPLE_RATE // 15, np.float32))
    out = tmp_path / "out"
    for stem in ("../evil", "/tmp/evil", "a/b", "..", ".hidden", "a.b", "a\\b", "a\x00b", "", "x" * 65):
        with pytest.raises(ValueError, match="stem"):
            export_all(anim, out, formats=("npy",), stem=stem)
    assert list(tmp_path.iterdir()) == []  # refused before anything was created
    # A link planted where an export goes is never written through: refused (or replaced by the file).
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    (out / "animation.npy").symlink_to(victim)
    try:
        export_all(anim, out, formats=("npy",))
    except ValueError as err:
        assert "would leave" in str(err)
    else:
        assert not (out / "animation.npy").is_symlink() and np.load(out / "animation.npy").shape == (2, 3, 3)
    assert victim.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# Deserialisation: the shipped code


def python_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def dotted(node: ast.AST) -> str:
    """'torch.load' for the call target torch.load, '' for anything not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


def keyword(call: ast.Call, name: str):
    """The constant value of keyword `name` in `call`; None when absent, '?' when not a constant."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "?"
    return None


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, dotted(node.func)


def test_torch_load_only_with_weights_only():
    found, bad = [], []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):  # `from torch import load` would hide the calls from the check below
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                bad.append(f"{rel}:{node.lineno} imports torch.load by name")
        for call, name in calls(tree):
            if name == "torch.load":
                found.append(f"{rel}:{call.lineno}")
                if keyword(call, "weights_only") is not True:
                    bad.append(f"{rel}:{call.lineno} torch.load without weights_only=True")
    assert not bad, bad
    assert "blendtalk/training/loop.py" in {f.split(":")[0] for f in found}, found  # the resume of both training loops: the check has something to check


UNSAFE_LOADERS = {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "dill.loads", "joblib.load",
                  "cloudpickle.load", "cloudpickle.loads", "pd.read_pickle", "pandas.read_pickle", "shelve.open",
                  "marshal.load", "marshal.loads", "jsonpickle.decode"}


def test_no_unpickling_outside_the_restricted_readers():
    bad, unpicklers = [], []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT).as_posix()
        for call, name in calls(tree):
            if name in UNSAFE_LOADERS:
                bad.append(f"{rel}:{call.lineno} {name}")
            if name in ("np.load", "numpy.load") and keyword(call, "allow_pickle") not in (None, False):
                bad.append(f"{rel}:{call.lineno} {name} with allow_pickle")
            if name == "yaml.load" and keyword(call, "Loader") is None:
                bad.append(f"{rel}:{call.lineno} yaml.load without a safe Loader")
            if name == "pickle.Unpickler":
                bad.append(f"{rel}:{call.lineno} an unrestricted pickle.Unpickler")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(dotted(b) == "pickle.Unpickler" for b in node.bases):
                unpicklers.append(rel)
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                if rel not in RESTRICTED_UNPICKLERS or "find_class" not in methods:
                    bad.append(f"{rel}:{node.lineno} unpickler {node.name} (allowed only in {sorted(RESTRICTED_UNPICKLERS)},"
                               " restricted by find_class)")
    assert not bad, bad
    assert set(unpicklers) == RESTRICTED_UNPICKLERS, unpicklers  # both restricted readers are still seen by the scan
