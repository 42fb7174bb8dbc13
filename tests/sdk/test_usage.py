"""Metering: every forwarded request lands in the Usage and Costs APIs with the
upstream's own token counts, and the `keygate usage` CLI reports them.

Token numbers come from the mock upstream (its constants, or its recorded
answers); costs are checked in integer nano-dollars against the default prices.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import openai
import pytest

import mock_upstream as m
from conftest import cli, ADMIN_KEY, KEYGATE_BIN, Gateway

MESSAGES = [{"role": "user", "content": "Say hello"}]
POLL_TIMEOUT_S = 6.0

# Default prices in nano-dollars per 1M tokens: (input, cached input, output).
PRICES = {
    "gpt-4o": (2_500_000_000, 1_250_000_000, 10_000_000_000),
    "gpt-4o-mini": (150_000_000, 75_000_000, 600_000_000),
    "text-embedding-3-small": (20_000_000, 20_000_000, 0),
}

COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"


# --- expected usage, computed on this side --------------------------------------


@dataclass
class Call:
    """One request the test made, with the tokens the mock upstream reported for it."""

    kind: str  # COMPLETIONS or EMBEDDINGS
    model: str
    key: dict  # the key object from the Administration API
    project_id: str
    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0

    @property
    def cost_nanos(self) -> int:
        price = PRICES.get(self.model)
        if price is None:
            return 0
        p_in, p_cached, p_out = price
        return ((self.input - self.cached) * p_in + self.cached * p_cached + self.output * p_out) // 1_000_000

    def group_value(self, group: str) -> str:
        return {
            "model": self.model,
            "line_item": self.model,
            "api_key_id": self.key["id"],
            "prefix": self.key["prefix"],
            "project_id": self.project_id,
        }[group]


def expected(calls: list[Call], kind: str | None, group_by: tuple[str, ...] = (),
             where: Callable[[Call], bool] = lambda c: True) -> dict[tuple, dict]:
    sums: dict[tuple, dict] = defaultdict(lambda: dict(requests=0, input=0, output=0, cached=0, reasoning=0, cost=0))
    for c in calls:
        if (kind is not None and c.kind != kind) or not where(c):
            continue
        s = sums[tuple(c.group_value(g) for g in group_by)]
        s["requests"] += 1
        s["input"] += c.input
        s["output"] += c.output
        s["cached"] += c.cached
        s["reasoning"] += c.reasoning
        s["cost"] += c.cost_nanos
    return dict(sums)


# --- the Usage / Costs APIs ----------------------------------------------------


def window() -> tuple[int, int]:
    """A start a minute-aligned hour ago and an end an hour ahead: one 1d bucket holds all traffic."""
    now = int(time.time())
    return now - now % 60 - 3600, now + 3600


def api_get(gw: Gateway, path: str, params: list[tuple[str, Any]], key: str | None = None):
    return gw.admin("GET", f"{path}?{urlencode(params)}" if params else path, key=key)


def usage_page(gw: Gateway, kind: str, params: list[tuple[str, Any]] = ()) -> dict:
    start, end = window()
    path = "/v1/organization/costs" if kind == "costs" else f"/v1/organization/usage/{kind}"
    r = api_get(gw, path, [("start_time", start), ("end_time", end), *params])
    assert r.status == 200, (r.status, r.body)
    page = r.json()
    assert page["object"] == "page"
    return page


def results(page: dict) -> list[dict]:
    out = []
    for bucket in page["data"]:
        assert bucket["object"] == "bucket"
        out.extend(bucket["results"])
    return out


def as_sums(res: list[dict], kind: str, group_by: tuple[str, ...] = ()) -> dict[tuple, dict]:
    """The API's results in the shape of `expected`, checking each result's fixed fields on the way."""
    out: dict[tuple, dict] = {}
    grouped = {"model", "api_key_id", "prefix", "project_id"} if kind != "costs" else {
        "line_item", "api_key_id", "prefix", "project_id"}
    for r in res:
        for field in grouped - set(group_by):
            assert r[field] is None, f"{field} must be null when not grouped by: {r}"
        key = tuple(r[g] for g in group_by)
        assert key not in out, f"duplicate group {key} in {res}"
        if kind == "costs":
            assert r["object"] == "organization.costs.result"
            assert r["amount"]["currency"] == "usd"
            assert r["amount"]["value"] == pytest.approx(r["amount_nanos"] / 1e9, abs=1e-12)
            out[key] = dict(cost=r["amount_nanos"])
        elif kind == COMPLETIONS:
            assert r["object"] == "organization.usage.completions.result"
            assert (r["input_audio_tokens"], r["output_audio_tokens"], r["user_id"], r["batch"],
                    r["service_tier"]) == (0, 0, None, None, None), r
            out[key] = dict(requests=r["num_model_requests"], input=r["input_tokens"], output=r["output_tokens"],
                            cached=r["input_cached_tokens"], reasoning=r["output_reasoning_tokens"])
        else:
            assert r["object"] == "organization.usage.embeddings.result"
            assert r["user_id"] is None, r
            out[key] = dict(requests=r["num_model_requests"], input=r["input_tokens"])
    return out


def only_fields(exp: dict[tuple, dict], kind: str) -> dict[tuple, dict]:
    """Keeps only the fields the API's `kind` answer carries."""
    fields = {"costs": ("cost",), COMPLETIONS: ("requests", "input", "output", "cached", "reasoning"),
              EMBEDDINGS: ("requests", "input")}[kind]
    return {k: {f: v[f] for f in fields} for k, v in exp.items()}


def wait_recorded(gw: Gateway, calls: list[Call]) -> None:
    """Polls both usage endpoints until they count as many requests as were made (records are batched)."""
    want = {kind: sum(1 for c in calls if c.kind == kind) for kind in (COMPLETIONS, EMBEDDINGS)}
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        got = {kind: sum(r["num_model_requests"] for r in results(usage_page(gw, kind))) for kind in want}
        if got == want:
            return
        assert all(got[k] <= want[k] for k in want), f"more requests recorded than made: {got} > {want}"
        if time.monotonic() > deadline:
            raise AssertionError(f"usage not recorded within {POLL_TIMEOUT_S}s: {got} recorded, {want} made")
        time.sleep(0.1)


def check(gw: Gateway, calls: list[Call], kind: str, group_by: tuple[str, ...] = (),
          params: list[tuple[str, Any]] = (), where: Callable[[Call], bool] = lambda c: True) -> dict:
    """The API's (kind, group_by, params) answer equals what `calls` predict."""
    query = [*params, *(("group_by", g) for g in group_by)]
    got = as_sums(results(usage_page(gw, kind, query)), kind, group_by)
    want = only_fields(expected(calls, None if kind == "costs" else kind, group_by, where), kind)
    assert got == want, f"{kind} group_by={group_by} params={params}"
    return got


# --- traffic -------------------------------------------------------------------


def mock_stream_usage(mock) -> dict:
    """The usage chunk the mock itself sent on its last chat stream."""
    chunks = [json.loads(e[len("data: "):]) for e in mock.last("/v1/chat/completions").response_body.decode()
              .split("\n\n") if e.startswith("data: {")]
    usages = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usages) == 1, chunks
    return usages[0]


class Traffic:
    """Makes requests with the SDK and remembers what the mock upstream reported for each."""

    def __init__(self, gw: Gateway, mock) -> None:
        self.gw = gw
        self.mock = mock
        self.calls: list[Call] = []

    def _add(self, key: dict, project_id: str | None, **kw: Any) -> Call:
        call = Call(key=key, project_id=project_id or self.gw.project_id(), **kw)
        self.calls.append(call)
        return call

    def _client(self, key: dict) -> openai.OpenAI:
        return self.gw.client(key["value"])

    def chat(self, key: dict, model: str = "gpt-4o", project_id: str | None = None) -> Call:
        resp = self._client(key).chat.completions.create(model=model, messages=MESSAGES)
        u = resp.usage
        return self._add(key, project_id, kind=COMPLETIONS, model=model, input=u.prompt_tokens,
                         output=u.completion_tokens, cached=u.prompt_tokens_details.cached_tokens,
                         reasoning=u.completion_tokens_details.reasoning_tokens)

    def chat_stream_with_usage(self, key: dict, model: str = "gpt-4o", project_id: str | None = None) -> Call:
        chunks = list(self._client(key).chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
        usages = [c.usage for c in chunks if c.usage is not None]
        assert len(usages) == 1, chunks
        u = usages[0]
        return self._add(key, project_id, kind=COMPLETIONS, model=model, input=u.prompt_tokens,
                         output=u.completion_tokens, cached=u.prompt_tokens_details.cached_tokens,
                         reasoning=u.completion_tokens_details.reasoning_tokens)

    def chat_stream_without_usage(self, key: dict, model: str = "gpt-4o", project_id: str | None = None) -> Call:
        chunks = list(self._client(key).chat.completions.create(model=model, messages=MESSAGES, stream=True))
        assert all(c.usage is None for c in chunks)
        u = mock_stream_usage(self.mock)  # what the upstream told keygate, unseen by the client
        return self._add(key, project_id, kind=COMPLETIONS, model=model, input=u["prompt_tokens"],
                         output=u["completion_tokens"], cached=u["prompt_tokens_details"]["cached_tokens"],
                         reasoning=u["completion_tokens_details"]["reasoning_tokens"])

    def completion(self, key: dict, model: str = "gpt-4o-mini", project_id: str | None = None) -> Call:
        resp = self._client(key).completions.create(model=model, prompt="Once upon a time")
        return self._add(key, project_id, kind=COMPLETIONS, model=model, input=resp.usage.prompt_tokens,
                         output=resp.usage.completion_tokens)

    def embeddings(self, key: dict, inputs: list[str], model: str = "text-embedding-3-small",
                   project_id: str | None = None) -> Call:
        resp = self._client(key).embeddings.create(model=model, input=inputs)
        return self._add(key, project_id, kind=EMBEDDINGS, model=model, input=resp.usage.prompt_tokens)

    def responses(self, key: dict, model: str = "gpt-4o", project_id: str | None = None) -> Call:
        resp = self._client(key).responses.create(model=model, input="Say hello")
        u = resp.usage
        return self._add(key, project_id, kind=COMPLETIONS, model=model, input=u.input_tokens, output=u.output_tokens,
                         cached=u.input_tokens_details.cached_tokens,
                         reasoning=u.output_tokens_details.reasoning_tokens)

    def responses_stream(self, key: dict, model: str = "gpt-4o", project_id: str | None = None) -> Call:
        events = list(self._client(key).responses.create(model=model, input="Say hello", stream=True))
        assert events[-1].type == "response.completed"
        u = events[-1].response.usage
        return self._add(key, project_id, kind=COMPLETIONS, model=model, input=u.input_tokens, output=u.output_tokens,
                         cached=u.input_tokens_details.cached_tokens,
                         reasoning=u.output_tokens_details.reasoning_tokens)


@pytest.fixture
def traffic(gateway, mock_upstream) -> Traffic:
    return Traffic(gateway, mock_upstream)


# --- 1. each route's tokens reach the Usage API exactly ------------------------

ROUTES: dict[str, tuple[Callable[[Traffic, dict], Call], tuple[int, int]]] = {
    "chat": (lambda t, k: t.chat(k), (m.CHAT_PROMPT_TOKENS, m.CHAT_COMPLETION_TOKENS)),
    "chat_stream_with_include_usage": (lambda t, k: t.chat_stream_with_usage(k),
                                       (m.CHAT_PROMPT_TOKENS, m.CHAT_COMPLETION_TOKENS)),
    "chat_stream_without_include_usage": (lambda t, k: t.chat_stream_without_usage(k),
                                          (m.CHAT_PROMPT_TOKENS, m.CHAT_COMPLETION_TOKENS)),
    "legacy_completions": (lambda t, k: t.completion(k),
                           (m.COMPLETION_PROMPT_TOKENS, m.COMPLETION_COMPLETION_TOKENS)),
    "embeddings": (lambda t, k: t.embeddings(k, ["one", "two"]), (2 * m.EMBEDDING_TOKENS_PER_INPUT, 0)),
    "responses": (lambda t, k: t.responses(k), (m.RESPONSE_INPUT_TOKENS, m.RESPONSE_OUTPUT_TOKENS)),
    "responses_stream": (lambda t, k: t.responses_stream(k), (m.RESPONSE_INPUT_TOKENS, m.RESPONSE_OUTPUT_TOKENS)),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_usage_api_tokens_equal_upstream_usage(gateway, traffic, route):
    make, (want_in, want_out) = ROUTES[route]
    key = gateway.create_key("metered")
    call = make(traffic, key)
    assert (call.input, call.output) == (want_in, want_out), "the mock's numbers, as the client saw them"
    wait_recorded(gateway, traffic.calls)

    other = EMBEDDINGS if call.kind == COMPLETIONS else COMPLETIONS
    got = check(gateway, traffic.calls, call.kind)
    assert got[()]["requests"] == 1 and got[()]["input"] == want_in
    if call.kind == COMPLETIONS:
        assert (got[()]["output"], got[()]["cached"], got[()]["reasoning"]) == (want_out, 0, 0)
    check(gateway, traffic.calls, call.kind, ("model", "api_key_id", "prefix", "project_id"))
    assert results(usage_page(gateway, other)) == [], f"a {call.kind} request must not show up in {other}"
    check(gateway, traffic.calls, "costs", ("line_item",))


# --- 2. the injected usage chunk never reaches a client that did not ask ------


def test_stream_without_include_usage_hides_injected_usage_from_client(gateway, mock_upstream):
    key = gateway.create_key("stream")
    client = gateway.client(key["value"])
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert len(chunks) == len(m.CHAT_STREAM_PIECES) + 2
    assert all(c.usage is None for c in chunks), [c.usage for c in chunks]
    assert all(c.choices for c in chunks), "a chunk with empty choices is the injected usage chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(m.CHAT_STREAM_PIECES)

    sent = mock_upstream.last("/v1/chat/completions")
    assert sent.json()["stream_options"] == {"include_usage": True}, "keygate must ask the upstream for usage"
    assert {k: v for k, v in sent.json().items() if k != "stream_options"} == {
        "model": "gpt-4o", "messages": MESSAGES, "stream": True}
    assert b'"usage"' in sent.response_body, "the mock did send usage to keygate"

    # On the wire: no `usage` key at all, not even `"usage": null`.
    r = gateway.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key['value']}"},
                        body={"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    assert r.status == 200
    assert mock_upstream.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}
    text = r.body.decode()
    assert '"usage"' not in text, text
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert len(events) == len(m.CHAT_STREAM_PIECES) + 3
    for e in events[:-1]:
        assert json.loads(e[len("data: "):])["choices"], e


def test_stream_with_include_usage_false_is_treated_as_not_asking(gateway, mock_upstream):
    key = gateway.create_key("stream")
    chunks = list(gateway.client(key["value"]).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": False}))
    assert all(c.usage is None and c.choices for c in chunks)
    assert mock_upstream.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage_gets_exactly_one_usage_chunk_and_upstream_bytes(gateway, mock_upstream):
    key = gateway.create_key("stream")
    chunks = list(gateway.client(key["value"]).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    assert with_usage[0] is chunks[-1] and with_usage[0].choices == []
    u = with_usage[0].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        m.CHAT_PROMPT_TOKENS, m.CHAT_COMPLETION_TOKENS, m.CHAT_TOTAL_TOKENS)
    assert mock_upstream.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}

    r = gateway.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key['value']}"},
                        body={"model": "gpt-4o", "messages": MESSAGES, "stream": True,
                              "stream_options": {"include_usage": True}})
    assert r.status == 200
    assert r.body == mock_upstream.last("/v1/chat/completions").response_body, "must pass through byte for byte"


# --- 3. grouping and filters ---------------------------------------------------


@pytest.fixture
def mixed(gateway, traffic) -> Traffic:
    """Two prefixes, two projects, three models, completions and embeddings."""
    prod = gateway.create_key("prod", prefix="sk-prod-")
    dev = gateway.create_key("dev", prefix="sk-dev-")
    assert (prod["prefix"], dev["prefix"]) == ("sk-prod-", "sk-dev-")
    other_project = gateway.create_project("other")["id"]
    other = gateway.create_key("other", project_id=other_project)
    traffic.chat(prod)
    traffic.chat(prod)
    traffic.chat_stream_without_usage(prod, model="gpt-4o-mini")
    traffic.embeddings(prod, ["a", "b"])
    traffic.chat(dev, model="gpt-4o-mini")
    traffic.responses(dev)
    traffic.responses_stream(dev, model="gpt-4o-mini")
    traffic.embeddings(dev, ["c"])
    traffic.chat_stream_with_usage(other, project_id=other_project)
    traffic.embeddings(other, ["d", "e", "f"], project_id=other_project)
    traffic.prod, traffic.dev, traffic.other, traffic.other_project = prod, dev, other, other_project
    wait_recorded(gateway, traffic.calls)
    return traffic


@pytest.mark.parametrize("kind", [COMPLETIONS, EMBEDDINGS])
@pytest.mark.parametrize("group_by", [(), ("model",), ("api_key_id",), ("prefix",), ("project_id",),
                                      ("model", "prefix"), ("project_id", "api_key_id", "model", "prefix")])
def test_usage_group_by_gives_per_group_sums(gateway, mixed, kind, group_by):
    got = check(gateway, mixed.calls, kind, group_by)
    assert got, "traffic must show up"


def test_usage_group_by_accepts_a_comma_list(gateway, mixed):
    got = as_sums(results(usage_page(gateway, COMPLETIONS, [("group_by", "model,prefix")])), COMPLETIONS,
                  ("model", "prefix"))
    assert got == only_fields(expected(mixed.calls, COMPLETIONS, ("model", "prefix")), COMPLETIONS)
    assert ("gpt-4o", "sk-prod-") in got and ("gpt-4o-mini", "sk-dev-") in got


@pytest.mark.parametrize("name", ["prefixes", "prefixes[]"])
def test_usage_prefix_filter_keeps_only_that_prefix(gateway, mixed, name):
    dev_only = lambda c: c.key["prefix"] == "sk-dev-"  # noqa: E731
    for kind in (COMPLETIONS, EMBEDDINGS):
        got = check(gateway, mixed.calls, kind, (), [(name, "sk-dev-")], dev_only)
        assert got[()]["requests"] == (3 if kind == COMPLETIONS else 1)
        got = check(gateway, mixed.calls, kind, ("api_key_id",), [(name, "sk-dev-")], dev_only)
        assert list(got) == [(mixed.dev["id"],)]
    check(gateway, mixed.calls, "costs", ("prefix",), [(name, "sk-dev-")], dev_only)


def test_usage_prefix_filter_repeated_is_a_union(gateway, mixed):
    both = lambda c: c.key["prefix"] in ("sk-dev-", "sk-prod-")  # noqa: E731
    check(gateway, mixed.calls, COMPLETIONS, ("prefix",), [("prefixes", "sk-dev-"), ("prefixes", "sk-prod-")], both)


def test_usage_api_key_ids_filter(gateway, mixed):
    prod_only = lambda c: c.key["id"] == mixed.prod["id"]  # noqa: E731
    got = check(gateway, mixed.calls, COMPLETIONS, (), [("api_key_ids", mixed.prod["id"])], prod_only)
    assert got[()]["requests"] == 3
    check(gateway, mixed.calls, EMBEDDINGS, ("model",), [("api_key_ids", mixed.prod["id"])], prod_only)
    check(gateway, mixed.calls, "costs", ("api_key_id",), [("api_key_ids", mixed.prod["id"])], prod_only)
    two = {mixed.prod["id"], mixed.other["id"]}
    check(gateway, mixed.calls, COMPLETIONS, ("api_key_id",),
          [("api_key_ids", mixed.prod["id"]), ("api_key_ids", mixed.other["id"])], lambda c: c.key["id"] in two)


def test_usage_project_and_model_filters(gateway, mixed):
    check(gateway, mixed.calls, COMPLETIONS, ("api_key_id",), [("project_ids", mixed.other_project)],
          lambda c: c.project_id == mixed.other_project)
    check(gateway, mixed.calls, COMPLETIONS, ("prefix",), [("models", "gpt-4o-mini")],
          lambda c: c.model == "gpt-4o-mini")
    check(gateway, mixed.calls, EMBEDDINGS, (), [("models", "gpt-4o")], lambda c: False)


def test_embeddings_and_completions_are_kept_apart(gateway, mixed):
    comp = as_sums(results(usage_page(gateway, COMPLETIONS, [("group_by", "model")])), COMPLETIONS, ("model",))
    emb = as_sums(results(usage_page(gateway, EMBEDDINGS, [("group_by", "model")])), EMBEDDINGS, ("model",))
    assert set(comp) == {("gpt-4o",), ("gpt-4o-mini",)}
    assert set(emb) == {("text-embedding-3-small",)}
    assert emb[("text-embedding-3-small",)] == {"requests": 3, "input": 6 * m.EMBEDDING_TOKENS_PER_INPUT}


def test_usage_buckets_are_aligned_to_start_time(gateway, mixed):
    start = window()[0] - 1800  # the traffic (last few minutes) sits mid-way through the second hour
    r = api_get(gateway, "/v1/organization/usage/completions",
                [("start_time", start), ("end_time", start + 3 * 3600), ("bucket_width", "1h")])
    assert r.status == 200, r.body
    page = r.json()
    assert [(b["start_time"], b["end_time"]) for b in page["data"]] == [
        (start + i * 3600, start + (i + 1) * 3600) for i in range(3)]
    # All traffic was in the last minutes: the second hour of the window.
    assert [len(b["results"]) for b in page["data"]] == [0, 1, 0]
    assert page["data"][1]["results"][0]["num_model_requests"] == 7
    assert page["has_more"] is False and page["next_page"] is None


def test_usage_pages_through_buckets(gateway, mixed):
    start, _ = window()
    base = [("start_time", start), ("end_time", start + 3 * 3600), ("bucket_width", "1h"), ("limit", 2)]
    first = api_get(gateway, "/v1/organization/usage/completions", base).json()
    assert len(first["data"]) == 2 and first["has_more"] is True and first["next_page"]
    second = api_get(gateway, "/v1/organization/usage/completions", [*base, ("page", first["next_page"])]).json()
    assert [b["start_time"] for b in second["data"]] == [start + 2 * 3600]
    assert second["has_more"] is False and second["next_page"] is None


# --- 4. costs -------------------------------------------------------------------


@pytest.mark.parametrize("group_by", [(), ("line_item",), ("api_key_id",), ("prefix",), ("project_id",),
                                      ("line_item", "prefix")])
def test_costs_equal_default_prices_times_tokens(gateway, mixed, group_by):
    got = check(gateway, mixed.calls, "costs", group_by)
    assert all(v["cost"] > 0 for v in got.values())


def test_costs_known_amounts(gateway, mixed):
    """Hand-computed from the price list, so a wrong formula on both sides can't agree by accident."""
    got = as_sums(results(usage_page(gateway, "costs", [("group_by", "line_item")])), "costs", ("line_item",))
    gpt4o_chat = 11 * 2_500 + 7 * 10_000  # nano-dollars: tokens × $/1M × 1000
    gpt4o_resp = 13 * 2_500 + 6 * 10_000
    mini_chat = (11 * 150_000 + 7 * 600_000) // 1000
    mini_resp = (13 * 150_000 + 6 * 600_000) // 1000
    assert got == {
        ("gpt-4o",): {"cost": 3 * gpt4o_chat + gpt4o_resp},
        ("gpt-4o-mini",): {"cost": 2 * mini_chat + mini_resp},
        ("text-embedding-3-small",): {"cost": 6 * m.EMBEDDING_TOKENS_PER_INPUT * 20},
    }


# --- 5. the CLI ------------------------------------------------------------------


def test_cli_usage_by_prefix_json(gateway, mixed):
    r = cli(gateway, "usage", "--by", "prefix", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    want = expected(mixed.calls, None, ("prefix",))
    assert [row["prefix"] for row in rows] == sorted(p for (p,) in want)
    for row in rows:
        w = want[(row["prefix"],)]
        assert set(row) == {"prefix", "requests", "input_tokens", "output_tokens", "cost_usd", "cost_nanos"}
        assert (row["requests"], row["input_tokens"], row["output_tokens"], row["cost_nanos"]) == (
            w["requests"], w["input"], w["output"], w["cost"]), row
        assert row["cost_usd"] == pytest.approx(w["cost"] / 1e9, abs=1e-12)


def test_cli_usage_by_model_table(gateway, mixed):
    r = cli(gateway, "usage", "--by", "model")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["MODEL", "REQUESTS", "INPUT", "TOKENS", "OUTPUT", "TOKENS", "COST"]
    want = expected(mixed.calls, None, ("model",))
    rows = [line.split() for line in lines[1:]]
    assert rows == [[model, str(w["requests"]), str(w["input"]), str(w["output"]), usd(w["cost"])]
                    for (model,), w in sorted(want.items())]


def usd(nanos: int) -> str:
    """The CLI's money: exact nano-dollars, trailing zeros dropped, at least cents."""
    fraction = f"{nanos % 1_000_000_000:09d}".rstrip("0").ljust(2, "0")
    return f"${nanos // 1_000_000_000}.{fraction}"


def test_cli_usage_by_key_json(gateway, mixed):
    r = cli(gateway, "usage", "--by", "key", "--since", "1h", "--json")
    assert r.returncode == 0, r.stderr
    got = {row["api_key_id"]: (row["requests"], row["input_tokens"], row["output_tokens"], row["cost_nanos"])
           for row in json.loads(r.stdout)}
    want = {k: (w["requests"], w["input"], w["output"], w["cost"])
            for (k,), w in expected(mixed.calls, None, ("api_key_id",)).items()}
    assert got == want


# --- 6. failed upstream calls ---------------------------------------------------


def usage_rows(gw: Gateway, model: str) -> list[tuple]:
    """keygate's own usage records of `model`, read straight from its database once written."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        with sqlite3.connect(f"file:{gw.db_path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT model, route, status, input_tokens, output_tokens, cost_nanos FROM usage_records "
                              "WHERE model = ?", (model,)).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_a_failed_upstream_call_is_recorded_but_is_no_model_request(gateway, traffic):
    """As OpenAI's Usage API counts num_model_requests: only calls the upstream
    answered with success; the failure is in keygate's records all the same."""
    key = gateway.create_key("fails")
    traffic.chat(key)
    with pytest.raises(openai.BadRequestError) as exc:
        gateway.client(key["value"]).chat.completions.create(model=m.TRIGGER_400_MODEL, messages=MESSAGES)
    assert exc.value.status_code == 400 and exc.value.code == m.TRIGGER_400_CODE
    assert usage_rows(gateway, m.TRIGGER_400_MODEL) == [(m.TRIGGER_400_MODEL, "/v1/chat/completions", 400, 0, 0, 0)]
    wait_recorded(gateway, traffic.calls)

    got = check(gateway, traffic.calls, COMPLETIONS, ("model",))
    assert (m.TRIGGER_400_MODEL,) not in got, "no result row for a model that served no request"
    check(gateway, traffic.calls, "costs", ("line_item",))


def test_a_failed_embeddings_call_is_no_model_request_either(gateway, traffic):
    key = gateway.create_key("fails")
    with pytest.raises(openai.BadRequestError):
        gateway.client(key["value"]).embeddings.create(model=m.TRIGGER_400_MODEL, input="x")
    assert usage_rows(gateway, m.TRIGGER_400_MODEL) == [(m.TRIGGER_400_MODEL, "/v1/embeddings", 400, 0, 0, 0)]
    wait_recorded(gateway, traffic.calls)
    assert results(usage_page(gateway, EMBEDDINGS)) == []


# --- 7. access and parameters -------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/organization/usage/completions", "/v1/organization/usage/embeddings",
                                  "/v1/organization/costs"])
def test_project_key_cannot_read_usage(gateway, path):
    key = gateway.create_key("nosy")
    start, _ = window()
    r = api_get(gateway, path, [("start_time", start)], key=key["value"])
    assert r.status == 401, (r.status, r.body)
    assert "Missing scopes: api.usage.read" in r.error["message"]


@pytest.mark.parametrize("path", ["/v1/organization/usage/completions", "/v1/organization/usage/embeddings",
                                  "/v1/organization/costs"])
def test_usage_without_start_time_is_400(gateway, path):
    r = api_get(gateway, path, [("bucket_width", "1d")])
    assert r.status == 400, (r.status, r.body)
    assert r.error["type"] == "invalid_request_error"
    assert "start_time" in r.error["message"]


@pytest.mark.parametrize("path, params", [
    ("/v1/organization/usage/completions", [("bucket_width", "2h")]),
    ("/v1/organization/usage/completions", [("group_by", "color")]),
    ("/v1/organization/usage/completions", [("limit", 0)]),
    ("/v1/organization/usage/completions", [("limit", 32)]),  # 1d buckets: at most 31
    ("/v1/organization/usage/completions", [("start_time", "yesterday")]),
    ("/v1/organization/usage/completions", [("page", "nonsense")]),
    ("/v1/organization/usage/completions", [("colour", "blue")]),
    ("/v1/organization/usage/embeddings", [("end_time", 1)]),  # before start_time
    ("/v1/organization/costs", [("bucket_width", "1h")]),  # costs: 1d only
])
def test_usage_bad_parameters_are_400(gateway, path, params):
    start, _ = window()
    query = [("start_time", start)] if not any(k == "start_time" for k, _ in params) else []
    r = api_get(gateway, path, [*query, *params])
    assert r.status == 400, (r.status, r.body)
    assert r.error["type"] == "invalid_request_error"


def test_a_streaming_request_the_upstream_refused_is_no_model_request(gateway, traffic, mock_upstream):
    key = gateway.create_key("fails")
    with pytest.raises(openai.BadRequestError):
        list(gateway.client(key["value"]).chat.completions.create(model=m.TRIGGER_400_MODEL, messages=MESSAGES,
                                                                  stream=True))
    assert usage_rows(gateway, m.TRIGGER_400_MODEL) == [(m.TRIGGER_400_MODEL, "/v1/chat/completions", 400, 0, 0, 0)]
    wait_recorded(gateway, traffic.calls)
    check(gateway, traffic.calls, COMPLETIONS, ("model",))


def test_an_unreachable_upstream_is_recorded_but_is_no_model_request(make_gateway):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    gw = make_gateway(upstream_url=f"http://127.0.0.1:{dead}/v1")
    key = gw.create_key("unlucky")
    with pytest.raises(openai.APIStatusError) as exc:
        gw.client(key["value"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.status_code == 502
    assert [row[2:] for row in usage_rows(gw, "gpt-4o")] == [(502, 0, 0, 0)]
    assert results(usage_page(gw, COMPLETIONS, [("group_by", "model"), ("group_by", "api_key_id")])) == []


# --- cached and reasoning tokens --------------------------------------------------

CACHED_CHAT = dict(prompt=1000, cached=400, completion=200, reasoning=50)
CACHED_RESPONSE = dict(input=900, cached=300, output=120, reasoning=80)


@pytest.fixture
def cached_usage(monkeypatch):
    """The mock reports cached input and reasoning tokens (its usage builders are looked up per request)."""
    c, r = CACHED_CHAT, CACHED_RESPONSE
    monkeypatch.setattr(m, "chat_usage", lambda: {
        "prompt_tokens": c["prompt"], "completion_tokens": c["completion"],
        "total_tokens": c["prompt"] + c["completion"],
        "prompt_tokens_details": {"cached_tokens": c["cached"], "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": c["reasoning"], "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
    monkeypatch.setattr(m, "response_usage", lambda: {
        "input_tokens": r["input"], "input_tokens_details": {"cached_tokens": r["cached"]},
        "output_tokens": r["output"], "output_tokens_details": {"reasoning_tokens": r["reasoning"]},
        "total_tokens": r["input"] + r["output"],
    })


def test_cached_and_reasoning_tokens_are_metered_and_priced(gateway, traffic, cached_usage):
    key = gateway.create_key("cache")
    for call in (traffic.chat(key), traffic.chat_stream_without_usage(key, model="gpt-4o-mini"),
                 traffic.chat_stream_with_usage(key)):
        assert (call.input, call.cached, call.output, call.reasoning) == tuple(CACHED_CHAT.values())
    for call in (traffic.responses(key), traffic.responses_stream(key, model="gpt-4o-mini")):
        assert (call.input, call.cached, call.output, call.reasoning) == tuple(CACHED_RESPONSE.values())
    wait_recorded(gateway, traffic.calls)

    got = check(gateway, traffic.calls, COMPLETIONS, ("model",))
    assert got[("gpt-4o",)]["cached"] == 2 * CACHED_CHAT["cached"] + CACHED_RESPONSE["cached"]
    assert got[("gpt-4o",)]["reasoning"] == 2 * CACHED_CHAT["reasoning"] + CACHED_RESPONSE["reasoning"]
    costs = check(gateway, traffic.calls, "costs", ("line_item",))
    # gpt-4o: 600 uncached × $2.50 + 400 cached × $1.25 + 200 out × $10 per 1M = $0.004 per chat.
    chat_4o = 600 * 2_500 + 400 * 1_250 + 200 * 10_000
    resp_4o = 600 * 2_500 + 300 * 1_250 + 120 * 10_000
    assert chat_4o == 4_000_000
    assert costs[("gpt-4o",)] == {"cost": 2 * chat_4o + resp_4o}


# --- time boundaries --------------------------------------------------------------


def _recorded_at(gw: Gateway, traffic: Traffic, key: dict) -> tuple[int, list[int]]:
    """Makes chat requests until the last is recorded off a minute boundary; returns its `at` and every `at`."""
    for _ in range(3):
        traffic.chat(key)
        wait_recorded(gw, traffic.calls)
        with sqlite3.connect(f"file:{gw.db_path}?mode=ro", uri=True, timeout=5) as db:
            ats = [row[0] for row in db.execute("SELECT at FROM usage_records")]
        if max(ats) % 60:
            return max(ats), ats
        time.sleep(1.1)
    raise AssertionError("every request landed on a minute boundary")


def _requests(gw: Gateway, start: int, end: int) -> int:
    r = api_get(gw, "/v1/organization/usage/completions", [("start_time", start), ("end_time", end)])
    assert r.status == 200, r.body
    return sum(x["num_model_requests"] for x in results(r.json()))


def test_aligned_window_counts_every_request(gateway, traffic):
    at, ats = _recorded_at(gateway, traffic, gateway.create_key("edge"))
    start = at - at % 60 - 3600
    assert _requests(gateway, start, start + 7200) == len(ats)


def test_request_after_unaligned_start_time_is_counted(gateway, traffic):
    at, ats = _recorded_at(gateway, traffic, gateway.create_key("edge"))
    assert _requests(gateway, at, at + 3600) == sum(a >= at for a in ats)


def test_request_at_end_time_is_not_counted(gateway, traffic):
    at, ats = _recorded_at(gateway, traffic, gateway.create_key("edge"))
    assert _requests(gateway, at - at % 60 - 3600, at) == sum(a < at for a in ats)
