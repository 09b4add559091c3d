"""Serving limits of the public app: what one request may cost, how often and how much at once one
client may ask, an estimated wait, and a cap on the disk the result cache may take.

Everything here is plain Python (no Gradio), so that each rule can be tested with a fake clock:

* cost: a request costs `speech seconds x (size / 256)^2` "256-px seconds" (CPU render time grows
  with the square of the size; 59 s at 512 px took 77 s of server time, about 0.33 s a unit);
  over `ServingConfig.max_cost` it is refused with what to change.
* `Gate`: per client (IP), at most `rate_per_minute` requests in any 60 s and `running_per_client`
  computed at once, so one client cannot hold every worker; it also measures seconds per cost unit
  of finished requests, for `Gate.estimated_wait`.
* `client_key`: the client is the connection's peer; X-Forwarded-For names it only behind proxies
  the operator declared (`TrustedProxies`, BLENDTALK_TRUSTED_PROXIES), so it cannot be spoofed.
* `cap_folder`: deletes the oldest files of a folder while it holds more than its cap.
* `cancellable` + `event_alive`: a request whose client has left stops at its next progress report
  (between stages and frame batches) instead of holding a worker to the end.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REFERENCE_SIZE = 256  # px: a second of speech at this size costs one unit
VIDEO_SIZES = (128, 256, 384, 512)  # px the app offers; CPU render time grows with the square of the size
CHARS_PER_SECOND = 14.0  # characters of typed text per second of synthesised speech (TTS at its default rate)
SECONDS_PER_UNIT = 0.33  # s of server time per cost unit before any request was measured (77 s for 59 s at 512 px, CPU)
MEASURED_JOBS = 50  # finished requests the seconds-per-unit estimate averages over
RATE_WINDOW_S = 60.0  # s: the rate limit counts requests in this sliding window


@dataclass
class ServingConfig:
    """The app's limits (app.py's command line sets them)."""

    max_cost: float = 60.0  # units: 60 s of speech at <= 256 px, 27 s at 384, 15 s at 512 (~20 s of CPU each)
    rate_per_minute: int = 12  # requests per client in any 60 s; 0: no limit (tests, a private server)
    running_per_client: int = 1  # requests of one client computed at once; 0: no limit. Below the app's 2 workers
    concurrency: int = 2  # requests computed at once (the app's CONCURRENCY), for the wait estimate


class LimitError(ValueError):
    """A request refused by a serving limit; the message says what to do instead."""


class Cancelled(Exception):
    """Nobody waits for this request any more (its client left); raised at a progress report.

    Not a ValueError: it must pass the handlers that turn bad input into a message for the user."""

    def __init__(self, fraction: float, stage: str | None):
        super().__init__(f"cancelled at {stage or 'start'} ({100 * fraction:.0f}% done)")
        self.fraction, self.stage = fraction, stage


def cancellable(progress: Callable | None, alive: Callable[[], bool]) -> Callable:
    """A progress callback `(fraction, desc=None)` that first asks `alive()` and raises Cancelled when
    it says no, then passes the report on to `progress` (if any). The work reports between its stages
    and frame batches, so that is where a request whose client left stops, freeing its worker."""
    def report(fraction: float, desc: str | None = None):
        if not alive():
            raise Cancelled(fraction, desc)
        if progress is not None:
            progress(fraction, desc=desc)

    return report


def request_cost(seconds: float, size: int) -> float:
    """Cost units of `seconds` of speech rendered at `size` px: seconds x (size / 256)^2."""
    return seconds * (size / REFERENCE_SIZE) ** 2


def text_seconds(text: str) -> float:
    """Seconds of speech that typed `text` will make (an estimate before synthesis)."""
    return len(text) / CHARS_PER_SECOND


def check_cost(seconds: float, size: int, max_cost: float) -> float:
    """The request's cost, or LimitError saying how to fit the budget (a shorter clip or a smaller size)."""
    cost = request_cost(seconds, size)
    if cost <= max_cost:
        return cost
    longest = longest_seconds(size, max_cost)
    fit = fitting_size(seconds, VIDEO_SIZES, max_cost)
    hint = f"or choose a video size of {fit} px" if request_cost(seconds, fit) <= max_cost else "and a smaller video size"
    raise LimitError(f"{seconds:.1f} s of speech at {size} px is over this server's budget: at {size} px at most "
                     f"{longest:.0f} s. Use a shorter clip (split it into parts) {hint}.")


TRUSTED_PROXIES_ENV = "BLENDTALK_TRUSTED_PROXIES"  # the operator's switch (app.py --trusted-proxies)
MAX_PROXY_HOPS = 16  # a count above this is a typo, not a proxy chain
MAX_KEY_CHARS = 64  # a client key is an address: longer header tokens are cut (bounded memory per key)


@dataclass(frozen=True)
class TrustedProxies:
    """Which proxies in front of the app may name the client in X-Forwarded-For.

    Nothing trusted (the default): the header is ignored and the client is the connection's peer, so
    a client cannot choose its own key to dodge the limits. `hops=N`: the app is reachable only
    through N proxies, each appending the address it saw; the client is the N-th address from the
    right. `networks`: a peer inside them is a proxy; the client is the right-most address of the
    header outside them (a proxy chain inside a private network, as a Space's)."""

    hops: int = 0  # proxies in front of the app (0: not counted)
    networks: tuple = ()  # ipaddress networks whose peers are proxies

    @property
    def enabled(self) -> bool:
        return self.hops > 0 or bool(self.networks)

    @classmethod
    def parse(cls, spec: str | None) -> TrustedProxies:
        """From the operator's text: "" (trust none), a count ("1"), or addresses and networks
        ("10.0.0.0/8,127.0.0.1"); ValueError saying what to write otherwise."""
        spec = (spec or "").strip()
        if not spec:
            return cls()
        if spec.isdigit():
            hops = int(spec)
            if hops > MAX_PROXY_HOPS:
                raise ValueError(f"trusted proxies: {hops} proxies in a row is not a real set-up; give the number of "
                                 f"proxies in front of the app (at most {MAX_PROXY_HOPS}) or their addresses.")
            return cls(hops=hops)
        networks = []
        for part in spec.split(","):
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"trusted proxies: {part.strip()!r} is not an IP address or network; give the number "
                                 "of proxies in front of the app (e.g. 1) or their addresses and networks, comma-"
                                 "separated (e.g. 10.0.0.0/8,127.0.0.1).") from None
        return cls(networks=tuple(networks))

    def trusts(self, address: str | None) -> bool:
        """Is `address` one of the trusted networks' (False for anything that is not an IP address)?"""
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.networks)


def _ip(address: str | None):
    """`address` ("1.2.3.4", "1.2.3.4:80", "[::1]:80", "::1") as an ipaddress object, or None."""
    text = (address or "").strip()
    if text.startswith("["):
        text = text[1:].split("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def forwarded_for(headers) -> list[str]:
    """The X-Forwarded-For values of a request's headers (Starlette `Headers` or a plain dict), in order."""
    if headers is None:
        return []
    if hasattr(headers, "getlist"):  # a repeated header is one list, the proxies' appends included
        return list(headers.getlist("x-forwarded-for"))
    value = {str(k).lower(): v for k, v in dict(headers).items()}.get("x-forwarded-for")
    return [value] if value else []


def client_key(peer: str | None, forwarded: Iterable[str] = (), trusted: TrustedProxies = TrustedProxies()) -> str:
    """Who is asking, for the per-client limits: the connection's `peer`, or, behind `trusted`
    proxies, the client address they report in X-Forwarded-For (`forwarded`, the header's values)."""
    peer = (peer or "unknown")[:MAX_KEY_CHARS]
    addresses = [a.strip() for value in forwarded for a in value.split(",") if a.strip()]
    if not trusted.enabled or not addresses:
        return peer
    if trusted.hops:  # the last `hops` entries were appended by our proxies; what is left of them, the client wrote
        client = addresses[max(0, len(addresses) - trusted.hops)]
    elif not trusted.trusts(peer):
        return peer  # reached us directly: its header is its own say-so
    else:
        client = next((a for a in reversed(addresses) if not trusted.trusts(a)), addresses[0])
    ip = _ip(client)
    return str(ip) if ip is not None else client[:MAX_KEY_CHARS]


class Gate:
    """Admits requests per client and measures how long admitted ones take. Thread-safe.

    `clock` is injected (time.monotonic by default) so tests can move time.
    """

    def __init__(self, config: ServingConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._recent: dict[str, deque[float]] = {}  # client -> times of its requests in the window
        self._running: dict[str, int] = {}  # client -> requests being computed
        self._started: dict[int, tuple[float, float]] = {}  # ticket -> (start time, cost)
        self._done: deque[tuple[float, float]] = deque(maxlen=MEASURED_JOBS)  # (cost, seconds)
        self._tickets = 0

    def count(self, client: str) -> None:
        """Count one request of `client` against the rate limit; LimitError when over it."""
        limit = self.config.rate_per_minute
        if limit <= 0:
            return
        now = self.clock()
        with self._lock:
            times = self._recent.setdefault(client, deque())
            while times and now - times[0] >= RATE_WINDOW_S:
                times.popleft()
            if len(times) >= limit:
                wait = RATE_WINDOW_S - (now - times[0])
                raise LimitError(f"Too many requests: at most {limit} a minute from one address. "
                                 f"Try again in {wait:.0f} s.")
            times.append(now)
            for key in [k for k, t in self._recent.items() if not t]:  # forget idle clients: bounded memory
                del self._recent[key]

    @contextlib.contextmanager
    def running(self, client: str, cost: float) -> Iterator[None]:
        """Hold one of `client`'s running places while the request is computed; LimitError when none is free.

        The time spent inside is recorded against `cost` for the wait estimate when the request ends
        normally; one that failed or was cancelled part-way says nothing about the cost of a whole one."""
        limit = self.config.running_per_client
        with self._lock:
            if limit > 0 and self._running.get(client, 0) >= limit:
                raise LimitError(f"You already have {limit} request{'s' * (limit > 1)} being computed; "
                                 "wait for it to finish, then send the next one.")
            self._running[client] = self._running.get(client, 0) + 1
            self._tickets += 1
            ticket = self._tickets
            self._started[ticket] = (self.clock(), cost)
        finished = False
        try:
            yield
            finished = True
        finally:
            with self._lock:
                start, _ = self._started.pop(ticket)
                if finished:
                    self._done.append((cost, self.clock() - start))
                self._running[client] -= 1
                if not self._running[client]:
                    del self._running[client]

    def seconds_per_unit(self) -> float:
        """Measured server seconds per cost unit over the last finished requests (a prior before any)."""
        with self._lock:
            cost = sum(c for c, _ in self._done)
            return sum(s for _, s in self._done) / cost if cost > 0 else SECONDS_PER_UNIT

    def mean_cost(self, default: float) -> float:
        """Mean cost of the last finished requests (`default` before any)."""
        with self._lock:
            return sum(c for c, _ in self._done) / len(self._done) if self._done else default

    def estimated_wait(self, waiting: int, default_cost: float) -> float:
        """Seconds until a request sent now starts: the running requests' remaining time plus `waiting`
        requests of mean cost ahead of it, shared by `concurrency` workers."""
        rate = self.seconds_per_unit()
        now = self.clock()
        with self._lock:
            remaining = [max(0.0, cost * rate - (now - start)) for start, cost in self._started.values()]
        work = sum(remaining) + waiting * self.mean_cost(default_cost) * rate
        busy = len(remaining) + waiting
        return 0.0 if busy < self.config.concurrency else work / self.config.concurrency

    def describe_wait(self, waiting: int, cost: float) -> str:
        """One line for the page: the place in the queue and the estimated wait."""
        wait = self.estimated_wait(waiting, cost)
        ahead = f"{waiting} request{'s' * (waiting != 1)} waiting ahead of yours"
        start = "it should start at once" if wait < 1 else f"estimated wait about {wait:.0f} s"
        return f"{ahead}; {start} (then about {cost * self.seconds_per_unit():.0f} s to compute)."


# ---------------------------------------------------------------------------------------------
# Disk


def folder_bytes(folder: Path) -> int:
    """Bytes in the files under `folder` (0 when it does not exist)."""
    total = 0
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


def cap_folder(folder: Path, max_bytes: int, keep: Iterable[str | Path] = (), min_age_s: float = 0.0,
               now: float | None = None) -> list[Path]:
    """Delete the oldest files (by modification time) under `folder` while it holds over `max_bytes`.

    Files in `keep` (e.g. cached example inputs) and files younger than `min_age_s` (the uploads of
    requests still waiting in the queue) are never deleted; folders left empty are removed.
    Returns the deleted files."""
    keep = {str(Path(p).resolve()) for p in keep}
    now = time.time() if now is None else now
    files = []
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    deleted = []
    for mtime, size, path in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes or now - mtime < min_age_s:
            break
        if str(path.resolve()) in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
        total -= size
        with contextlib.suppress(OSError):  # not empty, or gone: fine
            if path.parent != Path(folder):
                path.parent.rmdir()
    return deleted


# ---------------------------------------------------------------------------------------------
# Helpers for the app


def fitting_size(seconds: float, sizes, max_cost: float) -> int:
    """The largest of `sizes` (px) at which `seconds` of speech fits the budget; the smallest when
    none does (its `check_cost` then says what to do)."""
    fits = [s for s in sorted(sizes) if request_cost(seconds, s) <= max_cost]
    return fits[-1] if fits else min(sizes)


def longest_seconds(size: int, max_cost: float) -> float:
    """The longest speech (s) that fits the budget at `size` px."""
    return max_cost / (size / REFERENCE_SIZE) ** 2


def upload_seconds(path: str | Path) -> float | None:
    """Duration of an uploaded audio file from its header (None when the header does not say)."""
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except Exception:  # noqa: BLE001  any unreadable header: no estimate; the request's own check reports it
        return None


def waiting_requests(demo, api_name: str) -> int:
    """Requests for `api_name` waiting in a Gradio app's queue (0 when Gradio's internals differ)."""
    try:
        queues = demo._queue.event_queue_per_concurrency_id.values()
        return sum(getattr(event.fn, "api_name", None) == api_name for q in queues for event in q.queue)
    except AttributeError:
        return 0


def queued_files(demo) -> set[str]:
    """Paths of the files (uploads) that requests waiting in a Gradio app's queue, or running, were sent with.

    The cache cap must not delete them: a request that has waited longer than the cap's minimum age
    would find its audio gone ("Audio file not found", seen in eval/soak.py). Reads Gradio 6.x's queue internals; empty
    where they are not as expected (the minimum age still protects young files)."""
    paths: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                paths.add(value["path"])
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    try:
        queue = demo._queue
        events = [e for q in list(queue.event_queue_per_concurrency_id.values()) for e in list(q.queue)]
        events += [e for job in list(queue.active_jobs) for e in job or ()]
    except (AttributeError, TypeError):
        return paths
    for event in events:
        walk(getattr(getattr(event, "data", None), "data", None))
    return paths


MAX_EVENT_RECORDS = 1000  # Gradio's per-event analytics records kept (a few hundred bytes each; it never drops one)


def prune_sessions(demo, idle_since: dict[str, float], keep_s: float, now: float) -> int:
    """Forget what Gradio holds for sessions with nothing waiting or running for `keep_s` seconds; returns
    how many were dropped. Call it periodically with the same `idle_since` dict and the current time.

    Gradio keeps, per session and for the life of the process, a queue of the messages nobody has read
    yet: a client that sends a request and never opens its event stream (a bare POST /call/animate)
    leaves its result there (the 3D view alone is a few MB), so such clients could fill the memory.
    After `keep_s` (the time results are kept on disk) its messages go; a client that comes back later
    starts a new queue. Also caps Gradio's per-event analytics records at MAX_EVENT_RECORDS. Reads
    Gradio 6.x's queue internals; does nothing where they are not as expected."""
    try:
        queue = demo._queue
        pending = queue.pending_messages_per_session
        busy = {e.session_hash for q in list(queue.event_queue_per_concurrency_id.values()) for e in list(q.queue)}
        busy |= {e.session_hash for job in list(queue.active_jobs) for e in job or ()}
    except (AttributeError, TypeError):
        return 0
    dropped = 0
    for session in list(pending):
        if session in busy:
            idle_since.pop(session, None)
        elif now - idle_since.setdefault(session, now) >= keep_s:
            pending.pop(session, None)
            getattr(queue, "pending_event_ids_session", {}).pop(session, None)
            idle_since.pop(session, None)
            dropped += 1
    for session in [s for s in idle_since if s not in pending]:  # gone by Gradio's own hand
        del idle_since[session]
    records = getattr(queue, "event_analytics", None)
    if isinstance(records, dict):
        for event_id in list(records)[: max(0, len(records) - MAX_EVENT_RECORDS)]:  # oldest first
            records.pop(event_id, None)
    return dropped


def event_alive(demo, event_id: str) -> bool:
    """Does anybody still wait for the running queued event `event_id` of a Gradio app?

    False once Gradio has marked it dead (its client closed the page or its event stream) or has
    dropped it from the running jobs (a /cancel: Gradio frees the worker while the function's thread
    goes on computing). Gradio itself stops a generator only between two of its outputs, so a long
    first output would otherwise run to its end. Reads Gradio 6.x's queue internals; where they are
    not as expected the answer is True: work is never stopped on a guess."""
    try:
        jobs = list(demo._queue.active_jobs)
    except (AttributeError, TypeError):
        return True
    for job in jobs:
        for event in job or ():
            if getattr(event, "_id", None) == event_id:
                return bool(getattr(event, "alive", True))
    return False


def collect_garbage() -> None:
    """Free what a finished request left in reference cycles, now rather than at Python's next full collection.

    A request's Plotly figures are cycles (every trace points back at its figure) holding tens of MB
    of arrays; a full collection comes only after hundreds of thousands of new objects, so without
    this they piled up over requests (docs/RELIABILITY.md). Cheap after `freeze_startup`: the
    start-up's objects are not scanned."""
    import gc

    gc.collect()


def freeze_startup() -> int:
    """Move every object alive now (the loaded libraries and models, about half a million objects)
    out of the collector's sight (`gc.freeze`), so that `collect_garbage` only scans what requests
    made since; returns the number frozen."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


MALLOC_ARENAS = 2  # glibc heaps for all threads (its default: 8 per core); MALLOC_ARENA_MAX overrides
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let glibc's malloc use at most `arenas` heaps for all threads (mallopt M_ARENA_MAX), unless the
    operator set MALLOC_ARENA_MAX; call before the threads start. Returns whether it was set.

    Requests run on whichever of Gradio's worker threads is free; with a heap per thread (up to 16
    on 2 cores) each keeps its own freed blocks, and the floor sits higher (eval/heap_floor.py,
    docs/RELIABILITY.md)."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError, TypeError):  # not glibc
        return False


def release_memory() -> None:
    """Collect the garbage, then give the heap memory that Python and torch freed back to the OS
    (glibc's malloc_trim; no-op elsewhere).

    glibc keeps freed blocks of each thread's arena for reuse; after bursts of requests on many
    threads that is hundreds of MB of RSS that nothing uses."""
    import ctypes
    import ctypes.util

    collect_garbage()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
