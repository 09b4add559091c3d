"""The app's serving limits (blendtalk/serving.py) with a fake clock: cost budget, rate limit, one
running request per client, who the client is (X-Forwarded-For only behind trusted proxies), the
wait estimate and the cache's disk cap."""

from __future__ import annotations

import os
import threading
import time

import pytest

from blendtalk.serving import (Cancelled, Gate, LimitError, ServingConfig, TrustedProxies, cancellable, cap_folder,
                               check_cost, client_key, event_alive, fitting_size, folder_bytes, forwarded_for,
                               prune_sessions, queued_files)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_cost_budget_refuses_with_what_to_do():
    assert check_cost(60.0, 256, 60.0) == 60.0  # a minute at 256 px fits
    assert check_cost(15.0, 512, 60.0) == 60.0  # 15 s at 512 px costs 4 x 15
    with pytest.raises(LimitError, match=r"at 512 px at most 15 s\. Use a shorter clip .* or choose a video size of "
                                         r"256 px"):
        check_cost(59.0, 512, 60.0)
    with pytest.raises(LimitError, match="at most 4 s.*shorter clip"):
        check_cost(10.0, 128, 1.0)  # no smaller size helps


def test_fitting_size_is_the_sharpest_within_the_budget():
    sizes = (128, 256, 384, 512)
    assert fitting_size(3.0, sizes, 60.0) == 512
    assert fitting_size(15.0, sizes, 60.0) == 512  # exactly the budget
    assert fitting_size(20.0, sizes, 60.0) == 384  # 20 x 2.25 = 45 units
    assert fitting_size(60.0, sizes, 60.0) == 256
    assert fitting_size(0.0, sizes, 60.0) == 512  # no estimate yet (the page's wait line before the upload is read)
    assert fitting_size(500.0, sizes, 60.0) == 128  # nothing fits: the smallest, whose check says what to do
    with pytest.raises(LimitError):
        check_cost(500.0, fitting_size(500.0, sizes, 60.0), 60.0)


def test_rate_limit_per_client_and_window():
    clock = Clock()
    gate = Gate(ServingConfig(rate_per_minute=3), clock)
    for _ in range(3):
        gate.count("1.2.3.4")
    with pytest.raises(LimitError, match="at most 3 a minute from one address. Try again in 60 s"):
        gate.count("1.2.3.4")
    gate.count("5.6.7.8")  # another client is not affected
    clock.t += 60.0
    gate.count("1.2.3.4")  # the window has passed
    assert len(gate._recent) == 2  # only clients with requests in the window are remembered
    Gate(ServingConfig(rate_per_minute=0), clock).count("x")  # 0: no limit


def test_one_client_cannot_hold_both_workers():
    gate = Gate(ServingConfig(running_per_client=1), Clock())
    with gate.running("1.2.3.4", 1.0):
        with pytest.raises(LimitError, match="already have 1 request being computed; wait for it to finish"):
            with gate.running("1.2.3.4", 1.0):
                pass
        with gate.running("5.6.7.8", 1.0):  # the other worker stays for others
            pass
    with gate.running("1.2.3.4", 1.0):  # released on exit, also after an error
        pass
    with pytest.raises(RuntimeError):
        with gate.running("1.2.3.4", 1.0):
            raise RuntimeError("render failed")
    with gate.running("1.2.3.4", 1.0):
        pass
    assert gate._running == {}


def test_only_requests_that_end_normally_are_measured():
    """A request cancelled or failed part-way took less time than its cost says: it must not
    lower the seconds-per-unit that the wait estimate uses."""
    clock = Clock()
    gate = Gate(ServingConfig(), clock)
    with gate.running("a", 10.0):
        clock.t += 20.0
    for error in (Cancelled(0.1, "render"), RuntimeError("render failed")):
        with pytest.raises(type(error)):
            with gate.running("b", 10.0):
                clock.t += 1.0
                raise error
    assert gate.seconds_per_unit() == pytest.approx(2.0) and gate._running == {}


def test_cancellable_progress_stops_when_the_client_has_left():
    seen, alive = [], [True]
    report = cancellable(lambda fraction, desc=None: seen.append((fraction, desc)), lambda: alive[0])
    report(0.1, desc="audio front end")
    alive[0] = False
    with pytest.raises(Cancelled, match=r"cancelled at render \(45% done\)") as stop:
        report(0.45, desc="render")
    assert seen == [(0.1, "audio front end")] and (stop.value.fraction, stop.value.stage) == (0.45, "render")
    assert not isinstance(stop.value, ValueError)  # passes the handlers that turn bad input into a message
    cancellable(None, lambda: True)(0.5)  # no progress bar (an API call without one): only the check


class FakeEvent:
    def __init__(self, event_id, alive=True):
        self._id, self.alive = event_id, alive


class FakeDemo:
    def __init__(self, *jobs, waiting=()):
        queues = {"animate": type("EventQueue", (), {"queue": list(waiting)})()}
        self._queue = type("Queue", (), {"active_jobs": list(jobs), "event_queue_per_concurrency_id": queues})()


def test_queued_files_names_the_uploads_of_waiting_and_running_requests():
    def event(*inputs):
        e = FakeEvent("x")
        e.data = type("Body", (), {"data": list(inputs)})()
        return e

    audio = {"path": "/cache/a/speech.wav", "meta": {"_type": "gradio.FileData"}}
    demo = FakeDemo([event(audio, "", "happy")], None, waiting=[event({"path": "/cache/b/take.wav"}, "hi"),
                                                                event(None, "typed text")])
    assert queued_files(demo) == {"/cache/a/speech.wav", "/cache/b/take.wav"}
    assert queued_files(object()) == set()  # Gradio's internals not as expected: nothing kept beyond the age rule


def test_event_alive_reads_the_running_jobs():
    demo = FakeDemo([FakeEvent("a")], None, [FakeEvent("b", alive=False)])
    assert event_alive(demo, "a")  # running, its client connected
    assert not event_alive(demo, "b")  # its client closed the stream: Gradio marked it dead
    assert not event_alive(demo, "c")  # no longer among the running jobs (/cancel)
    assert event_alive(object(), "a")  # Gradio's internals not as expected: never stop on a guess


def test_estimated_wait_from_queue_position_and_measured_cost():
    clock = Clock()
    gate = Gate(ServingConfig(concurrency=2), clock)
    for cost in (10.0, 30.0):  # measured: 2 s per unit
        with gate.running(f"c{cost}", cost):
            clock.t += 2.0 * cost
    assert gate.seconds_per_unit() == pytest.approx(2.0) and gate.mean_cost(1.0) == pytest.approx(20.0)
    assert gate.estimated_wait(0, 20.0) == 0.0  # a worker is free
    with gate.running("a", 20.0), gate.running("b", 20.0):  # both busy for 40 s, 10 s gone
        clock.t += 10.0
        assert gate.estimated_wait(0, 20.0) == pytest.approx((30 + 30) / 2)
        assert gate.estimated_wait(3, 20.0) == pytest.approx((30 + 30 + 3 * 40) / 2)
        assert "3 requests waiting ahead of yours; estimated wait about 90 s" in gate.describe_wait(3, 20.0)


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted():
    """A client of a bare server cannot choose its key: whatever it writes in X-Forwarded-For, the
    limits count its connection's address."""
    for spoof in (["203.0.113.5"], ["198.51.100.7, 10.0.0.1"], []):
        assert client_key("192.0.2.9", spoof) == "192.0.2.9"
    assert client_key(None, ["203.0.113.5"]) == "unknown"


def test_trusted_proxies_by_count():
    """Behind N proxies each appending the address it saw, the client is the N-th from the right;
    addresses the client wrote itself (to the left) are never taken."""
    one, two = TrustedProxies.parse("1"), TrustedProxies.parse("2")
    assert client_key("10.0.0.1", ["203.0.113.5"], one) == "203.0.113.5"
    assert client_key("10.0.0.1", ["1.1.1.1, 203.0.113.5"], one) == "203.0.113.5"  # 1.1.1.1: the client's own say-so
    assert client_key("10.0.0.1", ["1.1.1.1, 203.0.113.5, 10.0.0.2"], two) == "203.0.113.5"
    assert client_key("10.0.0.1", ["1.1.1.1", "203.0.113.5"], one) == "203.0.113.5"  # repeated header = one list
    assert client_key("10.0.0.1", [], one) == "10.0.0.1"  # no header: the peer
    assert client_key("10.0.0.1", ["203.0.113.5:4711"], one) == "203.0.113.5"  # a port does not make a new client


def test_trusted_proxies_by_network():
    """Peers inside the trusted networks are proxies; the client is the right-most address outside
    them. A peer outside them reached the app directly and its header is ignored."""
    spaces = TrustedProxies.parse("10.0.0.0/8, 127.0.0.1")
    assert client_key("10.16.3.80", ["203.0.113.5"], spaces) == "203.0.113.5"
    assert client_key("10.16.3.80", ["1.1.1.1, 203.0.113.5, 10.2.0.7"], spaces) == "203.0.113.5"
    assert client_key("127.0.0.1", ["2001:db8::1"], spaces) == "2001:db8::1"
    assert client_key("192.0.2.9", ["203.0.113.5"], spaces) == "192.0.2.9"  # not a proxy: its own say-so
    assert client_key("10.16.3.80", ["10.1.1.1"], spaces) == "10.1.1.1"  # all trusted: the left-most
    assert client_key("10.16.3.80", ["x" * 500], spaces) == "x" * 64  # not an address: kept short


def test_trusted_proxies_parse_refuses_with_what_to_write():
    assert not TrustedProxies.parse("").enabled and not TrustedProxies.parse(None).enabled
    assert not TrustedProxies.parse("0").enabled
    assert TrustedProxies.parse("127.0.0.1,::1").trusts("::1")
    for bad, match in (("proxy.example.org", "'proxy.example.org' is not an IP address or network; give the number"),
                       ("10.0.0.0/8,", "'' is not an IP address"), ("1000", "at most 16")):
        with pytest.raises(ValueError, match=match):
            TrustedProxies.parse(bad)


def test_forwarded_for_reads_starlette_and_plain_headers():
    from starlette.datastructures import Headers

    raw = Headers(raw=[(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"203.0.113.5")])
    assert forwarded_for(raw) == ["1.1.1.1", "203.0.113.5"]
    assert forwarded_for({"X-Forwarded-For": "203.0.113.5"}) == ["203.0.113.5"]
    assert forwarded_for(None) == [] and forwarded_for({}) == []


def test_gate_is_thread_safe():
    gate = Gate(ServingConfig(rate_per_minute=0, running_per_client=0))

    def work(k):
        for _ in range(200):
            with gate.running(f"c{k % 3}", 1.0):
                pass

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate._running == {} and gate._started == {}


def test_cache_cap_deletes_oldest_first_and_keeps_examples(tmp_path):
    cache = tmp_path / "gradio"
    now = time.time()
    files = []
    for i in range(6):  # 6 results of 1 MB, i minutes old from the newest
        path = cache / f"hash{i}" / f"result{i}.mp4"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\0" * 1_000_000)
        os.utime(path, (now - 600 + 60 * i, now - 600 + 60 * i))
        files.append(path)
    example = files[0]  # the oldest, but an example input Gradio keeps
    deleted = cap_folder(cache, 3_500_000, keep=[example])
    assert deleted == files[1:4]  # the oldest three (after the kept one) go
    assert folder_bytes(cache) == 3_000_000 <= 3_500_000
    assert example.exists() and all(p.exists() for p in files[4:])
    assert not files[1].parent.exists()  # its emptied folder too
    assert cap_folder(cache, 3_500_000) == []  # under the cap: nothing more


def test_cache_cap_spares_young_files(tmp_path):
    """Uploads of requests still waiting in the queue are young: the cap leaves them (found by
    eval/soak.py: a 100 MB cap deleted queued uploads, 14 of 60 requests got 'Audio file not found')."""
    now = time.time()
    for i, age in enumerate((900, 60, 10)):
        path = tmp_path / f"f{i}.wav"
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (now - age, now - age))
    assert [p.name for p in cap_folder(tmp_path, 0, min_age_s=120, now=now)] == ["f0.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1.wav", "f2.wav"]


def test_release_memory_runs():
    from blendtalk.serving import release_memory

    release_memory()  # glibc: malloc_trim; elsewhere nothing, and never an error


def test_a_request_s_cycles_are_freed_at_once_and_start_up_objects_are_frozen():
    """A Plotly figure is a reference cycle: without a collection its arrays outlive the request."""
    import gc
    import weakref

    import numpy as np
    import plotly.graph_objects as go

    from blendtalk.serving import collect_garbage, freeze_startup

    kept = go.Figure(go.Scatter(y=np.arange(10)))  # alive at "start-up": frozen, not freed
    try:
        assert freeze_startup() > 0
        figure = go.Figure(go.Scatter(y=np.zeros(1_000_000)))
        alive = weakref.ref(figure)
        gc.disable()  # no automatic collection may do it for us
        del figure
        assert alive() is not None  # the cycle holds it
        collect_garbage()
        assert alive() is None and len(kept.data) == 1
    finally:
        gc.enable()
        gc.unfreeze()


def test_malloc_arenas_are_limited_unless_the_operator_chose(monkeypatch):
    import ctypes.util

    from blendtalk.serving import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's setting stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is (ctypes.util.find_library("c") is not None)  # glibc (Linux): set


def test_sessions_nobody_reads_are_forgotten_after_the_keep_time():
    """A client that queues a request and never opens its event stream leaves its result in Gradio's
    per-session message queue; after the keep time (as its files on disk) it goes. Sessions with a
    request waiting or running are never touched; analytics records are capped."""
    running, waiting = FakeEvent("r"), FakeEvent("w")
    running.session_hash, waiting.session_hash = "busy", "queued"
    demo = FakeDemo([running], waiting=[waiting])
    queue = demo._queue
    queue.pending_messages_per_session = {"busy": ["msg"], "queued": [], "unread": ["4 MB of result"], "read": []}
    queue.pending_event_ids_session = {"busy": {"r"}, "queued": {"w"}, "unread": set(), "read": set()}
    queue.event_analytics = {f"e{i}": {} for i in range(1200)}
    idle: dict[str, float] = {}
    assert prune_sessions(demo, idle, keep_s=600, now=0.0) == 0  # idle from now on
    assert prune_sessions(demo, idle, keep_s=600, now=599.0) == 0
    assert prune_sessions(demo, idle, keep_s=600, now=600.0) == 2
    assert sorted(queue.pending_messages_per_session) == ["busy", "queued"] == sorted(queue.pending_event_ids_session)
    assert idle == {} and len(queue.event_analytics) == 1000 and "e1199" in queue.event_analytics
    assert prune_sessions(object(), {}, 600, 0.0) == 0  # Gradio's internals not as expected: nothing done
