"""Rate limits, concurrency caps, budgets and the failed-auth throttle, through the `openai` SDK.

GCRA arithmetic used below (see src/limits/gcra.rs): a limit of N per minute
has an interval of 60/N s and a burst of N; after a take the bucket's
theoretical arrival time (TAT) is `max(TAT, now) + cost * interval`,
`x-ratelimit-reset-*` is `TAT - now` and `x-ratelimit-remaining-*` is
`floor((60 s - reset) / interval)`. keygate's clock has millisecond
resolution, so those values are exact and can be checked exactly.
"""

from __future__ import annotations

import re
import time
from typing import Any

import openai
import pytest

import mock_upstream as m
from conftest import Gateway

MESSAGES = [{"role": "user", "content": "Say hello"}]
VISIT = "Visit https://platform.openai.com/account/rate-limits to learn more."
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
MINUTE_US = 60_000_000
# What one mock chat completion really uses, and costs at the default gpt-4o prices ($2.50 / $10 per 1M).
CHAT_TOKENS = m.CHAT_TOTAL_TOKENS
GPT4O_CHAT_COST_USD = (m.CHAT_PROMPT_TOKENS * 2.50 + m.CHAT_COMPLETION_TOKENS * 10.00) / 1e6  # 0.0000975


# --- helpers --------------------------------------------------------------------


_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|m|s)")
_GO_UNIT_US = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000, "µs": 1, "us": 1}


def go_duration_us(text: str) -> int:
    """Parses a Go `time.Duration` string (`1m0s`, `11.874s`, `120ms`) into microseconds."""
    assert text, "empty duration"
    parts = _GO_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return round(sum(float(n) * _GO_UNIT_US[u] for n, u in parts))


def test_go_duration_parser():
    assert go_duration_us("12s") == 12_000_000
    assert go_duration_us("1m0s") == 60_000_000
    assert go_duration_us("120ms") == 120_000
    assert go_duration_us("11.874s") == 11_874_000
    assert go_duration_us("1h2m3.5s") == 3_723_500_000


def limits_of(headers, kind: str) -> tuple[int, int, int] | None:
    """(limit, remaining, reset µs) of `x-ratelimit-*-{kind}`, or None when all three are absent."""
    names = [f"x-ratelimit-{f}-{kind}" for f in ("limit", "remaining", "reset")]
    values = [headers.get(n) for n in names]
    if all(v is None for v in values):
        return None
    assert all(v is not None for v in values), f"partial x-ratelimit-*-{kind} headers: {dict(zip(names, values))}"
    return int(values[0]), int(values[1]), go_duration_us(values[2])


def assert_consistent(limit: int, remaining: int, reset_us: int) -> None:
    """remaining is what the reset leaves of the minute, in whole units."""
    interval = MINUTE_US // limit
    assert 0 <= reset_us <= MINUTE_US, reset_us
    assert remaining == min(limit, (MINUTE_US - reset_us) // interval), (limit, remaining, reset_us)


class AttemptLog:
    """An httpx client for the SDK that records every HTTP attempt (retries included)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.times: list[float] = []
        self.http_client = openai.DefaultHttpxClient(event_hooks={"response": [self._on_response]})

    def _on_response(self, response) -> None:
        self.statuses.append(response.status_code)
        self.times.append(time.monotonic())


def org_of(gw: Gateway, mock: m.MockUpstream) -> str:
    """The organization id keygate reports (asked with a separate, unlimited key; the mock forgets the call)."""
    org = gw.organization_id(gw.create_key("org-probe")["value"])
    mock.clear()
    return org


def chat(client: openai.OpenAI, model: str = "gpt-4o", **kw: Any):
    """A chat completion through with_raw_response: (headers, parsed completion)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)
    return raw.headers, raw.parse()


def rate_limited(client: openai.OpenAI, model: str = "gpt-4o", **kw: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=model, messages=MESSAGES, **kw)
    e = exc.value
    assert e.status_code == 429
    return e


def rpm_message(org: str, model: str | None, dim: str, limit: int, used: int, requested: int, wait: str) -> str:
    subject = f"Rate limit reached for {model} in organization {org}" if model else f"Rate limit reached for organization {org}"
    return f"{subject} on {dim}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {wait}. {VISIT}"


def bearer(key: str, ip: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {key}"}
    if ip:
        h["X-Forwarded-For"] = ip
    return h


def set_project_limit(gw: Gateway, pid: str, model: str, **limits: Any) -> dict:
    r = gw.admin("POST", f"/v1/organization/projects/{pid}/rate_limits/rl-{model}", body=limits)
    assert r.status == 200, (r.status, r.body)
    return r.json()


def poll(fn, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# --- 1. RPM: headers, 429, and the SDK's own retry -----------------------------------


def test_rpm_headers_429_and_sdk_retry_after_reset(gateway, mock_upstream):
    gw = gateway
    org = org_of(gw, mock_upstream)
    key = gw.create_key("rpm5", rate_limits={"max_requests_per_1_minute": 5})["value"]
    client = gw.client(key)  # max_retries=0
    interval_us = MINUTE_US // 5

    resets = []
    for k in range(1, 6):
        headers, completion = chat(client)
        assert completion.choices[0].message.content == m.CHAT_CONTENT
        limit, remaining, reset_us = limits_of(headers, "requests")
        assert (limit, remaining) == (5, 5 - k), (k, limit, remaining)
        assert_consistent(limit, remaining, reset_us)
        resets.append(reset_us)
        # No token limit is configured: no token headers.
        assert limits_of(headers, "tokens") is None
    # The first take of a fresh bucket reserves exactly one interval.
    assert resets[0] == interval_us
    # k takes reserve k intervals, less the (server) time since the first.
    elapsed = [k * interval_us - r for k, r in enumerate(resets, start=1)]
    assert elapsed[0] == 0 and all(0 <= a <= b for a, b in zip(elapsed, elapsed[1:])), elapsed
    assert elapsed[-1] < 5_000_000, f"five calls took {elapsed[-1]} µs by keygate's clock"
    assert len(mock_upstream.requests) == 5

    e = rate_limited(client)
    assert e.code == "rate_limit_exceeded"
    assert e.type == "requests"
    assert e.param is None
    retry_ms = int(e.response.headers["retry-after-ms"])
    # The 6th fits one interval after the first call: 12 s less the time since then.
    assert 12_000 - 5_000 < retry_ms <= 12_000 - elapsed[-1] // 1000, (retry_ms, elapsed)
    assert int(e.response.headers["retry-after"]) == -(-retry_ms // 1000) >= 1
    wait = f"{retry_ms // 1000}s" if retry_ms % 1000 == 0 else f"{retry_ms / 1000:g}s"
    assert go_duration_us(wait) == retry_ms * 1000
    assert e.body["message"] == rpm_message(org, "gpt-4o", "requests per min (RPM)", 5, 5, 1, wait)
    assert e.response.json() == {"error": {"message": e.body["message"], "type": "requests", "param": None,
                                           "code": "rate_limit_exceeded"}}
    assert "x-ratelimit-limit-requests" not in e.response.headers
    assert len(mock_upstream.requests) == 5, "a refused request must not reach the upstream"

    # The SDK's default retry honours retry-after-ms and gets through once the interval has passed.
    log = AttemptLog()
    retrying = gw.client(key, max_retries=2, http_client=log.http_client, timeout=30)
    t0 = time.monotonic()
    completion = retrying.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    took = time.monotonic() - t0
    assert completion.choices[0].message.content == m.CHAT_CONTENT
    assert log.statuses == [429, 200], log.statuses
    assert 9.0 <= took <= 15.0, took
    assert len(mock_upstream.requests) == 6


# --- 2. TPM -------------------------------------------------------------------------


def test_tpm_large_prompt_refused_small_prompt_works(gateway, mock_upstream):
    gw = gateway
    org = org_of(gw, mock_upstream)
    key = gw.create_key("tpm", rate_limits={"max_tokens_per_1_minute": 1000})["value"]
    client = gw.client(key)
    interval_us = MINUTE_US // 1000

    headers, _ = chat(client, max_tokens=50)
    assert limits_of(headers, "requests") is None  # no request limit configured
    limit, remaining, reset_us = limits_of(headers, "tokens")
    estimate = limit - remaining  # fresh bucket: exactly the estimate is taken
    assert limit == 1000
    assert 50 + 1 <= estimate <= 50 + 6, estimate  # "Say hello" is a few tokens, plus max_tokens
    assert reset_us == estimate * interval_us
    assert_consistent(limit, remaining, reset_us)

    # ~990 tokens: within the limit, but more than is left after the first call.
    big_prompt = "hello " * 980
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": big_prompt}],
                                       max_tokens=10)
    e = exc.value
    assert e.status_code == 429
    assert e.code == "rate_limit_exceeded"
    assert e.type == "tokens"
    msg = e.body["message"]
    match = re.fullmatch(
        rf"Rate limit reached for gpt-4o in organization {re.escape(org)} on tokens per min \(TPM\): "
        rf"Limit 1000, Used (\d+), Requested (\d+)\. Please try again in (\S+)\. {re.escape(VISIT)}",
        msg,
    )
    assert match, msg
    used, requested = int(match[1]), int(match[2])
    assert 980 + 10 <= requested <= 980 + 10 + 5, requested
    assert used <= CHAT_TOKENS  # only the settled first call is in the bucket
    assert int(e.response.headers["retry-after-ms"]) >= 1
    assert int(e.response.headers["retry-after"]) >= 1
    assert len(mock_upstream.requests) == 1

    # A small prompt still fits, and the first call was settled to its real usage (18 tokens).
    headers, completion = chat(client, max_tokens=50)
    assert completion.usage.total_tokens == CHAT_TOKENS
    limit, remaining, reset_us = limits_of(headers, "tokens")
    assert limit == 1000
    assert_consistent(limit, remaining, reset_us)
    # TAT = first call's settled 18 tokens (less the time since) + this estimate.
    assert estimate * interval_us <= reset_us <= (CHAT_TOKENS + estimate) * interval_us, reset_us
    assert reset_us > estimate * interval_us, "the first call's usage should still be in the bucket"
    assert len(mock_upstream.requests) == 2


def test_tpm_request_larger_than_the_limit_is_not_retryable(gateway):
    gw = gateway
    key = gw.create_key("tpm", rate_limits={"max_tokens_per_1_minute": 1000})["value"]
    with pytest.raises(openai.RateLimitError) as exc:
        gw.client(key).chat.completions.create(model="gpt-4o", max_tokens=10,
                                               messages=[{"role": "user", "content": "hello " * 1500}])
    e = exc.value
    assert e.type == "tokens"
    assert e.code == "rate_limit_exceeded"
    assert e.body["message"].startswith("Request too large for gpt-4o in organization "), e.body["message"]
    assert "on tokens per min (TPM): Limit 1000, Requested 15" in e.body["message"]
    assert "The input or output tokens must be reduced in order to run successfully." in e.body["message"]
    assert e.response.headers.get("x-should-retry") == "false"
    assert "retry-after" not in e.response.headers


# --- 3. budgets -----------------------------------------------------------------------


def alerts(gw: Gateway) -> list[dict]:
    r = gw.admin("GET", "/v1/organization/alerts")
    assert r.status == 200, (r.status, r.body)
    return r.json()["data"]


def assert_quota_error(e: openai.RateLimitError) -> None:
    assert e.status_code == 429
    assert e.code == "insufficient_quota"
    assert e.type == "insufficient_quota"
    assert e.param is None
    assert e.body["message"] == QUOTA_MESSAGE
    assert e.response.headers.get("x-should-retry") == "false"
    assert "retry-after" not in e.response.headers
    assert "retry-after-ms" not in e.response.headers


def test_key_budget_spent_gives_insufficient_quota_without_sdk_retries(gateway, mock_upstream):
    gw = gateway
    # One gpt-4o chat costs $0.0000975: the first call is admitted and spends the whole budget.
    created = gw.create_key("budget", monthly_budget_usd=0.00005)
    key, key_id = created["value"], created["id"]
    assert not [a for a in alerts(gw) if a["kind"] == "budget"]

    log = AttemptLog()
    client = gw.client(key, max_retries=2, http_client=log.http_client)
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.usage.prompt_tokens == m.CHAT_PROMPT_TOKENS

    time.sleep(0.2)  # spend is added when the answer ends
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert time.monotonic() - t0 < 1.0, "no backoff sleep expected"
    assert_quota_error(exc.value)
    # One attempt each: the 200, then a single 429 despite max_retries=2.
    assert log.statuses == [200, 429], f"the SDK retried an insufficient_quota 429: {log.statuses}"
    assert len(mock_upstream.requests) == 1

    # The 80 % (default) alert fired when the first call crossed it.
    budget_alerts = poll(lambda: [a for a in alerts(gw) if a["kind"] == "budget"])
    assert len(budget_alerts) == 1, budget_alerts
    a = budget_alerts[0]
    assert a["api_key_id"] == key_id
    assert a["project_id"] == gw.project_id()
    assert f"key {key_id}" in a["message"] and "80%" in a["message"], a["message"]

    # Removing the budget lets the key through again.
    gw.update_key(key_id, monthly_budget_usd=None)
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content == m.CHAT_CONTENT


def test_project_budget_is_shared_by_its_keys(gateway, mock_upstream):
    gw = gateway
    # $0.00015 with an alert at 50 %: the first call ($0.0000975) crosses 50 %, the second is still
    # admitted (spent < budget) and overspends, then both keys are refused.
    project = gw.create_project("budgeted", monthly_budget_usd=0.00015, budget_alert_percent=50)
    pid = project["id"]
    a = gw.create_key("a", project_id=pid)
    b = gw.create_key("b", project_id=pid)
    ca, cb = gw.client(a["value"]), gw.client(b["value"])

    ca.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    alert = poll(lambda: [x for x in alerts(gw) if x["kind"] == "budget"])
    assert len(alert) == 1 and alert[0]["project_id"] == pid and f"project {pid}" in alert[0]["message"], alert
    time.sleep(0.2)
    cb.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    time.sleep(0.2)
    for c in (ca, cb):
        with pytest.raises(openai.RateLimitError) as exc:
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert_quota_error(exc.value)
    assert len(mock_upstream.requests) == 2
    assert len([x for x in alerts(gw) if x["kind"] == "budget"]) == 1, "the alert fires once, when crossed"

    # Another project's keys are unaffected.
    other = gw.client(gw.create_key("default-project")["value"])
    assert other.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


# --- 4. failed-auth throttle -----------------------------------------------------------


def test_failed_auth_flood_is_throttled_per_client_ip(make_gateway):
    gw = make_gateway(extra_env={"KEYGATE_SERVER__TRUSTED_PROXIES": '["127.0.0.1/32"]'})
    valid = gw.create_key("valid")["value"]
    bad = valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB")
    flooder, bystander = "198.51.100.7", "203.0.113.9"

    statuses = []
    t0 = time.monotonic()
    first_429 = None
    for _ in range(40):
        r = gw.request("GET", "/v1/models", headers=bearer(bad, flooder))
        statuses.append(r.status)
        if r.status == 429:
            first_429 = r
            break
    took = time.monotonic() - t0
    # Default 30 a minute (GCRA): a burst of 30 failures, one more every 2 s.
    assert statuses[:30] == [401] * 30, statuses
    assert first_429 is not None, statuses
    assert len(statuses) <= 31 + int(took / 2.0), (len(statuses), took)
    err = first_429.error
    assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded" and err["param"] is None, err
    assert re.fullmatch(r"Rate limit reached for failed authentication attempts from your address: "
                        r"Limit 30 per min, Used 30, Requested 1\. Please try again in \S+\.", err["message"]), err
    retry_ms = int(first_429.headers["retry-after-ms"])
    assert 1 <= retry_ms <= 2000
    assert int(first_429.headers["retry-after"]) == -(-retry_ms // 1000)

    # The flooder keeps getting 429 (through the SDK too) ...
    r = gw.request("GET", "/v1/models", headers=bearer(bad, flooder))
    assert r.status == 429
    sdk_bad = gw.client(bad, default_headers={"X-Forwarded-For": flooder})
    with pytest.raises(openai.RateLimitError) as exc:
        sdk_bad.models.list()
    assert exc.value.code == "rate_limit_exceeded"

    # ... but a valid key from the same address still passes,
    same_ip = gw.client(valid, default_headers={"X-Forwarded-For": flooder})
    assert same_ip.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    assert [x.id for x in same_ip.models.list().data] == m.MODELS
    # ... as does a valid key from another address,
    other_ip = gw.client(valid, default_headers={"X-Forwarded-For": bystander})
    assert other_ip.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    # ... and another address's failures are its own (still 401, not 429).
    with pytest.raises(openai.AuthenticationError):
        gw.client(bad, default_headers={"X-Forwarded-For": bystander}).models.list()
    r = gw.request("GET", "/v1/models", headers=bearer(bad))  # the proxy itself (no X-Forwarded-For)
    assert r.status == 401, (r.status, r.body)


def test_untrusted_peer_cannot_dodge_the_throttle_with_x_forwarded_for(make_gateway):
    gw = make_gateway(extra_env={"KEYGATE_LIMITS__FAILED_AUTH_PER_MINUTE": "3"})  # no trusted proxies
    bad = "sk-proj-" + "x" * 48
    statuses = [gw.request("GET", "/v1/models", headers=bearer(bad, f"198.51.100.{i}")).status for i in range(5)]
    assert statuses[:3] == [401] * 3 and 429 in statuses[3:], statuses
    valid = gw.create_key("valid")["value"]
    assert gw.request("GET", "/v1/models", headers=bearer(valid)).status == 200


# --- 5. header values after N calls (RPM and TPM) ----------------------------------------


def test_header_values_match_configured_limits_after_n_calls(make_gateway, mock_upstream):
    gw = make_gateway(extra_env={"KEYGATE_LIMITS__DEFAULT_MAX_TOKENS": "200"})
    created = gw.create_key("headers")
    key, key_id = created["value"], created["id"]
    client = gw.client(key)

    # Without limits there are no x-ratelimit headers at all.
    headers, _ = chat(client)
    assert not [h for h in headers if h.lower().startswith("x-ratelimit-")], dict(headers)

    rpm, tpm = 10, 600
    r_int, t_int = MINUTE_US // rpm, MINUTE_US // tpm  # 6 s, 100 ms
    gw.update_key(key_id, rate_limits={"max_requests_per_1_minute": rpm, "max_tokens_per_1_minute": tpm})

    # (body extras, completion allowance in the estimate)
    calls = [({"max_tokens": 100}, 100), ({}, 200), ({"max_completion_tokens": 50}, 50), ({"max_tokens": 7}, 7)]
    prompt = None
    settled = 0  # tokens of earlier calls, settled to their real usage
    for k, (extra, allowance) in enumerate(calls, start=1):
        headers, completion = chat(client, **extra)
        assert completion.usage.total_tokens == CHAT_TOKENS
        req = limits_of(headers, "requests")
        tok = limits_of(headers, "tokens")
        assert req and tok, dict(headers)
        assert (req[0], req[1]) == (rpm, rpm - k), (k, req)
        assert_consistent(*req)
        assert_consistent(*tok)
        assert tok[0] == tpm
        # keygate's elapsed time since the first limited call, from the requests bucket (never idle here).
        elapsed = k * r_int - req[2]
        assert 0 <= elapsed < 5_000_000, elapsed
        if k == 1:
            assert req[2] == r_int and elapsed == 0
            prompt = (tok[2] // t_int) - allowance  # a fresh bucket: reset = estimate * interval
            assert 1 <= prompt <= 6, prompt
        estimate = prompt + allowance
        expected_reset = max(settled * t_int - elapsed, 0) + estimate * t_int
        assert tok[2] == expected_reset, (k, tok, expected_reset, settled, elapsed)
        settled += CHAT_TOKENS
        time.sleep(0.05)  # let the settlement land before the next call
    assert len(mock_upstream.requests) == 1 + len(calls)


# --- 6. project limits --------------------------------------------------------------------


def test_project_model_limits_are_shared_by_keys(gateway, mock_upstream):
    gw = gateway
    org = org_of(gw, mock_upstream)
    pid = gw.create_project("limited")["id"]
    star = set_project_limit(gw, pid, "*", max_requests_per_1_minute=4)
    assert star["id"] == "rl-*" and star["model"] == "*" and star["max_requests_per_1_minute"] == 4
    g4o = set_project_limit(gw, pid, "gpt-4o", max_requests_per_1_minute=2)
    assert g4o["object"] == "project.rate_limit" and g4o["id"] == "rl-gpt-4o"

    r = gw.admin("GET", f"/v1/organization/projects/{pid}/rate_limits")
    assert r.status == 200, (r.status, r.body)
    listed = {x["id"]: x for x in r.json()["data"]}
    assert set(listed) == {"rl-*", "rl-gpt-4o"}, listed
    assert {k: listed["rl-gpt-4o"].get(k) for k in ("object", "model", "max_requests_per_1_minute",
                                                     "max_tokens_per_1_minute", "max_requests_per_1_day",
                                                     "max_tokens_per_1_day", "max_concurrent_requests")} == {
        "object": "project.rate_limit", "model": "gpt-4o", "max_requests_per_1_minute": 2,
        "max_tokens_per_1_minute": None, "max_requests_per_1_day": None, "max_tokens_per_1_day": None,
        "max_concurrent_requests": None}, listed["rl-gpt-4o"]
    assert listed["rl-*"]["model"] == "*" and listed["rl-*"]["max_requests_per_1_minute"] == 4

    a = gw.client(gw.create_key("a", project_id=pid)["value"])
    b = gw.client(gw.create_key("b", project_id=pid)["value"])

    # gpt-4o: 2 a minute for the whole project; the headers show the tightest bucket (rl-gpt-4o).
    h, _ = chat(a)
    assert limits_of(h, "requests")[:2] == (2, 1)
    h, _ = chat(b)
    assert limits_of(h, "requests")[:2] == (2, 0)
    for c in (a, b):
        e = rate_limited(c)
        assert e.type == "requests"
        assert e.body["message"].startswith(
            f"Rate limit reached for gpt-4o in organization {org} on requests per min (RPM): Limit 2, Used 2, "
            "Requested 1."), e.body["message"]

    # Other models are not limited by rl-gpt-4o, only by rl-* (4 in all; the refused gpt-4o calls took nothing).
    h, _ = chat(a, model="gpt-4o-mini")
    assert limits_of(h, "requests")[:2] == (4, 1)
    h, _ = chat(b, model="gpt-4o-mini")
    assert limits_of(h, "requests")[:2] == (4, 0)
    e = rate_limited(a, model="gpt-4o-mini")
    assert "on requests per min (RPM): Limit 4, Used 4, Requested 1." in e.body["message"], e.body["message"]
    assert e.body["message"].startswith(f"Rate limit reached for gpt-4o-mini in organization {org}")
    assert len(mock_upstream.requests) == 4

    # A key of another project is unaffected.
    other = gw.client(gw.create_key("default")["value"])
    h, _ = chat(other)
    assert limits_of(h, "requests") is None

    # All-null removes an entry.
    set_project_limit(gw, pid, "gpt-4o", max_requests_per_1_minute=None)
    r = gw.admin("GET", f"/v1/organization/projects/{pid}/rate_limits")
    assert [x["id"] for x in r.json()["data"]] == ["rl-*"]


# --- 7. concurrency -------------------------------------------------------------------------


def open_gated_stream(client: openai.OpenAI):
    """Starts a `gated-stream` chat and reads up to the first content piece; the upstream then waits."""
    stream = client.chat.completions.create(model=m.GATED_STREAM_MODEL, messages=MESSAGES, stream=True)
    it = iter(stream)
    pieces = []
    while not pieces or pieces[-1] != m.CHAT_STREAM_PIECES[0]:
        chunk = next(it)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return stream, it


def test_concurrency_cap_with_open_stream(gateway, mock_upstream):
    gw = gateway
    org = org_of(gw, mock_upstream)
    key = gw.create_key("one-at-a-time", rate_limits={"max_concurrent_requests": 1})["value"]
    client = gw.client(key)

    stream, it = open_gated_stream(client)
    e = rate_limited(client)
    assert e.code == "rate_limit_exceeded" and e.type == "requests"
    assert e.body["message"] == (f"Rate limit reached for gpt-4o in organization {org} on concurrent requests: "
                                 f"Limit 1, Used 1, Requested 1. Please try again in 1s. {VISIT}")
    assert e.response.headers["retry-after"] == "1"
    assert e.response.headers["retry-after-ms"] == "1000"
    upstream_before = len(mock_upstream.requests)

    # The stream ends: the slot is free again.
    mock_upstream.release.set()
    rest = "".join(c.choices[0].delta.content or "" for c in it if c.choices)
    assert m.CHAT_CONTENT.endswith(rest)
    stream.close()
    assert mock_upstream.gate_results == [True]

    def works():
        try:
            return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.RateLimitError:
            return None

    assert poll(works, timeout=2.0), "the slot was not freed after the stream ended"
    assert len(mock_upstream.requests) == upstream_before + 1


def test_concurrency_slot_freed_when_client_hangs_up(gateway, mock_upstream):
    gw = gateway
    key = gw.create_key("one-at-a-time", rate_limits={"max_concurrent_requests": 1})["value"]
    client = gw.client(key)

    stream, _ = open_gated_stream(client)
    rate_limited(client)
    t0 = time.monotonic()
    stream.close()  # hang up mid-stream; the upstream is still waiting on its gate

    def works():
        try:
            return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.RateLimitError:
            return None

    # Well before the mock's gate gives up (GATE_SECONDS) and the upstream stream would end by itself.
    assert poll(works, timeout=m.GATE_SECONDS - 2.0, interval=0.1), \
        "the slot stayed held after the client hung up"
    assert time.monotonic() - t0 < m.GATE_SECONDS - 1.0
    assert mock_upstream.gate_results == [], "freed only after the upstream stream ended"


def test_concurrency_refusal_does_not_consume_rpm(gateway, mock_upstream):
    gw = gateway
    key = gw.create_key("capped", rate_limits={"max_concurrent_requests": 1, "max_requests_per_1_minute": 3})["value"]
    client = gw.client(key)

    stream, it = open_gated_stream(client)  # RPM 1 of 3
    for _ in range(2):
        e = rate_limited(client)
        assert "concurrent requests" in e.body["message"], e.body["message"]
    mock_upstream.release.set()
    list(it)
    stream.close()
    time.sleep(0.2)

    # Two refused requests reached nobody and should have cost nothing: 2 of 3 remain.
    headers, _ = chat(client)
    assert limits_of(headers, "requests")[:2] == (3, 1), dict(headers)
    headers, _ = chat(client)
    assert limits_of(headers, "requests")[:2] == (3, 0), dict(headers)


# --- 8. streams and pass-through routes count too --------------------------------------------


def test_streams_and_pass_through_routes_count_against_rpm(gateway, mock_upstream):
    gw = gateway
    org = org_of(gw, mock_upstream)
    key = gw.create_key("rpm4", rate_limits={"max_requests_per_1_minute": 4})["value"]
    client = gw.client(key)

    # 1: a chat stream (headers on the streaming answer too).
    with client.chat.completions.with_streaming_response.create(model="gpt-4o", messages=MESSAGES,
                                                               stream=True) as resp:
        assert limits_of(resp.headers, "requests")[:2] == (4, 3)
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == m.CHAT_CONTENT

    # 2: a responses stream.
    with client.responses.with_streaming_response.create(model="gpt-4o", input="hi", stream=True) as resp:
        assert limits_of(resp.headers, "requests")[:2] == (4, 2)
        events = [ev.type for ev in resp.parse()]
    assert events[-1] == "response.completed"

    # 3: a pass-through route the mock does not know (its 404 comes back, and still counted).
    r = gw.request("GET", "/v1/files", headers=bearer(key))
    assert r.status == 404, (r.status, r.body)
    assert r.error["message"] == "Invalid URL (GET /v1/files)"
    assert mock_upstream.last().path == "/v1/files"
    assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]) == ("4", "1")

    # 4: GET /v1/models.
    raw = client.models.with_raw_response.list()
    assert limits_of(raw.headers, "requests")[:2] == (4, 0)
    upstream_calls = len(mock_upstream.requests)

    # The minute is spent for every kind of request.
    with pytest.raises(openai.RateLimitError) as exc:
        client.models.list()
    assert exc.value.body["message"].startswith(
        f"Rate limit reached for organization {org} on requests per min (RPM): Limit 4, Used 4, Requested 1.")
    r = gw.request("GET", "/v1/files", headers=bearer(key))
    assert r.status == 429 and r.error["code"] == "rate_limit_exceeded", (r.status, r.body)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert exc.value.body["message"].startswith(
        f"Rate limit reached for gpt-4o in organization {org} on requests per min (RPM): Limit 4, Used 4")
    assert len(mock_upstream.requests) == upstream_calls
