"""Phone recognition in worker processes: one `sphinx.Recogniser` per process.

pocketsphinx holds the GIL while it decodes, so only processes run recognitions side by side.
The workers are plain subprocesses (`python -m blendtalk.speech.phone_workers`, see
`worker_process`). Protocol on the worker's stdin/stdout, one request at a time: a 4-byte
little-endian length + 16-bit PCM at 16 kHz in; a 4-byte length + JSON [[symbol, start_s, end_s],
...] out.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading

from ..constants import SAMPLE_RATE
from ..worker_process import worker_command
from .phones import Phone
from .sphinx import Recogniser

_HEADER = struct.Struct("<I")


class WorkerError(RuntimeError):
    """A worker process died or answered nonsense; the pool is closed."""


class PhoneWorkers:
    """`count` recognition processes, started on first use; `recognize(pieces)` runs one piece each.

    Each process loads the acoustic model and the LM once (about half a second); close() stops them.
    `once=True` workers answer one request and exit.
    """

    def __init__(self, count: int, once: bool = False) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a whole number >= 1, got {count!r}")
        self.count, self.once = count, once
        self._procs: list[subprocess.Popen] = []
        self._started = False
        self._lock = threading.Lock()

    def _start(self) -> None:
        argv, env = worker_command("blendtalk.speech.phone_workers", *(["--once"] if self.once else []))
        self._procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) for _ in range(self.count)]

    def recognize(self, pieces: list[bytes]) -> list[list[Phone]]:
        """16-bit PCM pieces (at most `count`) -> the phones of each, times from the piece's start."""
        if len(pieces) > self.count:
            raise ValueError(f"{len(pieces)} pieces for {self.count} workers")
        with self._lock:
            if self.once and self._started:
                raise WorkerError("these workers answer one request each; start a new PhoneWorkers")
            self._started = True
            if not self._procs:
                self._start()
            try:
                for proc, pcm in zip(self._procs, pieces):  # all workers start before any answer is read
                    proc.stdin.write(_HEADER.pack(len(pcm)) + pcm)
                    proc.stdin.flush()
                answers = [_read_message(proc.stdout) for proc in self._procs[: len(pieces)]]
                return [[Phone(s, float(a), float(b)) for s, a, b in json.loads(x)] for x in answers]
            except (OSError, ValueError, WorkerError) as err:
                self._stop()
                raise WorkerError(f"a phone recognition worker failed: {err}") from None

    def recognize_clip(self, pcm: bytes, bounds: list[int]) -> list[Phone]:
        """16-bit PCM of a clip cut at sample indices `bounds` ([0, ..., S], at most `count` + 1 of them)
        -> the phones of all its pieces, times from the clip's start."""
        return join_pieces(bounds, self.recognize([pcm[2 * a:2 * b] for a, b in zip(bounds, bounds[1:])]))

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        for proc in self._procs:
            try:
                proc.stdin.close()  # EOF: the worker exits
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        self._procs = []

    def __del__(self):
        try:
            self._stop()
        except Exception:  # interpreter shutdown: best effort
            pass


def join_pieces(bounds: list[int], found: list[list[Phone]]) -> list[Phone]:
    """The phones of each piece between sample indices `bounds` (times from the piece's start) -> the
    phones of the whole clip, times from its start."""
    return [Phone(p.symbol, p.start + a / SAMPLE_RATE, p.end + a / SAMPLE_RATE)
            for a, phones in zip(bounds, found) for p in phones]


class BackgroundRecognition:
    """One clip recognised by worker processes of its own, started now, one per piece between
    `bounds` (sample indices [0, ..., S]); `result()` waits for its phones, the same as a recognition
    of those pieces in a `PhoneWorkers` pool; meanwhile this process does other work (the CLI loads
    its models)."""

    def __init__(self, pcm: bytes, bounds: list[int]) -> None:
        self.pcm, self.bounds = pcm, bounds
        self._phones: list[Phone] | None = None
        self._error: Exception | None = None
        # A thread feeds and reads the worker: the write blocks until the worker has loaded its model.
        self._thread = threading.Thread(target=self._run, name="phone-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pool = PhoneWorkers(len(self.bounds) - 1, once=True)  # the CLI's speech model runs next: the workers leave
        try:
            self._phones = pool.recognize_clip(self.pcm, self.bounds)
        except Exception as err:  # reported by result(), in the caller's thread
            self._error = err
        finally:
            pool.close()

    def result(self) -> list[Phone]:
        """The phones (times from the clip's start); WorkerError when the worker failed."""
        self._thread.join()
        if self._phones is None:
            raise WorkerError(f"background recognition failed: {self._error}")
        return self._phones


def _read_message(stream) -> bytes:
    header = stream.read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise WorkerError("the worker exited")
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) != size:
        raise WorkerError("the worker's answer was cut short")
    return body


def _serve(once: bool = False) -> None:
    recognise = Recogniser().built()  # before reading: the parent's write waits in the pipe meanwhile
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            pcm = _read_message(source)
        except WorkerError:  # EOF: the parent closed our stdin
            return
        body = json.dumps([[p.symbol, p.start, p.end] for p in recognise(pcm)]).encode()
        sink.write(_HEADER.pack(len(body)) + body)
        sink.flush()
        if once:
            return


if __name__ == "__main__":
    _serve(once="--once" in sys.argv[1:])
