"""Keep the server's folders off the wire: the app's cache folders appear to clients under neutral names.

Gradio names every uploaded and produced file by its absolute path on the server, in the JSON it
sends (`{"path": "/tmp/blendtalk-app-x1/gradio/<hash>/blendtalk_happy.mp4", "url": ".../gradio_api/
file=/tmp/..."}`) and in the file URLs the page then fetches; clients send the same paths back as
inputs. `PathMask` is an ASGI middleware that rewrites those folders to a public name on the way
out (`blendtalk-cache/<hash>/blendtalk_happy.mp4`) and back on the way in (JSON request bodies and
`/file=` URLs), so Gradio still sees, and still checks, its real paths. Responses other than JSON
and server-sent events (files, the page's scripts) and uploads' multipart bodies are passed through
untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

REWRITTEN_TYPES = (b"application/json", b"text/event-stream")  # response content types that carry file paths


class PathMask:
    """ASGI middleware mapping each real folder to its public name (`folders`: (real, public) pairs).

    A public name has no leading slash, so it is no path on any server; it is replaced back only where
    it starts a JSON string (`"blendtalk-cache/...`) or follows `file=` in a URL path."""

    def __init__(self, app, folders: Iterable[tuple[str, str]]):
        self.app = app
        self.folders = [(real.rstrip("/").encode(), public.rstrip("/").encode()) for real, public in folders]
        for real, public in self.folders:
            if not real.startswith(b"/") or not public or public.startswith(b"/"):
                raise ValueError(f"PathMask needs an absolute folder and a relative public name, got {real!r} -> {public!r}")

    # ---- the two directions ----
    def hide(self, data: bytes) -> bytes:
        """Real folders -> public names, wherever they occur (they are long, unique absolute paths)."""
        for real, public in self.folders:
            data = data.replace(real + b"/", public + b"/")
        return data

    def reveal_json(self, data: bytes) -> bytes:
        for real, public in self.folders:
            data = data.replace(b'"' + public + b"/", b'"' + real + b"/")
        return data

    def reveal_url(self, path: bytes) -> bytes:
        for real, public in self.folders:
            path = path.replace(b"file=" + public + b"/", b"file=" + real + b"/")
        return path

    # ---- ASGI ----
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # WebSockets (the Live tab) carry no cache paths
            return await self.app(scope, receive, send)
        if b"file=" in scope.get("raw_path", b"") or "file=" in scope["path"]:
            scope = dict(scope, path=self.reveal_url(scope["path"].encode()).decode(),
                         raw_path=self.reveal_url(scope.get("raw_path") or scope["path"].encode()))
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"application/json"):
            receive = self._revealing(receive)
        await self.app(scope, receive, self._hiding(send))

    def _revealing(self, receive):
        """`receive` with the whole JSON body rewritten (read in full first: a name may straddle two chunks)."""
        done = False

        async def wrapped():
            nonlocal done
            if done:
                return await receive()
            body, message = b"", {"type": "http.request", "more_body": True}
            while message.get("more_body", False):
                message = await receive()
                if message["type"] != "http.request":  # the client left
                    return message
                body += message.get("body", b"")
            done = True
            return {"type": "http.request", "body": self.reveal_json(body), "more_body": False}

        return wrapped

    def _hiding(self, send):
        """`send` rewriting JSON and event-stream bodies: a sized body is collected and its length set
        anew; a stream (server-sent events, one whole event per message) is rewritten message by message."""
        start, rewrite, buffered, body = None, False, False, b""

        async def wrapped(message):
            nonlocal start, rewrite, buffered, body
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                rewrite = (headers.get(b"content-type", b"").split(b";")[0].strip() in REWRITTEN_TYPES
                           and b"content-encoding" not in headers)
                buffered = rewrite and b"content-length" in headers
                if buffered:
                    start = message
                    return
                return await send(message)
            if message["type"] != "http.response.body" or not rewrite:
                return await send(message)
            if not buffered:
                return await send({**message, "body": self.hide(message.get("body", b""))})
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            body = self.hide(body)
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return wrapped
