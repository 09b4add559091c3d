"""A second llvmpipe in a child process, which draws a share of a clip's frames.

llvmpipe draws a frame in two steps: the calling thread transforms and bins the triangles, then
its rasterizer threads shade the pixels while the caller waits. A frame's binning cannot overlap
another frame's shading in one process (one rasterizer per screen, and reading a frame back waits
for all that is queued), so on two cores one llvmpipe keeps about 1.55 of them busy. A child
process has a screen of its own: while this process bins or computes vertex attributes, the
child's threads shade, and a 10 s clip drew about 0.5 s faster on two cores (docs/speed.md). The
frames are the same bytes, since both draw with the same `GLDrawer` and the same attributes.

The worker is a plain subprocess (`python -m blendtalk.render.gl_worker`, see `worker_process`),
which imports numpy and moderngl but not torch. Protocol: the drawer's arguments on the worker's
stdin (`_encode_spec`: arrays as an npz, the rest as JSON, no pickle), then one byte back, b"R"
when its first frame is drawn (the shaders compiled); then per request a 4-byte little-endian frame
count k on stdin, after the attributes of k frames were put in the shared input (a memfd, (K, V,
ATTRIBUTES) float32), and b"D" back once their pixels are in the shared output ((K, size, size, 3)
uint8). EOF on stdin ends it; the parent's death closes that pipe too.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import select
import struct
import subprocess
import sys
import threading

import numpy as np

from ..worker_process import worker_command
from .gl import ATTRIBUTES, GLDrawer

_COUNT = struct.Struct("<I")
READY, DONE = b"R", b"D"
TIMEOUT_S = 120.0  # a worker silent this long is taken for hung: stopped, and the frames drawn here


class DrawWorkerError(RuntimeError):
    """The worker did not start, died or answered nonsense; it is stopped."""


def available() -> bool:
    """Whether a worker can help here: shared memory by file descriptor (Linux) and two cores or more
    for this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return hasattr(os, "memfd_create") and cores >= 2


class DrawWorker:
    """A `gl.GLDrawer` built from `spec` (its keyword arguments) in a child process, drawing up to
    `frames` frames per request. Starts at once; `ready()` says when it has drawn its first frame.
    Not thread-safe: one caller at a time (the renderer holds `lock`)."""

    def __init__(self, spec: dict, frames: int) -> None:
        self.frames = frames
        self.lock = threading.Lock()
        self.owner = os.getpid()  # a forked child inherits this object but must not talk to the worker
        size, vertices = int(spec["size"]), int(spec["num_vertices"])
        sizes = (frames * vertices * ATTRIBUTES * 4, frames * size * size * 3)
        fds = [os.memfd_create(name) for name in ("blendtalk-attributes", "blendtalk-pixels")]
        try:
            for fd, nbytes in zip(fds, sizes):
                os.ftruncate(fd, nbytes)
            self._maps = [mmap.mmap(fd, nbytes) for fd, nbytes in zip(fds, sizes)]
            self.attributes = np.frombuffer(self._maps[0], np.float32).reshape(frames, vertices, ATTRIBUTES)
            self.pixels = np.frombuffer(self._maps[1], np.uint8).reshape(frames, size, size, 3)
            argv, env = worker_command("blendtalk.render.gl_worker", str(fds[0]), str(fds[1]), str(frames))
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds, env=env, bufsize=0)
        finally:
            for fd in fds:  # the maps and the child hold the memory now
                os.close(fd)
        self._ready = False
        self._pending = 0
        self.drawn = 0  # frames this worker has drawn
        # The drawer's arguments (about 0.3 MB) outgrow the pipe's buffer: a thread feeds them while
        # the worker imports, so that the caller goes on.
        threading.Thread(target=self._send_spec, args=(spec,), name="gl-worker-spec", daemon=True).start()

    def _send_spec(self, spec: dict) -> None:
        try:
            _write_all(self._proc.stdin, _encode_spec(spec))
        except (OSError, ValueError, AttributeError):  # the worker died (its answer says so) or was closed
            pass

    def ready(self, timeout: float | None = 0.0) -> bool:
        """Whether the worker has drawn its first frame (waiting up to `timeout` s; None: TIMEOUT_S);
        DrawWorkerError if it failed."""
        if not self._ready and self._answered(TIMEOUT_S if timeout is None else timeout):
            self._expect(READY, "start")
            self._ready = True
        return self._ready

    def submit(self, attributes: np.ndarray) -> None:
        """Start drawing (k, V, ATTRIBUTES) float32 attributes, k <= frames, once `ready()`; `result()`
        gives the frames."""
        if not self.ready(None):
            self.close()
            raise DrawWorkerError(f"the drawing worker did not start within {TIMEOUT_S:.0f} s")
        k = len(attributes)
        self.attributes[:k] = attributes
        try:
            _write_all(self._proc.stdin, _COUNT.pack(k))
        except OSError as err:
            self.close()
            raise DrawWorkerError(f"the drawing worker stopped: {err}") from None
        self._pending = k

    def done(self) -> bool:
        """Whether the last `submit` is drawn (`result()` will not wait)."""
        return self._answered(0.0)

    def result(self) -> np.ndarray:
        """The frames (k, size, size, 3) of the last `submit`: a view of shared memory, valid until the next."""
        if not self._answered(TIMEOUT_S):
            self.close()
            raise DrawWorkerError(f"the drawing worker did not answer within {TIMEOUT_S:.0f} s")
        self._expect(DONE, "draw")
        self.drawn += self._pending
        return self.pixels[: self._pending]

    def close(self) -> None:
        """Stop the worker (EOF on its stdin, then a kill if it lingers); nothing in a forked child."""
        proc = getattr(self, "_proc", None)
        if proc is None or self.owner != os.getpid():
            return
        self._proc = None
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()

    def _answered(self, timeout: float) -> bool:
        """Whether the worker's next answer byte (or its EOF) can be read without waiting longer than timeout s."""
        if self._proc is None:
            raise DrawWorkerError("the drawing worker was stopped")
        return bool(select.select([self._proc.stdout], [], [], timeout)[0])

    def _expect(self, answer: bytes, what: str) -> None:
        proc = self._proc
        got = proc.stdout.read(1)
        if got != answer:
            self.close()
            raise DrawWorkerError(f"the drawing worker failed to {what} (exit code {proc.returncode})")

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: best effort
            pass


def _encode_spec(spec: dict) -> bytes:
    """The drawer's keyword arguments -> bytes: two length-prefixed parts, an npz of the arrays and
    JSON of the rest (numbers, strings, None, tuples as lists)."""
    arrays = {k: v for k, v in spec.items() if isinstance(v, np.ndarray)}
    rest = json.dumps({k: v for k, v in spec.items() if k not in arrays}, default=lambda x: x.item()).encode()  # numpy scalars
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    parts = [buffer.getvalue(), rest]
    return b"".join(_COUNT.pack(len(part)) + part for part in parts)


def _decode_spec(stream) -> dict:
    """`_encode_spec`'s bytes read from stream -> the keyword arguments."""
    parts = []
    for _ in range(2):
        (size,) = _COUNT.unpack(stream.read(_COUNT.size))
        parts.append(stream.read(size))
    with np.load(io.BytesIO(parts[0]), allow_pickle=False) as arrays:
        return {**json.loads(parts[1]), **{k: arrays[k] for k in arrays.files}}


def _write_all(stream, data: bytes) -> None:
    """Write all of data to an unbuffered stream (one write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view):]


def _serve(fd_in: int, fd_out: int, frames: int) -> None:
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    drawer = GLDrawer(**_decode_spec(source))
    n, v = drawer.size, drawer.num_vertices
    attributes = np.frombuffer(mmap.mmap(fd_in, frames * v * ATTRIBUTES * 4), np.float32).reshape(frames, v, ATTRIBUTES)
    pixels = np.frombuffer(mmap.mmap(fd_out, frames * n * n * 3), np.uint8).reshape(frames, n, n, 3)
    drawer(attributes[:1], pixels[:1])  # compiles llvmpipe's shaders before the first request
    sink.write(READY)
    sink.flush()
    while len(header := source.read(_COUNT.size)) == _COUNT.size:
        (k,) = _COUNT.unpack(header)
        drawer(attributes[:k], pixels[:k])
        sink.write(DONE)
        sink.flush()


if __name__ == "__main__":
    _serve(*map(int, sys.argv[1:4]))
