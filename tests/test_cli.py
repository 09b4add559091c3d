import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blendtalk.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_info_json_and_picture(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BLENDTALK_CACHE", str(tmp_path / "cache"))
    picture = tmp_path / "rig.png"
    assert main(["info", "--map-size", "64", "--picture", str(picture)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vertices"] == 4278 and info["triangles"] == 8508 and len(info["blendshapes"]) == 52
    assert info["map_size"] == 64 and info["map_coverage"] >= 0.6 and info["map_symmetry_error"] < 1e-9
    assert info["regions"]["lips"] > 0 and info["lip_pairs"] >= 5
    import imageio.v3 as iio

    img = iio.imread(picture)
    assert img.shape[0] == 256 and img.shape[1] == 256 * 5  # the map beside four rendered poses
    assert img.std() > 10


def test_info_bad_map_size(capsys):
    assert main(["info", "--map-size", "3"]) == 2
    assert "blendtalk: error:" in capsys.readouterr().err


def test_rig_loads_without_network(monkeypatch):
    """The embedded default needs nothing from the network: every socket connection fails here."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from blendtalk.face.rig import load_rig

    rig = load_rig()
    assert np.isfinite(rig.vertices).all()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9))


def test_ctrl_c_while_importing_is_one_line_and_exit_130(monkeypatch, capsys):
    """An interrupt that lands while torch and numpy are still importing (the CLI's first second)
    ends like any other interrupt: one line and exit status 130, no traceback."""
    import builtins
    import runpy

    real_import = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "cli" and level == 1:
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("blendtalk", run_name="__main__")
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip() == "blendtalk: interrupted; no partial files were left"


def test_ctrl_c_during_an_import_is_raised_once_the_import_is_done():
    """A Ctrl-C (SIGINT, or SIGTERM) inside `held_interrupt` does not interrupt the block, where torch's
    compiled import could abort the process on it; it is raised as KeyboardInterrupt when the block
    ends, and the earlier handlers are back."""
    import signal

    from blendtalk.interrupt import held_interrupt

    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupt():
            signal.raise_signal(signal.SIGINT)
            done.append("the rest of the import")
    assert done == ["the rest of the import"] and signal.getsignal(signal.SIGINT) is before
    with held_interrupt():  # nothing noted: nothing raised
        pass


def test_the_request_needs_no_torch_and_a_shipped_checkpoint_no_hub_client():
    """`animate` checks its input and starts recognising the phones before torch imports (about a
    second on two cores), and resolving the shipped checkpoints imports no Hub client. In a new process."""
    code = ("import sys\n"
            "from blendtalk.cli import build_parser\n"
            "from blendtalk.request import AnimationRequest\n"
            "from blendtalk.constants import ASSETS_DIR\n"
            "request = AnimationRequest.create(str(ASSETS_DIR / 'audio' / 'arctic_a0009.wav'), emotion='happy', timeline='sad@0 happy@1')\n"
            "assert request.audio is not None\n"
            "print('torch' in sys.modules)\n"
            "from blendtalk.hub import resolve_checkpoint\n"
            "assert resolve_checkpoint('dfm').path.is_dir()\n"
            "print('huggingface_hub' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("BLENDTALK_DFM", "BLENDTALK_SPEECH")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("command, files", [
    ("blender-addon", {"blendtalk_blender.py": "blendtalk/clients/blender.py", "blendtalk_face.glb": "assets/live/face_arkit.glb"}),
    ("unity-client", {"BlendtalkLive.cs": "blendtalk/clients/unity/BlendtalkLive.cs"}),
])
def test_cli_writes_a_clients_files(tmp_path, command, files):
    run = [sys.executable, "-m", "blendtalk", command]
    done = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name, source in files.items():
        assert (tmp_path / name).read_bytes() == (ROOT / source).read_bytes()
    again = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True)  # nothing replaced unasked
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    missing = subprocess.run([*run, str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not an existing folder" in missing.stderr


def test_a_long_clip_is_recognised_on_every_core(monkeypatch):
    """While torch imports: a short clip leaves the CLI's process a core, a long one takes them all (up to 8)."""
    from blendtalk.cli import LONG_CLIP_SECONDS, recognition_workers
    from blendtalk.constants import SAMPLE_RATE

    long = int(LONG_CLIP_SECONDS * SAMPLE_RATE)
    for cores, short_workers, long_workers in ((1, 0, 1), (2, 1, 2), (16, 8, 8)):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        assert (recognition_workers(long - 1), recognition_workers(long)) == (short_workers, long_workers)
