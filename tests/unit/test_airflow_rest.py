"""The REST client of `tenant-release redeploy`: credentials go only to the address given, never in clear over a network."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tenant_release import airflow_rest, cli
from tenant_release.airflow_rest import AirflowApiError


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080", "http://127.0.0.1:8080/", "http://[::1]:8080", "https://airflow.example.com", "https://10.0.0.5"],
)
def test_https_anywhere_and_plain_http_to_this_machine_are_accepted(url: str):
    assert airflow_rest.base_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://airflow.example.com:8080", "http://10.0.0.5", "http://airflow"])
def test_plain_http_to_another_host_is_refused_saying_how_to_fix_it(url: str):
    with pytest.raises(AirflowApiError) as refused:
        airflow_rest.base_url(url)
    message = str(refused.value)
    assert "which is not this machine: the API token or password would cross the network in clear text" in message
    assert "Use https://" in message and "ssh -L 8080:" in message and "--airflow-url" in message


def test_the_command_refuses_a_plain_http_url_before_aws(capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_TOKEN", "jwt")
    code = cli.main(["redeploy", "v1.4.0", "--failed", "--airflow-url", "http://airflow.example.com:8080"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("tenant-release: Airflow URL 'http://airflow.example.com:8080' is plain http to airflow.example.com")


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with `answer(path)` -> (status, headers) and records (path, Authorization, body)."""

    answer: Callable[[str], tuple[int, dict[str, str]]]
    seen: list[tuple[str, str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        self.seen.append((self.path, self.headers.get("Authorization", ""), body))
        status, headers = type(self).answer(self.path)
        data = json.dumps({"access_token": "jwt", "dag_run_id": "manual__x"}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[str], tuple[int, dict[str, str]]]], tuple[str, list]]]:
    started: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str], tuple[int, dict[str, str]]]) -> tuple[str, list]:
        seen: list = []
        handler = type("Handler", (_Recorder,), {"answer": staticmethod(answer), "seen": seen})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_with_the_token(servers, monkeypatch: pytest.MonkeyPatch, status: int):
    elsewhere, seen_elsewhere = servers(lambda path: (201, {}))
    airflow, seen = servers(lambda path: (status, {"Location": f"{elsewhere}{path}"}))
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_TOKEN", "secret-jwt")

    with pytest.raises(AirflowApiError) as refused:
        airflow_rest.trigger_run(airflow, "tenant_release", {"release_tag": "v1.4.0"})

    assert str(refused.value).startswith(
        f"Airflow at {airflow}/api/v2/dags/tenant_release/dagRuns answered HTTP {status}, a redirect to "
        f"{elsewhere}/api/v2/dags/tenant_release/dagRuns; not followed"
    )
    assert [auth for _, auth, _ in seen] == ["Bearer secret-jwt"]  # the address given got it, once
    assert seen_elsewhere == []  # the redirect target got nothing, token or otherwise
    assert "secret-jwt" not in str(refused.value)


def test_a_redirected_login_does_not_send_the_password_on(servers, monkeypatch: pytest.MonkeyPatch):
    elsewhere, seen_elsewhere = servers(lambda path: (201, {}))
    airflow, _ = servers(lambda path: (302, {"Location": f"{elsewhere}/auth/token"}))
    monkeypatch.delenv("TENANT_RELEASE_AIRFLOW_TOKEN", raising=False)
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_USER", "admin")
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_PASSWORD", "s3cret")

    with pytest.raises(AirflowApiError, match=r"answered HTTP 302, a redirect to .*/auth/token; not followed"):
        airflow_rest.trigger_run(airflow, "tenant_release", {"release_tag": "v1.4.0"})
    assert seen_elsewhere == []


def test_without_a_redirect_the_run_is_triggered_with_the_token(servers, monkeypatch: pytest.MonkeyPatch):
    airflow, seen = servers(lambda path: (201, {"Content-Type": "application/json"}))
    monkeypatch.setenv("TENANT_RELEASE_AIRFLOW_TOKEN", "secret-jwt")
    run = airflow_rest.trigger_run(airflow, "tenant_release", {"release_tag": "v1.4.0"})
    assert run["dag_run_id"] == "manual__x"
    assert seen == [
        ("/api/v2/dags/tenant_release/dagRuns", "Bearer secret-jwt", {"logical_date": None, "conf": {"release_tag": "v1.4.0"}})
    ]
