"""The external daemon's side of the serve protocol, one job at a time over a scripted link."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provisioner import remote
from provisioner.execution import SinkLost
from provisioner.remote import Link, Refused, RemoteDaemon, serve_url
from tests.provisioner_support import RecordingObserver

JOB = {
    "job_id": "7d8c3b5e-0000-4000-8000-000000000001",
    "type": "workspace_build",
    "provisioner": "echo",
    "transition": "start",
    "workspace_name": "ws",
    "workspace_owner": "alice",
    "template_name": "t",
    "template_version": "v1",
    "source": {"start": {"duration_ms": 2000, "logs": ["one", "two"]}},
}


class ScriptedConnection:
    """Answers each request as `answer(message)` says; an exception there is a dropped link."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.sent: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def send(self, raw: str) -> None:
        message = json.loads(raw)
        self.sent.append(message)
        reply = self.answer(message, self)
        if reply is not None:
            self.pending.append(reply)

    def recv(self, timeout: float | None = None) -> str:
        return json.dumps(self.pending.pop(0))

    def close(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.sent]


def daemon(tmp_path, observer) -> RemoteDaemon:
    return RemoteDaemon("http://127.0.0.1:1", "psk", "r1", ["echo"], observer=observer, data_dir=tmp_path)


def test_it_maps_the_coderd_url_to_the_serve_socket():
    assert serve_url("http://h:3000") == "ws://h:3000/api/v2/organizations/default/provisionerdaemons/serve"
    assert serve_url("https://h/prefix/", "my org") == (
        "wss://h/prefix/api/v2/organizations/my%20org/provisionerdaemons/serve"
    )
    with pytest.raises(ValueError):
        serve_url("ftp://h")


def test_it_runs_a_job_and_stops_it_when_coderd_says_it_was_canceled(tmp_path):
    beats = []

    def answer(message, conn):
        if message["type"] == "acquire":
            return {"type": "job", "job": JOB}
        if message["type"] == "heartbeat":
            beats.append(message)
            return {"type": "heartbeat", "state": "canceled" if len(beats) >= 2 else "running"}
        if message["type"] == "complete":
            return {"type": "completed", "job_id": message["job_id"], "status": "canceled"}
        return None

    conn = ScriptedConnection(answer)
    observer = RecordingObserver()
    assert daemon(tmp_path, observer).run_once(Link(conn)) is True
    complete = [m for m in conn.sent if m["type"] == "complete"]
    assert complete == [{"type": "complete", "job_id": JOB["job_id"], "error": "The job was canceled."}]
    logs = [line["output"] for m in conn.sent if m["type"] == "logs" for line in m["logs"]]
    assert logs == ["one"]  # the second line was due after the cancel
    assert [(p, ok, b.workspace_owner) for p, ok, _, b in observer.finished] == [("echo", False, "alice")]


def test_it_gives_up_a_job_when_the_link_drops_and_counts_it_failed(tmp_path):
    def answer(message, conn):
        if message["type"] == "acquire":
            return {"type": "job", "job": JOB}
        if message["type"] == "heartbeat":
            raise OSError("connection reset")
        return None

    conn = ScriptedConnection(answer)
    observer = RecordingObserver()
    with pytest.raises(SinkLost):
        daemon(tmp_path, observer).run_once(Link(conn))
    assert "complete" not in conn.kinds()
    assert [ok for _, ok, _, _ in observer.finished] == [False]


def test_it_says_when_no_job_waits(tmp_path):
    conn = ScriptedConnection(lambda m, c: {"type": "no_job"} if m["type"] == "acquire" else None)
    assert daemon(tmp_path, RecordingObserver()).run_once(Link(conn)) is False


def test_it_stops_for_good_when_coderd_refuses_its_key_or_organization(tmp_path):
    d = daemon(tmp_path, RecordingObserver())
    attempts = []

    def refuse():
        attempts.append(1)
        raise Refused("coderd refused the connection (HTTP 403)", 403)

    d.open = refuse
    with pytest.raises(Refused) as refused:
        d.run()
    assert refused.value.status == 403 and refused.value.final
    assert len(attempts) == 1  # no retry: the same key would be refused again


@pytest.mark.parametrize("failure", [OSError("connection refused"), Refused("bad gateway (HTTP 502)", 502)])
def test_it_keeps_retrying_while_coderd_cannot_be_reached(tmp_path, monkeypatch, failure):
    monkeypatch.setattr(remote, "BACKOFF_INITIAL", 0.0)  # no waiting between attempts
    d = daemon(tmp_path, RecordingObserver())
    attempts = []

    def fail():
        attempts.append(1)
        if len(attempts) == 3:
            d.shutdown()
        raise failure

    d.open = fail
    d.run()  # returns on shutdown, having retried
    assert len(attempts) == 3
