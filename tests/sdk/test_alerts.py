"""The alert webhook, checked the way a receiver would: keygate's deliveries
verify with the official SDK's `client.webhooks.verify_signature` (Standard
Webhooks, as OpenAI's own webhooks), and anything altered does not."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from conftest import KEYGATE_BIN, cli, raw_request

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Receiver:
    """A webhook endpoint on loopback keeping each delivery's headers and body."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/keygate"

    def wait(self, n: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < n:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} deliveries, not {n}"
            time.sleep(0.05)


@pytest.fixture
def delivered(make_gateway):
    """A gateway whose webhook (set through the environment) got one alert:
    a key reported leaked. Returns (gateway, receiver, leaked key)."""
    receiver = Receiver()
    gw = make_gateway(extra_env={
        "KEYGATE_ANOMALY__WEBHOOK_URL": receiver.url,
        "KEYGATE_ANOMALY__WEBHOOK_SECRET": SECRET,
    })
    key = gw.create_key("leaky")
    reported = raw_request(gw.url, "POST", "/v1/keys/leaked", body={"keys": [key["value"]]})
    assert reported.status == 202, reported.body
    receiver.wait(1)
    yield gw, receiver, key
    receiver.server.shutdown()


def sdk(secret: str = SECRET) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9", webhook_secret=secret)


def test_a_delivery_verifies_with_the_official_sdk(delivered):
    gw, receiver, key = delivered
    headers, body = receiver.deliveries[0]
    sdk().webhooks.verify_signature(body, headers)
    event = json.loads(body)
    assert event["type"] == "keygate.alert"
    assert event["id"] == headers["webhook-id"]
    assert event["alert"]["kind"] == "leaked_key"
    assert event["alert"]["api_key_id"] == key["id"]
    assert key["value"] not in body.decode(), "the leaked secret itself is never sent"

    listed = gw.admin("GET", "/v1/organization/alerts").json()["data"][0]
    assert listed["delivery"]["status"] == "delivered"
    assert listed["delivery"]["id"] == headers["webhook-id"]
    assert listed["delivery"]["attempts"] == 1

    shown = cli(gw, "alerts")
    assert shown.returncode == 0, shown.stderr
    assert "WEBHOOK" in shown.stdout and "leaked_key" in shown.stdout and "delivered" in shown.stdout, shown.stdout


def test_an_altered_body_timestamp_or_secret_does_not_verify(delivered):
    _, receiver, _ = delivered
    headers, body = receiver.deliveries[0]
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk().webhooks.verify_signature(body.replace(b"leaked_key", b"spike"), headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk().webhooks.verify_signature(body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)})
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk(other).webhooks.verify_signature(body, headers)


def test_a_webhook_url_without_a_secret_is_refused_at_start(make_gateway):
    gw = make_gateway(start=False, extra_env={"KEYGATE_ANOMALY__WEBHOOK_URL": "https://hooks.example.com/k"})
    result = subprocess.run(
        [KEYGATE_BIN, "serve", "--listen", "127.0.0.1:0", "--database", f"sqlite://{gw.db_path}"],
        env=gw._env(), cwd=gw.workdir, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "anomaly.webhook_secret" in result.stderr, result.stderr
    assert "whsec_" in result.stderr, "the error says how to make one"
