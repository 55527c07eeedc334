"""Two replicas (gunicorn, 2 workers each) on one PostgreSQL and one Redis behave as one control plane.

Both run in-process daemons, so a job may run on either: each build is followed from both replicas
at once, and at least one of the two followers is on the other replica than the daemon (the job
metrics say which one ran it). A real Prometheus scrapes both listeners.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from tests.services import Coderd, Prometheus, total, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LINES = [f"line {i:02d}" for i in range(20)]
# 20 lines over 4 s, one every 0.2 s: streamed lines arrive one by one, polled ones in batches.
STREAMED = {"start": {"duration_ms": 4000, "logs": LINES}, "stop": {}, "delete": {}}
QUICK = {"start": {"duration_ms": 200, "logs": ["one", "two"]}, "stop": {}, "delete": {}}


class Replicas:
    def __init__(self, a: Coderd, b: Coderd) -> None:
        self.a, self.b = a, b
        self.sent = {a: 1, b: 1}  # the readiness probe of /healthz on each
        self.lock = threading.Lock()
        self.token = ""

    def call(self, replica: Coderd, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        with self.lock:
            self.sent[replica] += 1
        status, payload = replica.request(method, path, body, token=self.token)
        assert status == expect, (method, path, status, payload)
        return payload

    def follow(self, replica: Coderd, build_id: str) -> list[tuple[float, dict]]:
        """Follow a build's logs over a websocket until the server closes it: (arrival, line)."""
        with self.lock:
            self.sent[replica] += 1  # a websocket is counted once in requests_processed_total
        url = f"ws://127.0.0.1:{replica.http_port}/api/v2/workspacebuilds/{build_id}/logs?follow"
        got = []
        with connect(
            url,
            origin=f"http://127.0.0.1:{replica.http_port}",
            additional_headers={"Coder-Session-Token": self.token},
            open_timeout=30,
        ) as ws:
            try:
                while True:
                    got.append((time.time(), json.loads(ws.recv(timeout=60))))
            except ConnectionClosedOK:
                pass
            assert ws.close_code == 1000
        return got

    def template(self, replica: Coderd, name: str, source: dict) -> str:
        version = self.call(
            replica,
            "POST",
            "/api/v2/organizations/default/templateversions",
            {"name": f"{name}-v1", "provisioner": "echo", "source": source},
            expect=201,
        )
        self.wait_job(replica, f"/api/v2/templateversions/{version['id']}")
        template = self.call(
            replica,
            "POST",
            "/api/v2/organizations/default/templates",
            {"name": name, "template_version_id": version["id"]},
            expect=201,
        )
        return template["id"]

    def workspace(self, replica: Coderd, template_id: str, name: str) -> dict:
        return self.call(
            replica,
            "POST",
            "/api/v2/organizations/default/members/me/workspaces",
            {"template_id": template_id, "name": name},
            expect=201,
        )

    def wait_job(self, replica: Coderd, path: str) -> dict:
        def done() -> dict | None:
            body = self.call(replica, "GET", path)
            return body if body["job"]["status"] in ("succeeded", "failed", "canceled") else None

        body = wait_for(done, 60, f"the job of {path}", interval=0.2)
        assert body["job"]["status"] == "succeeded", body
        return body


@pytest.fixture(scope="module")
def replicas(pg_server, redis_url, tmp_path_factory):
    database = pg_server.create_database("coderd_replicas")
    env = {
        "CODER_PG_CONNECTION_URL": database,
        "CODER_REDIS_URL": redis_url,
        "CODER_REPLICAS": "2",
        "CODER_SECRET_KEY": "replicas-share-one-secret-key-of-fifty-characters!!",
        "CODER_PROVISIONER_DAEMONS": "2",
        "CODER_PROMETHEUS_REFRESH_INTERVAL": "1s",
    }
    # Started together: both migrate the empty database at once (under an advisory lock).
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(Coderd, tmp_path_factory.mktemp(n), workers=2, env=env) for n in "ab"]
        started = [f.exception() or f.result() for f in starting]
    servers = [s for s in started if isinstance(s, Coderd)]
    try:
        for s in started:
            if isinstance(s, BaseException):
                raise s
        pair = Replicas(*servers)
        with pair.lock:
            pair.sent[pair.a] += 2
        pair.token = pair.a.first_user()
        yield pair
    finally:
        for s in servers:
            s.stop()
        pg_server.drop_database(database)


def jobs_run(replica: Coderd) -> float:
    return total(replica.scrape(), "coderd_provisionerd_job_timings_seconds_count")


def test_it_streams_a_job_s_logs_to_followers_on_both_replicas(replicas) -> None:
    r = replicas
    template_id = r.template(r.b, "streamed", STREAMED)
    ran_before = {s: jobs_run(s) for s in (r.a, r.b)}
    workspace = r.workspace(r.b, template_id, "streamed")
    build_id = workspace["latest_build"]["id"]
    with ThreadPoolExecutor(2) as pool:
        followers = {s: pool.submit(r.follow, s, build_id) for s in (r.a, r.b)}
        streams = {s: f.result(timeout=120) for s, f in followers.items()}

    ran = [s for s in (r.a, r.b) if jobs_run(s) > ran_before[s]]
    assert len(ran) == 1, "the job ran once, on one replica"
    for replica, stream in streams.items():
        outputs = [line["output"] for _, line in stream if line["output"] in LINES]
        assert outputs == LINES, f"follower on {'the daemon' if replica in ran else 'the other'} replica"
        ids = [line["id"] for _, line in stream]
        assert ids == sorted(set(ids))  # in order, none twice
        # Pushed through Redis, lines arrive one by one as they are written (every 0.2 s); the
        # followers' fallback poll (once a second) would deliver the 4 s of lines in 4 or 5 batches.
        arrivals = [arrival for arrival, line in stream if line["output"] in LINES]
        separate = sum(1 for x, y in zip(arrivals, arrivals[1:], strict=False) if y - x > 0.1)
        assert separate >= 10, f"lines arrived in {separate + 1} batches: polled, not pushed"

    build = r.call(r.a, "GET", f"/api/v2/workspacebuilds/{build_id}")
    assert build["job"]["status"] == "succeeded"


def test_it_runs_each_job_once_and_both_replicas_count_the_same(replicas) -> None:
    r = replicas
    template_id = r.template(r.a, "quick", QUICK)
    names = [f"quick-{i}" for i in range(10)]
    with ThreadPoolExecutor(4) as pool:  # created through both replicas at once
        created = list(pool.map(lambda i: r.workspace((r.a, r.b)[i % 2], template_id, names[i]), range(10)))
    for ws in created:
        r.wait_job(r.a, f"/api/v2/workspacebuilds/{ws['latest_build']['id']}")
    for i, ws in enumerate(created):
        logs = r.call((r.a, r.b)[i % 2], "GET", f"/api/v2/workspacebuilds/{ws['latest_build']['id']}/logs")
        assert [line["output"] for line in logs if line["output"] in ("one", "two")] == ["one", "two"]

    # Each build ran once: the replicas' build counters (per replica, summed) count exactly these.
    builds = sum(
        total(s.scrape(), "coderd_workspace_builds_total", template_name="quick", status="success")
        for s in (r.a, r.b)
    )
    assert builds == 10

    # The database gauges are the deployment's: both replicas converge on the same values.
    def same_gauges() -> dict | None:
        seen = []
        for s in (r.a, r.b):
            scrape = s.scrape()
            seen.append(
                {
                    k: v
                    for k, v in scrape.items()
                    if k[0]
                    in (
                        "coderd_api_workspace_latest_build",
                        "coderd_api_total_user_count",
                        "coderd_workspace_latest_build_status",
                    )
                }
            )
        return seen[0] if seen[0] == seen[1] and total(seen[0], "coderd_api_workspace_latest_build") else None

    gauges = wait_for(same_gauges, 30, "both replicas to count the same", interval=0.5)
    assert (
        total(gauges, "coderd_workspace_latest_build_status", template_name="quick", status="succeeded") == 10
    )


def test_it_adds_up_in_a_real_prometheus_scraping_both(replicas, prometheus_bin) -> None:
    r = replicas
    template_id = r.template(r.a, "promql", QUICK)
    for i in range(3):
        ws = r.workspace((r.a, r.b)[i % 2], template_id, f"promql-{i}")
        r.wait_job(r.b, f"/api/v2/workspacebuilds/{ws['latest_build']['id']}")
    for _ in range(25):
        r.call(r.b, "GET", "/api/v2/buildinfo")
    built = sum(
        1
        for ws in r.call(r.a, "GET", "/api/v2/workspaces?limit=100")["workspaces"]
        if ws["latest_build"]["job"]["status"] == "succeeded"
    )
    # Everything either replica was sent, from every test of this module, but the readiness probes:
    # a probe that outlives its 2 s client timeout on a loaded machine is sent again, and both count.
    sent = sum(r.sent.values()) - 2

    server = Prometheus(prometheus_bin, [f"127.0.0.1:{s.metrics_port}" for s in (r.a, r.b)])
    try:
        server.wait_value('count(up{job="coderd"} == 1)', 2)
        # Each replica counts exactly what it was sent, and Prometheus adds up exactly that. (Once one
        # short under load: a follower's handler never returned, waiting on its cancelled channels_redis
        # receive, so its socket was never counted; coderd.websockets now bounds that wait.)
        direct = sum(
            total(s.scrape(), "coderd_api_requests_processed_total")
            - total(s.scrape(), "coderd_api_requests_processed_total", path="/healthz")
            for s in (r.a, r.b)
        )
        assert direct == sent
        server.wait_value('sum(coderd_api_requests_processed_total{path!="/healthz"})', sent)
        server.wait_value('max(coderd_api_workspace_latest_build{status="succeeded"})', built)
        # max, not sum: each replica reports the whole deployment's workspaces.
        server.wait_value('sum(coderd_api_workspace_latest_build{status="succeeded"})', 2 * built)
    finally:
        server.stop()
