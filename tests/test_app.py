"""The Gradio app end to end: launched as `python app.py` on a free port, driven with gradio_client.

The server runs with 128 px video and a short cache age so that the suite stays fast and the
clean-up can be watched. Input checks are also tested in-process (no server).
"""

from __future__ import annotations

import contextlib
import html as html_module
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

import app  # the repo root's app.py (pytest.ini puts the root on the path)
from blendtalk.constants import ASSETS_DIR, SAMPLE_RATE
from eval.load_test import launch_app as running_app

ROOT = Path(__file__).resolve().parents[1]

WAV = ASSETS_DIR / "audio" / "arctic_a0009.wav"
# s, the test server's Gradio cache age: an upload must outlive its queue wait, and a result its download by
# the client (at load 13, with 8 s, the last download of 8 concurrent requests found its file deleted: 403).
CACHE_AGE_S = 20
STARTUP_S = 180  # s the server may take to load the pipeline on a busy machine


@contextlib.contextmanager
def launch_app(workdir: Path, *extra: str):
    """Run `python app.py` on a free port with its work folder in `workdir` (`eval.load_test.launch_app`,
    small videos and a short cache age); yield (url, the app's work folder). The per-client limits
    are off (every client of the tests is 127.0.0.1); `extra` may set them."""
    with running_app(workdir, "--size", "128", "--delete-cache", "1", str(CACHE_AGE_S), *extra, startup_s=STARTUP_S) as running:
        yield running.url, running.workdir


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launch_app(tmp_path_factory.mktemp("app")) as running:
        yield running


@pytest.fixture
def client(server, tmp_path):
    from gradio_client import Client

    return Client(server[0], verbose=False, download_files=str(tmp_path / "downloads"))


def animate(client, audio=None, text="", transcript="", emotion="happy", intensity=0.8, mix_with="", mix_ratio=0.5,
            timeline="", blinks=True, size=128):
    from gradio_client import handle_file

    audio = handle_file(str(audio)) if audio is not None else None
    return client.predict(audio, text, transcript, emotion, intensity, mix_with, mix_ratio, timeline, blinks, size,
                          api_name="/animate")


def clip(path: Path, seconds: float, start: float = 0.0) -> Path:
    audio, sr = sf.read(str(WAV), dtype="float32")
    sf.write(str(path), audio[int(start * sr): int((start + seconds) * sr)], sr)
    return path


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_animate_endpoint(client):
    from blendtalk.render.video import probe

    video, html, curves, files, status = animate(client, WAV, transcript=(ASSETS_DIR / "audio" / "arctic_a0009.txt").read_text())
    info = probe(video)
    seconds = sf.info(str(WAV)).duration
    assert info["video"]["width"] == 128 and info["video"]["codec"] == "h264"
    assert info["audio"] is not None and info["audio"]["codec"] == "aac"
    assert abs(info["audio"]["duration"] - seconds) < 0.05 and abs(info["video"]["duration"] - seconds) < 0.1
    # The animated mesh: an iframe whose figure has frames and loads plotly.js from this app.
    assert html.startswith("<iframe") and app.PLOTLY_ROUTE in html
    names = re.search(r"const names = (\[[^\]]*\])", html_module.unescape(html))  # the frames, rebuilt in the browser
    assert names and len(json.loads(names.group(1))) >= 60 and "addFrames" in html
    assert curves["type"] == "plotly" and '"speech"' in curves["plot"]
    suffixes = sorted(Path(f).name.split("blendtalk_happy")[1] for f in files)
    assert suffixes == [".glb", ".mp4", ".npy", "_arkit.csv", "_arkit.json", "_obj.zip", "_rig.glb"]
    # The rig with its ARKit morph targets, played by the curves: a few MB (the per-frame .glb grows with the clip).
    assert Path(files[-1]).read_bytes()[:4] == b"glTF" and Path(files[-1]).stat().st_size < 6e6
    vertices = np.load(next(f for f in files if f.endswith(".npy")))
    assert vertices.shape == (93, 4278, 3) and np.isfinite(vertices).all()
    assert "happy x0.8" in status and "flame" not in status.lower()  # FLAME is not this rig's: nothing to say


@pytest.mark.slow
def test_typed_text_mix_and_timeline(client):
    from blendtalk.render.video import probe

    video, _, _, files, status = animate(client, text="Hello there, nice to meet you.", emotion="sad", mix_with="angry",
                                         mix_ratio=0.3, blinks=False)
    assert probe(video)["audio"] is not None and "sad + angry (0.3)" in status
    _, _, _, _, status = animate(client, text="One two three four.", timeline="neutral@0 happy@0.5:0.9")
    assert "timeline 'neutral@0 happy@0.5:0.9'" in status


@pytest.mark.slow
def test_bad_inputs_give_clear_errors_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client.exceptions import AppError

    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    long = tmp_path / "long.wav"
    sf.write(str(long), np.random.default_rng(0).uniform(-0.3, 0.3, 61 * SAMPLE_RATE).astype(np.float32), SAMPLE_RATE,
             subtype="PCM_16")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(300))
    wrong = tmp_path / "notes.txt"
    wrong.write_text("not audio")
    cases = [
        (dict(), "no speech"),
        (dict(audio=silent), "silent"),
        (dict(audio=long), "at most 60 s"),
        (dict(audio=corrupt), "Could not read corrupt.wav"),
        (dict(audio=wrong), "Unsupported audio format"),
        (dict(audio=WAV, text="both"), "not both"),
        (dict(text="word " * 200), "limit is 600"),
        (dict(text="hi", timeline="happy@x"), "bad number in timeline"),
        (dict(text="hi", timeline="happy@2 sad@1"), "times must increase"),
        (dict(text="hi", emotion="joyful"), "joyful"),
        (dict(text="hi", mix_with="bored"), "bored"),
        (dict(text="hi", intensity=3.0), "greater than maximum value 1.5"),
        (dict(text="hi", size=999), "999"),
    ]
    for kwargs, message in cases:
        with pytest.raises(AppError, match=message):
            animate(client, **kwargs)
    # A path on the server that was not uploaded is refused by Gradio before the app sees it.
    with pytest.raises(Exception):
        client.predict({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "", "", "happy", 0.8, "", 0.5,
                       "", True, 128, api_name="/animate")
    video, *_ = animate(client, clip(tmp_path / "ok.wav", 1.0))
    assert Path(video).stat().st_size > 1000


@pytest.mark.slow
def test_upload_size_limit(server, client, tmp_path):
    big = tmp_path / "big.wav"
    sf.write(str(big), np.random.default_rng(1).uniform(-0.3, 0.3, (120 * 48_000, 2)).astype(np.float32), 48_000,
             subtype="PCM_16")  # 23 MB, over the 20 MB limit
    with pytest.raises(Exception, match="(?i)size|large|413"):
        animate(client, big)
    assert httpx.get(server[0], timeout=10).status_code == 200


@pytest.mark.slow
def test_concurrent_requests_are_queued_and_leave_no_files(server, client, tmp_path):
    from blendtalk.render.video import probe

    url, workdir = server
    emotions = ["happy", "sad", "angry", "surprised", "fearful", "disgusted", "contempt", "neutral"]
    # Typed text, not uploads: with the short cache age an upload could expire while it waits in the queue.
    t0 = time.perf_counter()
    jobs = [client.submit(None, "Nice to see you.", "", e, 0.8, "", 0.5, "", True, 128, api_name="/animate")
            for e in emotions]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: job.result(timeout=300), jobs))
    print(f"\n8 concurrent requests: {time.perf_counter() - t0:.1f} s")
    for emotion, (video, html, curves, files, status) in zip(emotions, results):
        assert probe(video)["audio"] is not None and f"{emotion} x0.8" in status and len(files) == 7
    # Request folders are deleted once Gradio has copied the results...
    assert list((workdir / "requests").iterdir()) == []
    # ...and Gradio's copies (uploads and results) go after CACHE_AGE_S.
    cache = workdir / "gradio"
    assert len(files_under(cache)) >= 8
    end = time.monotonic() + CACHE_AGE_S + 20
    while files_under(cache) and time.monotonic() < end:
        time.sleep(1)
    # The examples' audio stays for as long as the app runs (test_the_cache_sweep_keeps_the_examples_audio).
    left = [p for p in files_under(cache) if "example" not in str(p) and p.name not in ("tts_surprised.wav", "tts_sad.wav",
                                                                                        "arctic_a0009.wav")]
    assert left == [], left


# ---------------------------------------------------------------------------------------------
# in-process checks


def test_check_request_validates_before_any_work(tmp_path):
    ok = dict(audio=None, text="hello", transcript="", emotion="happy", intensity=0.8, mix_with="", mix_ratio=0.5,
              timeline="", blinks=True, size=128, allowed_dirs=[tmp_path])
    req = app.check_request(**ok)
    assert req.text == "hello" and req.audio is None and req.expression.mix_with is None
    outside = tmp_path.parent / "elsewhere.wav"
    clip(outside, 1.0)
    with pytest.raises(ValueError, match="uploaded or recorded"):
        app.check_request(**{**ok, "text": "", "audio": str(outside)})
    inside = clip(tmp_path / "in.wav", 1.0)
    req = app.check_request(**{**ok, "text": "", "audio": str(inside)})
    assert req.audio.dtype == np.float32 and len(req.audio) == SAMPLE_RATE
    for bad, message in [({"intensity": "1"}, "intensity must be a finite number"), ({"blinks": "yes"}, "true or false"),
                         ({"transcript": "x" * 1001}, "transcript"), ({"mix_with": "sad", "mix_ratio": 1.5}, "mix ratio"),
                         ({"head_motion": "false"}, "head_motion must be true or false"),
                         ({"size": "257"}, "video size"), ({"size": "big"}, "video size"), ({"size": True}, "video size")]:
        with pytest.raises(ValueError, match=message):
            app.check_request(**{**ok, **bad})
    # "auto": the sharpest size the budget allows for this speech (1 s: 512 px; 20 s: 384 px at 60 units).
    assert app.check_request(**{**ok, "text": "", "audio": str(inside), "size": "auto"}).size == 512
    assert app.check_request(**{**ok, "text": "", "audio": str(inside), "size": "auto", "max_cost": 1.0}).size == 256
    speech, sr = sf.read(str(WAV), dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(str(long), np.tile(speech, 7)[: 20 * sr], sr)
    assert app.check_request(**{**ok, "text": "", "audio": str(long), "size": "auto"}).size == 384
    # The size as the API documents it (the dropdown's text) or as a number.
    assert app.check_request(**{**ok, "size": "256"}).size == app.check_request(**{**ok, "size": 256}).size == 256


def test_workspace_sweeps_old_request_folders(tmp_path):
    space = app.Workspace(tmp_path / "work", keep_s=60)
    old, new = space.new_request(), space.new_request()
    (old / "video.mp4").write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    space.prune()
    assert not old.exists() and new.exists()


def test_the_cache_sweep_keeps_the_examples_audio():
    """Gradio copies the examples' audio into its cache at start-up; a sweep of everything old (age 0)
    must leave those copies, or every example click fails with "Audio file not found"."""
    import gradio as gr

    with gr.Blocks() as demo:
        inputs = [gr.Audio(type="filepath"), gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Number()]
        shown = app.examples(inputs, [gr.Textbox()], lambda *values: "done")
    copies = [v["path"] for sample in shown.non_none_processed_examples.values() for v in sample if isinstance(v, dict)]
    assert len(copies) == 3 and all(Path(p).is_file() for p in copies)
    for temp in demo.temp_file_sets:  # as if each copy were older than any age
        temp.update(copies)
    app.clear_gradio_cache(demo, 0)
    assert all(Path(p).is_file() for p in copies)


def test_head_motion_defaults_on_and_reaches_the_pipeline(tmp_path):
    ok = dict(audio=None, text="hello", transcript="", emotion="happy", intensity=0.8, mix_with="", mix_ratio=0.5,
              timeline="", blinks=True, size=128, allowed_dirs=[tmp_path])
    assert app.check_request(**ok).head_motion is True
    assert app.check_request(**ok, head_motion=False).head_motion is False

def test_messages_and_models_panel_show_no_server_paths(tmp_path):
    """A refused upload is named by its file name, and the models panel by checkpoint names: the
    server's folders never reach the page."""
    ok = dict(audio=None, text="", transcript="", emotion="happy", intensity=1.0, mix_with="", mix_ratio=0.5,
              timeline="", blinks=True, size=128, allowed_dirs=[tmp_path])
    empty = tmp_path / "upload" / "my take.wav"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    not_audio = tmp_path / "upload" / "notes.txt"
    not_audio.write_text("hello")
    for upload in (empty, not_audio):
        with pytest.raises(ValueError) as err:
            app.check_request(**{**ok, "audio": str(upload)})
        assert str(tmp_path) not in str(err.value) and (upload.name in str(err.value) or ".txt" in str(err.value))
    lines = app.public_lines([f"dfm checkpoint: shipped {tmp_path / 'assets' / 'dfm'} (no source given)",
                              "speech checkpoint: Hub org/name@v1 (commit 0123456789ab, from the argument)"])
    assert lines == ["dfm checkpoint: shipped dfm (no source given)",
                     "speech checkpoint: Hub org/name@v1 (commit 0123456789ab, from the argument)"]


@pytest.mark.slow
def test_the_first_call_users_try_needs_only_the_speech(client):
    """`Client(url).predict(handle_file("speech.wav"), api_name="/animate")`, as the Gradio docs show
    it, and the same with only text: every other input has its default (happy at the apex, 1.0)."""
    from gradio_client import handle_file

    video, *_, status = client.predict(handle_file(str(clip(Path(client.output_dir) / "first.wav", 1.0))),
                                       api_name="/animate")
    assert Path(video).suffix == ".mp4" and "happy x1" in status
    video, *_, status = client.predict(text="Nice to see you.", api_name="/animate")
    assert Path(video).suffix == ".mp4" and "phones: exact" in status


@pytest.mark.slow
def test_served_config_and_error_texts_show_no_server_path(server, client, tmp_path):
    """GET /config (the page's layout, the models panel, the examples) and the errors of bad uploads
    name files by their own names: no temporary folder, work folder, repository or example path."""
    import tempfile

    from gradio_client.exceptions import AppError

    url, workdir = server
    forbidden = {str(ROOT), str(ASSETS_DIR), str(workdir.resolve()), str(Path(tempfile.gettempdir()).resolve()),
                 str(tmp_path.resolve())}
    config = httpx.get(url + "config", timeout=30)
    assert config.status_code == 200 and "tts_surprised.wav" in config.text  # the examples, by name
    assert [p for p in forbidden if p in config.text] == []
    empty = tmp_path / "my take.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"  # libsndfile's message quotes the path it was given: the server's copy
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(300))
    garbage = tmp_path / "noise.flac"
    garbage.write_bytes(os.urandom(2000))
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    for upload in (empty, corrupt, garbage, notes):
        with pytest.raises(AppError) as err:
            animate(client, upload)
        message = str(err.value)
        assert [p for p in forbidden if p in message] == [] and not re.search(r"(?<![\w.])/[\w.-]+/", message), message


@pytest.mark.slow
def test_a_request_over_the_cost_budget_is_refused_with_what_to_do(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"over this server's budget: at 512 px at most 15 s\. Use a shorter clip"):
        animate(client, text="Nice to see you. " * 20, size=512)  # about 24 s of speech: 4 x 24 units


SERVER_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|usr|srv|opt|var|proc|etc)/|site-packages")  # absolute server folders


@pytest.mark.slow
def test_page_uploads_and_results_name_no_server_folder(server, tmp_path):
    """What a browser or API client receives (the page, /config, the API info, an upload's answer,
    a result's event stream and its file URLs, plotly.js) names no folder of the server: Gradio's
    cache appears as `blendtalk-cache/...`, plotly.js is served at its own route."""
    import sys
    import tempfile

    url, workdir = server
    forbidden = {str(ROOT), str(workdir.resolve()), str(Path(tempfile.gettempdir()).resolve()), str(Path.home()),
                 sys.prefix, "site-packages"}
    texts = {name: httpx.get(url + name, timeout=30).text for name in ("", "config", "gradio_api/info")}
    with open(WAV, "rb") as f:
        upload = httpx.post(f"{url}gradio_api/upload", files={"files": (WAV.name, f, "audio/wav")}, timeout=30)
    texts["upload"] = upload.text
    assert upload.json()[0].startswith(app.PUBLIC_CACHE + "/") and upload.json()[0].endswith("/arctic_a0009.wav")
    data = [{"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}, "", "", "happy", 0.8, "", 0.5, "", True,
            128, True]
    event = httpx.post(f"{url}gradio_api/call/animate", json={"data": data}, timeout=30).json()["event_id"]
    texts["result"] = httpx.get(f"{url}gradio_api/call/animate/{event}", timeout=300).text
    assert "event: complete" in texts["result"], texts["result"][:500]
    for name, text in texts.items():
        assert [p for p in forbidden if p in text] == [] and not SERVER_PATH.search(text), (name, SERVER_PATH.search(text))
    urls = re.findall(r'"url": "([^"]+)"', texts["result"])
    assert urls and all(f"gradio_api/file={app.PUBLIC_CACHE}/" in u for u in urls)
    video = httpx.get(next(u for u in urls if u.endswith(".mp4")), timeout=30)  # the public name still fetches the file
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    plotly = httpx.get(url + app.PLOTLY_ROUTE, timeout=30)
    assert plotly.status_code == 200 and b"plotly.js" in plotly.content[:200]
    addon = httpx.get(url + app.BLENDER_ROUTE, timeout=30)
    assert addon.status_code == 200 and b"bl_info" in addon.content
    assert 'filename="blendtalk_blender.py"' in addon.headers["content-disposition"]


def test_trusted_proxies_are_checked_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as exit_:
        app.main(["--trusted-proxies", "proxy.example.org"])
    assert exit_.value.code == 2
    assert "'proxy.example.org' is not an IP address or network" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_rate_limit_counts_the_connection_unless_the_proxy_is_trusted(tmp_path, trusted):
    """With 2 requests a minute per address: without a trusted proxy a client that writes a new
    X-Forwarded-For each time is still one address (its third request is refused); with this
    host's proxy trusted, the header's addresses are the clients. Requests without speech are
    counted and then refused at once, so nothing is computed."""
    NO_SPEECH = [None, "", "", "happy", 0.8, "", 0.5, "", True, 128, True]
    with launch_app(tmp_path, "--rate-limit", "2", "--trusted-proxies", trusted) as (url, _):
        def ask(forwarded: str) -> str:
            event = httpx.post(f"{url}gradio_api/call/animate", json={"data": NO_SPEECH},
                               headers={"X-Forwarded-For": forwarded}, timeout=30).json()["event_id"]
            return httpx.get(f"{url}gradio_api/call/animate/{event}", timeout=60).text

        answers = [ask(address) for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.1",
                                                "203.0.113.1")]
    limited = ["Too many requests" in a for a in answers]
    assert all("event: error" in a for a in answers)  # no speech: refused either way
    assert limited == ([False, False, True, True, True] if not trusted else [False, False, False, False, True])


@pytest.mark.slow
def test_one_address_cannot_hold_both_workers(tmp_path):
    """Two requests of one address sent at once: one is computed, the other refused with what to do,
    while another address's request is served beside it (the proxy on this host is trusted, so the
    addresses come from X-Forwarded-For)."""
    with launch_app(tmp_path, "--jobs-per-client", "1", "--trusted-proxies", "127.0.0.1") as (url, _):
        with open(clip(tmp_path / "one_second.wav", 1.0), "rb") as f:
            path = httpx.post(f"{url}gradio_api/upload", files={"files": ("one_second.wav", f, "audio/wav")},
                              timeout=30).json()[0]
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, "", "", "happy", 0.8, "", 0.5, "", True, 128, True]

        def ask(forwarded: str) -> str:
            event = httpx.post(f"{url}gradio_api/call/animate", json={"data": data},
                               headers={"X-Forwarded-For": forwarded}, timeout=30).json()["event_id"]
            return httpx.get(f"{url}gradio_api/call/animate/{event}", timeout=300).text

        from concurrent.futures import FIRST_COMPLETED, wait

        with ThreadPoolExecutor(3) as pool:
            # Both sent into an empty queue start at once on the 2 workers: the second finds the first running.
            pair = [pool.submit(ask, "203.0.113.1") for _ in range(2)]
            wait(pair, return_when=FIRST_COMPLETED)  # the refusal, at once
            other = pool.submit(ask, "203.0.113.2")  # sent while the first may still run: the other worker is free
            answers = [f.result() for f in (*pair, other)]
    same = sorted("event: complete" in a for a in answers[:2])
    assert same == [False, True], answers
    refused = next(a for a in answers[:2] if "event: complete" not in a)
    assert "You already have 1 request being computed; wait for it to finish" in refused, refused
    assert "event: complete" in answers[2], answers[2][:500]


def join(url: str, fn_index: int, data: list, session: str) -> None:
    """Queue `data` for `fn_index` in `session`, as the page does (its outputs come on the session's stream)."""
    answer = httpx.post(f"{url}gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                             "event_data": None, "trigger_id": None}, timeout=30)
    answer.raise_for_status()


@pytest.mark.slow
def test_a_waiting_request_whose_client_left_is_dropped(server, tmp_path):
    """Both workers busy with long requests; a third client queues a request and closes its page (its
    event stream): the request leaves the queue while the two are still running, so it is never computed."""
    import threading

    from blendtalk.evaluation.clips import long_clip

    url, _ = server
    config = httpx.get(url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "animate")

    def uploaded(path: Path) -> dict:
        with open(path, "rb") as f:
            name = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f, "audio/wav")}, timeout=30).json()[0]
        return {"path": name, "meta": {"_type": "gradio.FileData"}}

    def inputs(audio: dict) -> list:
        return [audio, "", "", "happy", 0.8, "", 0.5, "", True, "128", True]

    long_audio = uploaded(long_clip(30.0, tmp_path)[0])  # about 10 s of work even on a quiet machine
    done = []

    def keep(session: str) -> None:  # a client that stays until its result
        with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=300) as events:
            for line in events.iter_lines():
                if '"msg":"process_completed"' in line.replace(" ", ""):
                    done.append(session)
                    return

    def waiting() -> int:
        return httpx.get(f"{url}gradio_api/queue/status", timeout=30).json()["queue_size"]

    keepers = [threading.Thread(target=keep, args=(f"keeper{k}",)) for k in range(2)]
    for k, thread in enumerate(keepers):
        join(url, fn_index, inputs(long_audio), f"keeper{k}")
        thread.start()
    end = time.monotonic() + 60
    while waiting() and time.monotonic() < end:  # until the two workers have taken both
        time.sleep(0.2)
    join(url, fn_index, inputs(uploaded(clip(tmp_path / "short.wav", 1.0))), "leaver")
    assert waiting() == 1 and not done
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "leaver"}, timeout=30) as events:
        next(events.iter_lines())  # its first message (the estimate); then the page is closed
    end = time.monotonic() + 20
    while waiting() and time.monotonic() < end:
        time.sleep(0.2)
    left_queue_while_busy = waiting() == 0 and not done
    for thread in keepers:
        thread.join(timeout=300)
    assert sorted(done) == ["keeper0", "keeper1"]
    assert left_queue_while_busy, "the request of the client that left stayed in the queue"


CANCELLED = re.compile(r"request of \S+ cancelled at (.+?) \((\d+)% done\) after ([\d.]+) s: its client left")


@pytest.mark.slow
def test_a_running_request_whose_client_left_stops_and_frees_its_worker(server, tmp_path):
    """Two clients each start 55 s of speech at 256 px (both workers busy; about 20 s of CPU each on a
    quiet machine) and close their pages as soon as their work has started; a third client's request
    waits in the queue. The two stop at their next progress report (the server log says where), and
    the third is then served, though neither long request got to its end: the cancellations freed the
    workers. No duration is asserted (the time-outs only end a hung test): what is checked is the order
    of events (a worker frees only when its request ends, and the log shows both ended cancelled)."""
    import threading

    from blendtalk.evaluation.clips import long_clip

    url, workdir = server
    log = workdir.parent / "server.log"  # eval.load_test.launch_app writes the app's log beside its work folder
    cancelled_before = len(CANCELLED.findall(log.read_text()))
    config = httpx.get(url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "animate")
    with open(long_clip(55.0, tmp_path)[0], "rb") as f:
        name = httpx.post(f"{url}gradio_api/upload", files={"files": ("speech.wav", f, "audio/wav")},
                          timeout=30).json()[0]
    long_request = [{"path": name, "meta": {"_type": "gradio.FileData"}}, "", "", "happy", 0.8, "", 0.5, "", True, "256",
                    True]

    def waiting() -> int:
        return httpx.get(f"{url}gradio_api/queue/status", timeout=30).json()["queue_size"]

    with contextlib.ExitStack() as pages:
        for k in range(2):
            join(url, fn_index, long_request, f"leaver{k}")
        reading = []  # each page's line iterator, kept: a dropped one closes its connection (httpx), i.e. leaves
        for k in range(2):  # each page stays until its request has started on a worker
            events = pages.enter_context(httpx.stream("GET", f"{url}gradio_api/queue/data",
                                                      params={"session_hash": f"leaver{k}"}, timeout=300))
            reading.append(events.iter_lines())
            assert next((True for line in reading[-1] if '"msg":"process_starts"' in line.replace(" ", "")), False)
        # Typed text, not an upload: the test server's short cache age could delete an upload while it waits.
        join(url, fn_index, [None, "Nice to see you.", "", "sad", 0.8, "", 0.5, "", True, "128", True], "stayer")
        assert waiting() == 1  # both workers hold the long requests
        answers = []

        def stay() -> None:
            with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "stayer"},
                              timeout=600) as events:
                for line in events.iter_lines():
                    if '"msg":"process_completed"' in line.replace(" ", ""):
                        answers.append(json.loads(line.removeprefix("data:")))
                        return

        stayer = threading.Thread(target=stay)
        stayer.start()
    # The two leavers' pages are closed here.
    stayer.join(timeout=600)
    assert answers and answers[0]["success"], answers
    assert "sad x0.8" in answers[0]["output"]["data"][4]
    end = time.monotonic() + 300  # the second may still be between two reports
    while len(stops := CANCELLED.findall(log.read_text())[cancelled_before:]) < 2 and time.monotonic() < end:
        time.sleep(0.5)
    print(f"\ncancelled: {stops}")
    assert len(stops) == 2, log.read_text()[-3000:]
    assert all(int(percent) < 100 for _, percent, _ in stops)
    end = time.monotonic() + 30  # their request folders go with them
    while list((workdir / "requests").iterdir()) and time.monotonic() < end:
        time.sleep(0.5)
    assert list((workdir / "requests").iterdir()) == []


@pytest.mark.slow
def test_the_cache_cap_spares_the_uploads_of_waiting_requests(tmp_path):
    """With a cache cap of 0 MB, every sweep (each second) deletes every file older than the minimum age
    (5 s) that nothing needs. A request waits in the queue behind two long ones; a decoy uploaded after
    its audio is swept (so the sweep, oldest first, passed the waiting upload), yet the waiting upload is
    still there, and the request is served once the long ones' clients leave. Before, such a request
    failed with "Audio file not found" (20 of 64 in a soak whose queue waits outgrew the minimum age)."""
    from blendtalk.evaluation.clips import long_clip

    cap = ("--cache-max-mb", "0", "--cache-min-age", "5", "--delete-cache", "1", "600")
    with launch_app(tmp_path, *cap) as (url, workdir):
        config = httpx.get(url + "config", timeout=30).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "animate")

        def uploaded(path: Path) -> dict:
            with open(path, "rb") as f:
                name = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f, "audio/wav")},
                                  timeout=30).json()[0]
            return {"path": name, "meta": {"_type": "gradio.FileData"}}

        def on_disk(audio: dict) -> Path:  # the public name (blendtalk.path_mask) -> the file in the app's cache
            return workdir / "gradio" / audio["path"].removeprefix(app.PUBLIC_CACHE + "/")

        def inputs(audio: dict, size: str) -> list:
            return [audio, "", "", "happy", 0.8, "", 0.5, "", True, size, True]

        (tmp_path / "long").mkdir()
        long_audio = uploaded(long_clip(55.0, tmp_path / "long")[0])
        with contextlib.ExitStack() as busy_pages:
            reading = []  # kept: a dropped line iterator closes its connection (httpx), i.e. its client leaves
            for k in range(2):  # both workers, for requests whose clients will leave (blendtalk.serving.cancellable)
                join(url, fn_index, inputs(long_audio, "256"), f"busy{k}")
                events = busy_pages.enter_context(httpx.stream("GET", f"{url}gradio_api/queue/data",
                                                               params={"session_hash": f"busy{k}"}, timeout=300))
                reading.append(events.iter_lines())
                assert next((True for line in reading[-1] if '"msg":"process_starts"' in line.replace(" ", "")), False)
            waiting_audio = uploaded(clip(tmp_path / "waiting.wav", 1.0))
            join(url, fn_index, inputs(waiting_audio, "128"), "waiting")
            decoy = on_disk(uploaded(clip(tmp_path / "decoy.wav", 0.5)))
            end = time.monotonic() + 120
            while decoy.exists() and time.monotonic() < end:
                time.sleep(0.5)
            assert not decoy.exists(), "the cap never swept"
            assert httpx.get(f"{url}gradio_api/queue/status", timeout=30).json()["queue_size"] == 1  # still waiting
            assert on_disk(waiting_audio).exists(), "the cap deleted a waiting request's upload"
        # The busy clients have left: their requests stop and the waiting one runs.
        with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "waiting"},
                          timeout=600) as events:
            answer = next(json.loads(line.removeprefix("data:")) for line in events.iter_lines()
                          if '"msg":"process_completed"' in line.replace(" ", ""))
    assert answer["success"], answer
