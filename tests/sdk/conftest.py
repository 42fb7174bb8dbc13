"""Fixtures that run a real `keygate serve` against an in-process mock upstream.

The keygate binary comes from $KEYGATE_BIN (default: target/debug/keygate in
this repository). Nothing here builds it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_upstream import MockUpstream  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYGATE_BIN = os.environ.get("KEYGATE_BIN", str(REPO_ROOT / "target" / "debug" / "keygate"))

ADMIN_KEY = "sk-admin-test-0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
UPSTREAM_SECRET = "sk-upstream-secret-for-tests"

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0

# The SDK reads these from the environment; a stray value must not leak into tests.
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY",
             "OPENAI_CUSTOM_HEADERS", "OPENAI_LOG"):
    os.environ.pop(_var, None)


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict:
        return self.json()["error"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_request(
    url: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | str | dict | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> RawResponse:
    """One HTTP request with exactly the given headers (no Authorization unless given)."""
    assert url.startswith("http://")
    hostport = url[len("http://"):].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return RawResponse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def basic_auth(key: str) -> str:
    return "Basic " + base64.b64encode(f":{key}".encode()).decode()


class Gateway:
    """A `keygate serve` process on a free loopback port with its own SQLite file."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        admin_key: str | None = ADMIN_KEY,
        upstream_secret: str | None = UPSTREAM_SECRET,
        extra_env: dict[str, str] | None = None,
        config_toml: str | None = None,
    ) -> None:
        """`config_toml`, when given, is written to `keygate.toml` in the workdir and
        passed as KEYGATE_CONFIG (for settings env vars cannot express, such as
        several `[[upstreams]]`)."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = workdir / "keygate.db"
        self.upstream_url = upstream_url
        self.admin_key = admin_key
        self.upstream_secret = upstream_secret
        self.extra_env = dict(extra_env or {})
        self.config_path: Path | None = None
        if config_toml is not None:
            self.config_path = workdir / "keygate.toml"
            self.config_path.write_text(config_toml)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.runs = 0
        self.stderr_path: Path | None = None
        self.returncode: int | None = None
        self._project_id: str | None = None

    # --- lifecycle --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGATE_", "OPENAI_"))}
        env["NO_COLOR"] = "1"
        env["KEYGATE_LOG"] = env.get("KEYGATE_TEST_LOG", "info")
        if self.admin_key is not None:
            env["KEYGATE_ADMIN_KEY"] = self.admin_key
        if self.upstream_secret is not None:
            env["KEYGATE_UPSTREAM_API_KEY"] = self.upstream_secret
        if self.config_path is not None:
            env["KEYGATE_CONFIG"] = str(self.config_path)
        env.update(self.extra_env)
        return env

    def start(self) -> "Gateway":
        assert self.proc is None, "gateway already running"
        if not os.access(KEYGATE_BIN, os.X_OK):
            pytest.fail(f"keygate binary not found or not executable: {KEYGATE_BIN} (set KEYGATE_BIN)")
        self.runs += 1
        self.port = free_port()
        self.stderr_path = self.workdir / f"stderr-{self.runs}.log"
        stdout_path = self.workdir / f"stdout-{self.runs}.log"
        with open(self.stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    KEYGATE_BIN,
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--database",
                    f"sqlite://{self.db_path}",
                    "--upstream",
                    self.upstream_url,
                ],
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                self.proc = None
                pytest.fail(f"keygate exited with {self.returncode} before ready; stderr:\n{self.stderr()}")
            try:
                r = raw_request(self.url, "GET", "/readyz", timeout=1.0)
                if r.status == 200:
                    return
                last_error = AssertionError(f"/readyz answered {r.status}: {r.body[:200]!r}")
            except OSError as e:
                last_error = e
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"keygate not ready within {READY_TIMEOUT_S}s ({last_error}); stderr:\n{self.stderr()}")

    def stop(self) -> int | None:
        """SIGTERM, wait for exit; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
                self.returncode = proc.returncode
                raise AssertionError(f"keygate ignored SIGTERM for {STOP_TIMEOUT_S}s; killed")
        self.returncode = proc.returncode
        return self.returncode

    def restart(self) -> "Gateway":
        self.stop()
        return self.start()

    def stderr(self, run: int | None = None) -> str:
        path = self.stderr_path if run is None else self.workdir / f"stderr-{run}.log"
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    # --- HTTP helpers -----------------------------------------------------

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None,
                timeout: float = HTTP_TIMEOUT_S) -> RawResponse:
        return raw_request(self.url, method, path, headers=headers, body=body, timeout=timeout)

    def admin(self, method: str, path: str, body: Any = None, key: str | None = None) -> RawResponse:
        key = key or self.admin_key
        assert key, "no admin key known for this gateway"
        return self.request(method, path, headers={"Authorization": f"Bearer {key}"}, body=body)

    def project_id(self) -> str:
        if self._project_id is None:
            r = self.admin("GET", "/v1/organization/projects")
            assert r.status == 200, (r.status, r.body)
            projects = r.json()["data"]
            assert projects, "no project exists"
            default = [p for p in projects if p.get("name") == "Default project"]
            self._project_id = (default or projects)[0]["id"]
        return self._project_id

    def create_key(self, name: str = "test-key", prefix: str | None = None, project_id: str | None = None,
                   **fields: Any) -> dict:
        """Issues a project key; `fields` are extra body fields (permissions, scopes, models, allowed_ips...)."""
        body: dict[str, Any] = {"name": name, **fields}
        if prefix is not None:
            body["prefix"] = prefix
        r = self.admin("POST", f"/v1/organization/projects/{project_id or self.project_id()}/api_keys", body=body)
        assert r.status in (200, 201), (r.status, r.body)
        key = r.json()
        assert key.get("value") and key.get("id"), key
        return key

    def update_key(self, key_id: str, project_id: str | None = None, **fields: Any) -> dict:
        r = self.admin("POST", f"/v1/organization/projects/{project_id or self.project_id()}/api_keys/{key_id}",
                       body=fields)
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def create_project(self, name: str = "test-project", **fields: Any) -> dict:
        r = self.admin("POST", "/v1/organization/projects", body={"name": name, **fields})
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def organization_id(self, key: str) -> str:
        """The organization keygate reports in `openai-organization`, as OpenAI does."""
        r = self.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status == 200, (r.status, r.body)
        org = r.headers.get("openai-organization")
        assert org and org.startswith("org-"), org
        return org

    def revoke(self, key_id: str) -> RawResponse:
        r = self.admin("DELETE", f"/v1/organization/projects/{self.project_id()}/api_keys/{key_id}")
        assert r.status == 200, (r.status, r.body)
        return r

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, **kw)


CLI_TIMEOUT_S = 30.0


def cli(gw: "Gateway", *args: str, admin_key: str = ADMIN_KEY) -> subprocess.CompletedProcess:
    """`keygate ARGS` as a client of `gw` (KEYGATE_URL, KEYGATE_ADMIN_KEY), no colour, no stray env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGATE_", "OPENAI_"))}
    env.update(KEYGATE_URL=gw.url, KEYGATE_ADMIN_KEY=admin_key, NO_COLOR="1")
    return subprocess.run([KEYGATE_BIN, *args], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def mock_upstream():
    mock = MockUpstream().start()
    yield mock
    mock.stop()


@pytest.fixture(autouse=True)
def _clean_mock(request):
    """Each test sees only the upstream requests it caused."""
    if "mock_upstream" in request.fixturenames:
        mock = request.getfixturevalue("mock_upstream")
        mock.clear()
        yield
        mock.release.set()  # never leave a gated stream waiting
    else:
        yield


@pytest.fixture
def make_gateway(tmp_path_factory, mock_upstream):
    """Factory for gateways (started); all are stopped at teardown."""
    started: list[Gateway] = []

    def make(start: bool = True, upstream_url: str | None = None, **kw: Any) -> Gateway:
        gw = Gateway(tmp_path_factory.mktemp("keygate"), upstream_url or mock_upstream.url, **kw)
        started.append(gw)
        return gw.start() if start else gw

    yield make
    for gw in started:
        try:
            gw.stop()
        except AssertionError:
            pass


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    return make_gateway()


@pytest.fixture
def project_key(gateway) -> str:
    return gateway.create_key("sdk-tests")["value"]


@pytest.fixture
def client(gateway, project_key) -> openai.OpenAI:
    return gateway.client(project_key)
