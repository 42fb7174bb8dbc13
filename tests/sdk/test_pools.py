"""Upstream pools through the official openai SDK: a member whose provider key
is wrong, a slow member and a healthy one behind one model; every SDK call
succeeds, the bad member is taken out and alerted, and a pool with every
member down answers a clean 503 the SDK reports as such."""

from __future__ import annotations

import concurrent.futures
import time

import openai
import pytest

from mock_upstream import MockUpstream

PROVIDER_KEY = "sk-provider-right-key"


@pytest.fixture
def members():
    bad = MockUpstream(expected_key=PROVIDER_KEY).start()
    slow = MockUpstream(delay_seconds=0.3).start()
    healthy = MockUpstream().start()
    yield bad, slow, healthy
    for mock in (bad, slow, healthy):
        mock.stop()


def pool_config(entries: list[tuple[str, str, str]]) -> str:
    toml = '[[upstreams]]\nname = "mini-pool"\nmodels = ["gpt-4o-mini"]\nretries = 2\n'
    for name, url, key_env in entries:
        toml += f'[[upstreams.members]]\nname = "{name}"\nurl = "{url}"\napi_key_env = "{key_env}"\n'
        if name == "bad":
            toml += "weight = 1000\n"  # weighs most: the first request meets it
    return toml


def test_sdk_calls_succeed_through_the_healthy_member(make_gateway, members):
    bad, slow, healthy = members
    config = pool_config([("bad", bad.url, "BAD_KEY"), ("slow", slow.url, "GOOD_KEY"), ("healthy", healthy.url, "GOOD_KEY")])
    gw = make_gateway(config_toml=config, extra_env={"BAD_KEY": "sk-provider-wrong-key", "GOOD_KEY": PROVIDER_KEY})
    key = gw.create_key("pooled")["value"]
    client = gw.client(key, max_retries=0)

    for _ in range(6):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    # Under load the slow member is passed over for the healthy one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        calls = [
            pool.submit(client.chat.completions.create, model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            for _ in range(16)
        ]
        for call in calls:
            assert call.result().choices
    assert len(slow.requests) < len(healthy.requests)

    # The member with the wrong provider key answered once, and its
    # provider key, never the client's, is what each member saw.
    assert len(bad.requests) == 1
    for mock in (bad, slow, healthy):
        for request in mock.requests:
            assert key not in request.headers.get("authorization", "")
    # Alerts raised on the request path are written within a second or so.
    deadline = time.monotonic() + 5
    rejected: list = []
    while not rejected and time.monotonic() < deadline:
        alerts = gw.admin("GET", "/v1/organization/alerts").json()["data"]
        rejected = [a for a in alerts if a["kind"] == "upstream_credential_rejected"]
        time.sleep(0.1)
    assert rejected and rejected[0]["details"]["member"] == "bad"
    states = {
        m["name"]: m
        for pool in gw.admin("GET", "/v1/keygate/upstreams").json()["data"]
        for m in pool["members"]
        if pool["name"] == "mini-pool"
    }
    assert states["healthy"]["state"] == "healthy"
    assert PROVIDER_KEY not in str(states)


def test_every_member_down_is_a_503_the_sdk_reports(make_gateway):
    config = pool_config([("gone-a", "http://127.0.0.1:1/v1", "K"), ("gone-b", "http://127.0.0.1:2/v1", "K")])
    gw = make_gateway(config_toml=config, extra_env={"K": PROVIDER_KEY})
    client = gw.client(gw.create_key("unlucky")["value"], max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert error.status_code == 503
    assert error.body["code"] == "upstream_unavailable"
    request_id = error.response.headers["x-request-id"]
    explained = gw.admin("GET", f"/v1/organization/requests/{request_id}").json()
    assert "`gone-a`" in explained["explanation"] and "`gone-b`" in explained["explanation"]
