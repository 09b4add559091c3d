"""A small run of eval/load_test.py: the app under concurrent clients, and its queue limit.

One app (queue of 2 waiting requests, 2 computed at once) for both runs. The full measurement
(32 requests, 8 clients) is `python eval/load_test.py`; its figures are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import pytest

from eval.load_test import launch_app, run_load

# Requests that may wait; with 2 computed at once, a burst of 8 must be refused in part. Not 1: a client's
# next request can arrive while the server is still releasing the slot of its last one, so two clients
# in turn may briefly have both requests waiting.
QUEUE = 2


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with launch_app(tmp_path_factory.mktemp("app"), "--size", "128", "--queue-size", str(QUEUE)) as running:
        yield running


@pytest.mark.slow
def test_concurrent_clients_all_served_and_nothing_left(app):
    report = run_load(app, requests=4, clients=2, queue_size=QUEUE)  # 2 in flight: within the concurrency limit
    assert (report.succeeded, report.refused, report.failed) == (4, 0, 0), report.errors
    assert 0 < report.latency_s["p50"] <= report.latency_s["p95"] <= report.latency_s["max"]
    assert report.peak_rss_mb > 100  # the pipeline is loaded: hundreds of MB
    assert report.peak_tree_pss_mb > 0
    assert (report.leftover_request_folders, report.leftover_request_files) == (0, 0)


@pytest.mark.slow
def test_a_burst_over_the_queue_limit_is_refused_cleanly(app):
    report = run_load(app, requests=8, clients=8, queue_size=QUEUE)  # all at once, one each
    assert report.failed == 0, report.errors  # a refusal is "queue full", never a crash or a hang
    assert report.refused >= 1 and report.succeeded >= 2 and report.succeeded + report.refused == 8
    assert report.leftover_request_folders == 0
