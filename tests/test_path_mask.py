"""blendtalk.path_mask.PathMask on a small Starlette app standing in for Gradio: real folders never
leave the server, and what clients send back under the public names reaches the app as real paths."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from blendtalk.path_mask import PathMask

CACHE = "/srv/app-x1/gradio"  # the real folder (never created: the app only names it)
FILE = f"{CACHE}/0a1b/blendtalk_happy.mp4"


def make_client() -> tuple[TestClient, list]:
    seen = []  # what the app received: bodies and file= paths

    async def upload(request: Request):  # Gradio's upload answers with the cached path
        seen.append(await request.body())
        return JSONResponse([f"{CACHE}/0a1b/take.wav"])

    async def call(request: Request):  # an API call: the JSON body names an uploaded file
        body = await request.json()
        seen.append(body["data"][0]["path"])
        return JSONResponse({"event_id": "e1"})

    async def events(request: Request):  # server-sent events with a result, as Gradio streams them
        async def stream():
            for i in range(2):
                data = [{"path": FILE, "url": f"http://host/gradio_api/file={FILE}", "n": i}]
                yield f"event: complete\ndata: {json.dumps(data)}\n\n"
        return StreamingResponse(stream(), media_type="text/event-stream")

    async def file(request: Request):
        seen.append(request.url.path)
        return Response(b"\x00binary " + FILE.encode(), media_type="video/mp4")  # bytes of a file: never touched

    async def text(request: Request):
        return PlainTextResponse(FILE)

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"]), Route("/call", call, methods=["POST"]),
                            Route("/events", events), Route("/gradio_api/file={path:path}", file), Route("/text", text)],
                    middleware=[Middleware(PathMask, folders=[(CACHE, "blendtalk-cache")])])
    return TestClient(app), seen


def test_real_folders_never_leave_in_json_or_event_streams():
    client, seen = make_client()
    up = client.post("/upload", files={"files": ("take.wav", b"RIFF" + CACHE.encode(), "audio/wav")})
    assert up.json() == ["blendtalk-cache/0a1b/take.wav"]
    assert int(up.headers["content-length"]) == len(up.content)  # the shorter body's length, not the original's
    assert CACHE.encode() in seen[0]  # a multipart upload reaches the app byte for byte
    stream = client.get("/events").text
    assert CACHE not in stream and stream.count("gradio_api/file=blendtalk-cache/0a1b/blendtalk_happy.mp4") == 2
    assert stream.count('"path": "blendtalk-cache/0a1b/blendtalk_happy.mp4"') == 2


def test_public_names_sent_back_reach_the_app_as_real_paths():
    client, seen = make_client()
    data = {"data": [{"path": "blendtalk-cache/0a1b/take.wav", "meta": {"_type": "gradio.FileData"}},
                     "my notes on blendtalk-cache (not a path)"]}
    assert client.post("/call", json=data).json() == {"event_id": "e1"}
    assert seen[-1] == f"{CACHE}/0a1b/take.wav"
    got = client.get("/gradio_api/file=blendtalk-cache/0a1b/blendtalk_happy.mp4")
    assert seen[-1] == f"/gradio_api/file={FILE}" and got.content == b"\x00binary " + FILE.encode()


def test_other_responses_pass_untouched():
    client, _ = make_client()
    assert client.get("/text").text == FILE  # only JSON and event streams carry Gradio's file names


def test_a_public_name_must_not_be_a_path():
    with pytest.raises(ValueError, match="absolute folder and a relative public name"):
        PathMask(None, [(CACHE, "/cache")])
    with pytest.raises(ValueError, match="absolute folder"):
        PathMask(None, [("gradio", "cache")])
