"""The rating app of a perceptual study: one screen at a time, 5-point Likert scores in SQLite.

    python eval/study/rate.py --manifest studies/s1/manifest.json --db studies/s1/ratings.sqlite [--port 7870]
    python eval/study/rate.py --manifest studies/s1/manifest.json --db studies/s1/ratings.sqlite --export out.csv

Give each participant their id from the manifest (or a link http://HOST:7870/?participant=ID).
Every answer is stored when it is clicked, so a closed tab loses nothing and the participant
resumes where they stopped. The app listens on 127.0.0.1 unless --host says otherwise.

HTTP API (JSON; errors are {"error": message} with status 400, 404, 409, 413 or 415):
  GET  /api/next?participant=ID   the participant's current screen, their drafts and progress
  POST /api/rate                  {"participant", "trial", "ratings": [{"clip", "aspect", "score"}],
                                   "submit": bool} -> the same answer as /api/next
  GET  /clip/<clip id>, /audio/<stimulus id>, /ref/<stimulus id>   the manifest's files only
No endpoint lists participants or answers: a participant reaches only the state of the id they hold.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from blendtalk.evaluation.study import (
    ASPECT_LABELS, ASPECT_QUESTIONS, LIKERT_LABELS, LIKERT_MAX, LIKERT_MIN, Study, StudyError)
from blendtalk.evaluation.study_store import RatingStore

PAGE = Path(__file__).with_name("rate.html")
MAX_BODY = 64 * 1024  # bytes; a screen's ratings are a few hundred
CHUNK = 256 * 1024  # bytes per write when streaming a video
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def study_files(study: Study, root: Path) -> dict[str, Path]:
    """URL path -> file, for exactly the manifest's clips, audio and reference videos. Requests are
    answered from this table only, so no part of a request ever becomes a file path."""
    files = {f"/clip/{c.id}": root / c.path for c in study.clips}
    for s in study.stimuli:
        files[f"/audio/{s.id}"] = root / s.audio
        if s.reference:
            files[f"/ref/{s.id}"] = root / s.reference
    return files


def screen_state(study: Study, store: RatingStore, participant: str) -> dict:
    """What /api/next answers: progress, and the current screen (None when finished) with drafts."""
    done, total = store.progress(participant)
    trial = store.current_trial(participant)
    state = {"participant": participant, "done": done, "total": total, "finished": trial is None,
             "aspects": [{"id": a, "label": ASPECT_LABELS.get(a, a), "question": ASPECT_QUESTIONS.get(a, a)}
                         for a in study.aspects],
             "scale": {"min": LIKERT_MIN, "max": LIKERT_MAX, "labels": list(LIKERT_LABELS)}, "trial": None}
    if trial is not None:
        stimulus = study.stimulus_by_id[trial.stimulus]
        state["trial"] = {
            "id": trial.id, "emotion": stimulus.emotion, "audio": f"/audio/{stimulus.id}",
            "reference": f"/ref/{stimulus.id}" if stimulus.reference else None,
            "clips": [{"id": c, "label": chr(65 + k), "url": f"/clip/{c}"} for k, c in enumerate(trial.clips)],
            "ratings": store.draft(participant, trial.id)}
    return state


class StudyHandler(BaseHTTPRequestHandler):
    """The study's pages, media and rating API; `make_server` sets the class attributes below."""

    server_version = "blendtalk-study"
    sys_version = ""
    study: Study
    store: RatingStore
    files: dict[str, Path]  # URL path -> file
    page: bytes
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {**HEADERS, "Content-Type": ctype, "Content-Length": str(len(body)), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def do_GET(self):
        url = urlsplit(self.path)
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, self.page, "text/html; charset=utf-8", {
                    "Cache-Control": "no-store", "Content-Security-Policy":
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"})
            elif url.path == "/api/next":
                ids = parse_qs(url.query).get("participant", [])
                if len(ids) != 1:
                    raise StudyError("give exactly one ?participant=ID")
                self._json(200, screen_state(self.study, self.store, ids[0]))
            elif url.path in self.files and self.files[url.path].is_file():
                self._file(self.files[url.path])
            else:
                self._error(404, "not found")
        except StudyError as e:
            self._error(e.status, str(e))

    def do_POST(self):
        if urlsplit(self.path).path != "/api/rate":
            return self._error(404, "not found")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            # also keeps other web sites out: a cross-site JSON POST needs a CORS preflight we never grant
            return self._error(415, "Content-Type must be application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "Content-Length required")
        if not 0 < length <= MAX_BODY:
            return self._error(413, f"body must be 1..{MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict) or not {"participant", "trial", "ratings"} <= set(body) or \
                    set(body) - {"participant", "trial", "ratings", "submit"}:
                raise StudyError("body must be {participant, trial, ratings[, submit]}")
            self.store.rate(body["participant"], body["trial"], body["ratings"], body.get("submit", False))
            self._json(200, screen_state(self.study, self.store, body["participant"]))
        except json.JSONDecodeError:
            self._error(400, "body is not JSON")
        except StudyError as e:
            self._error(e.status, str(e))

    def _file(self, path: Path) -> None:
        """The file, or the byte range asked for (browsers seek in videos with Range requests)."""
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        m = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if self.headers.get("Range"):
            if not m or (not m[1] and not m[2]):
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
            if m[1]:
                start, end = int(m[1]), min(int(m[2]), size - 1) if m[2] else size - 1
            else:  # suffix range: the last n bytes
                start = max(0, size - int(m[2]))
            if start > end or start >= size:
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
            status = 206
        self.send_response(status)
        headers = {**HEADERS, "Content-Type": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                   "Content-Length": str(end - start + 1), "Accept-Ranges": "bytes", "Cache-Control": "private"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


def make_server(study: Study, store: RatingStore, root: Path, host: str = "127.0.0.1", port: int = 7870,
                quiet: bool = False) -> ThreadingHTTPServer:
    """An HTTP server for `study` (files under `root`, answers in `store`); port 0 picks a free one.
    Call serve_forever() (e.g. in a thread) and shutdown()."""
    handler = type("Handler", (StudyHandler,), {"study": study, "store": store, "files": study_files(study, Path(root)),
                                                "page": PAGE.read_bytes(), "quiet": quiet})
    return ThreadingHTTPServer((host, port), handler)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--db", type=Path, required=True, help="SQLite file of the answers (created if missing)")
    p.add_argument("--port", type=int, default=7870)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines of the network in")
    p.add_argument("--export", type=Path, help="write every stored answer to this CSV and exit")
    args = p.parse_args(argv)
    try:
        study = Study.load(args.manifest)
        if args.export and not args.db.is_file():
            raise StudyError(f"no ratings database at {args.db}")
        store = RatingStore(args.db, study)
    except (StudyError, OSError) as e:
        print(f"rate: error: {e}", file=sys.stderr)
        return 2
    if args.export:
        n = store.export_csv(args.export)
        print(f"wrote {n} ratings to {args.export}")
        return 0
    missing = [str(f) for f in study_files(study, args.manifest.parent).values() if not f.is_file()]
    if missing:
        print(f"rate: error: {len(missing)} files of the manifest are missing (first: {missing[0]}); render them "
              f"with eval/study/make_clips.py --resume", file=sys.stderr)
        return 2
    server = make_server(study, store, args.manifest.parent, args.host, args.port)
    print(f"rating app for {study.name!r} on http://{args.host}:{server.server_address[1]}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
