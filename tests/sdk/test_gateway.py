"""keygate driven by the official `openai` Python SDK (and raw HTTP where the SDK can't go)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import openai
import pytest

import mock_upstream as m
from conftest import ADMIN_KEY, UPSTREAM_SECRET, basic_auth, free_port

REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")
MESSAGES = [{"role": "user", "content": "Say hello"}]


def mask(key: str) -> str:
    return key if len(key) <= 12 else key[:8] + "*" * (len(key) - 12) + key[-4:]


def assert_request_id(headers) -> str:
    values = headers.get_all("x-request-id") if hasattr(headers, "get_all") else [headers.get("x-request-id")]
    assert values and len(values) == 1, f"expected exactly one x-request-id, got {values}"
    assert values[0] and REQUEST_ID.match(values[0]), f"bad x-request-id: {values[0]!r}"
    return values[0]


# --- models -------------------------------------------------------------------


def test_models_list_and_retrieve(client, mock_upstream):
    models = client.models.list()
    assert [mdl.id for mdl in models.data] == m.MODELS
    assert all(mdl.object == "model" and mdl.owned_by == "openai" for mdl in models.data)
    assert REQUEST_ID.match(models._request_id or "")

    model = client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini"
    assert model.created == m.CREATED
    assert mock_upstream.last().path == "/v1/models/gpt-4o-mini"


def test_unknown_model_retrieve_passes_upstream_404_through(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    e = exc.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.body["message"] == "The model `no-such-model` does not exist or you do not have access to it."
    assert REQUEST_ID.match(e.request_id or "")


# --- chat completions ---------------------------------------------------------


def test_chat_completion_content_and_usage_match_upstream(client, mock_upstream):
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.id == m.CHAT_ID
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content == m.CHAT_CONTENT
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == m.CHAT_PROMPT_TOKENS
    assert resp.usage.completion_tokens == m.CHAT_COMPLETION_TOKENS
    assert resp.usage.total_tokens == m.CHAT_TOTAL_TOKENS
    assert REQUEST_ID.match(resp._request_id or "")

    sent = mock_upstream.last("/v1/chat/completions")
    assert sent.method == "POST"
    assert sent.json()["model"] == "gpt-4o"
    assert sent.json()["messages"] == MESSAGES


def test_chat_streaming_with_include_usage_delivers_all_chunks_and_usage(client, mock_upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    assert REQUEST_ID.match(raw.headers.get("x-request-id", ""))
    chunks = list(raw.parse())

    content_chunks = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == "".join(m.CHAT_STREAM_PIECES)
    # role chunk + one per piece + finish chunk, then the usage chunk.
    assert len(content_chunks) == len(m.CHAT_STREAM_PIECES) + 2
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in content_chunks)

    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == 1, usage_chunks
    assert chunks[-1] is usage_chunks[0], "the usage chunk must be the last one"
    usage = usage_chunks[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        m.CHAT_PROMPT_TOKENS, m.CHAT_COMPLETION_TOKENS, m.CHAT_TOTAL_TOKENS)

    assert mock_upstream.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}


def test_chat_streaming_without_include_usage_has_no_usage_chunk(client, gateway, project_key):
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert len(chunks) == len(m.CHAT_STREAM_PIECES) + 2
    assert all(c.choices for c in chunks), "no chunk may have empty choices"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(m.CHAT_STREAM_PIECES)

    # On the wire: exactly what OpenAI sends without include_usage — no `usage` field at all.
    r = gateway.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {project_key}"},
                        body={"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    assert r.status == 200
    events = [e for e in r.body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert e.startswith("data: ")
        assert "usage" not in json.loads(e[len("data: "):]), e


def test_chat_stream_is_forwarded_chunk_by_chunk(client, mock_upstream):
    """The mock holds the rest of the stream until the client has seen the first content chunk."""
    stream = client.chat.completions.create(model=m.GATED_STREAM_MODEL, messages=MESSAGES, stream=True)
    pieces = []
    first_after = None
    started = time.monotonic()
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            if not pieces:
                first_after = time.monotonic() - started
                mock_upstream.release.set()
            pieces.append(piece)
    assert pieces == m.CHAT_STREAM_PIECES
    assert mock_upstream.gate_results == [True], (
        f"first chunk reached the client only after {first_after}s: keygate buffered the stream")


def test_async_client_chat_streaming(gateway, project_key):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=project_key, max_retries=0,
                                      timeout=10.0) as c:
            stream = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True})
            return [chunk async for chunk in stream]

    chunks = asyncio.run(asyncio.wait_for(run(), timeout=20))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(m.CHAT_STREAM_PIECES)
    assert chunks[-1].usage.total_tokens == m.CHAT_TOTAL_TOKENS


def test_client_abandoning_a_stream_does_not_disturb_the_gateway(client, mock_upstream):
    stream = client.chat.completions.create(model=m.GATED_STREAM_MODEL, messages=MESSAGES, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    mock_upstream.release.set()
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.choices[0].message.content == m.CHAT_CONTENT


# --- embeddings / completions -------------------------------------------------


def test_embeddings_default_base64_is_decoded_by_sdk(client, mock_upstream):
    resp = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert mock_upstream.last("/v1/embeddings").json()["encoding_format"] == "base64"
    assert len(resp.data) == 2
    for i, item in enumerate(resp.data):
        assert item.index == i
        assert item.embedding == m.EMBEDDING
    assert resp.usage.prompt_tokens == 2 * m.EMBEDDING_TOKENS_PER_INPUT
    assert resp.usage.total_tokens == 2 * m.EMBEDDING_TOKENS_PER_INPUT


def test_embeddings_float_format(client, mock_upstream):
    resp = client.embeddings.create(model="text-embedding-3-small", input="one", encoding_format="float")
    assert mock_upstream.last("/v1/embeddings").json()["encoding_format"] == "float"
    assert resp.data[0].embedding == m.EMBEDDING
    assert resp.usage.prompt_tokens == m.EMBEDDING_TOKENS_PER_INPUT


def test_legacy_completions(client, mock_upstream):
    resp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time")
    assert resp.choices[0].text == m.COMPLETION_TEXT
    assert resp.usage.prompt_tokens == m.COMPLETION_PROMPT_TOKENS
    assert resp.usage.completion_tokens == m.COMPLETION_COMPLETION_TOKENS
    assert resp.usage.total_tokens == m.COMPLETION_TOTAL_TOKENS
    assert mock_upstream.last("/v1/completions").json()["prompt"] == "Once upon a time"


# --- responses ----------------------------------------------------------------


def test_responses_create(client, mock_upstream):
    resp = client.responses.create(model="gpt-4o", input="Say hello")
    assert resp.id == m.RESPONSE_ID
    assert resp.status == "completed"
    assert resp.output_text == m.RESPONSE_TEXT
    assert resp.usage.input_tokens == m.RESPONSE_INPUT_TOKENS
    assert resp.usage.output_tokens == m.RESPONSE_OUTPUT_TOKENS
    assert resp.usage.total_tokens == m.RESPONSE_TOTAL_TOKENS
    assert mock_upstream.last("/v1/responses").json()["input"] == "Say hello"


def test_responses_streaming_completed_event_carries_usage(client):
    events = list(client.responses.create(model="gpt-4o", input="Say hello", stream=True))
    types = [e.type for e in events]
    assert types == ["response.created"] + ["response.output_text.delta"] * len(m.RESPONSE_PIECES) + [
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == m.RESPONSE_TEXT
    completed = events[-1]
    assert completed.response.output_text == m.RESPONSE_TEXT
    usage = completed.response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        m.RESPONSE_INPUT_TOKENS, m.RESPONSE_OUTPUT_TOKENS, m.RESPONSE_TOTAL_TOKENS)


# --- authentication errors ----------------------------------------------------


@pytest.mark.parametrize("kind", ["unknown", "tampered"])
def test_wrong_key_is_authentication_error_with_masked_key(gateway, project_key, mock_upstream, kind):
    if kind == "unknown":
        bad = "sk-proj-" + "Zx9" * 16
    else:  # a real key with its last character changed
        bad = project_key[:-1] + ("A" if project_key[-1] != "A" else "B")
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client(bad).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    e = exc.value
    assert e.status_code == 401
    assert e.code == "invalid_api_key"
    assert e.type == "invalid_request_error"
    assert e.param is None
    assert REQUEST_ID.match(e.request_id or ""), e.request_id
    assert e.body["message"] == (
        f"Incorrect API key provided: {mask(bad)}. "
        "You can find your API key at https://platform.openai.com/account/api-keys.")
    assert bad not in str(e)
    assert bad not in e.response.text
    assert mock_upstream.requests == [], "a rejected request must not reach the upstream"


def test_missing_key_is_401_with_null_code(gateway, mock_upstream):
    r = gateway.request("POST", "/v1/chat/completions", body={"model": "gpt-4o", "messages": MESSAGES})
    assert r.status == 401
    assert_request_id(r.headers)
    err = r.error
    assert err["message"].startswith("You didn't provide an API key.")
    assert err["type"] == "invalid_request_error"
    assert err["code"] is None
    assert set(err) == {"message", "type", "param", "code"}
    assert mock_upstream.requests == []


@pytest.mark.parametrize("header", ["Token abc", "sk-proj-abcdefghijklmnop"])
def test_malformed_authorization_header_is_401(gateway, project_key, header, mock_upstream):
    if header.startswith("sk-"):
        header = project_key  # a valid key without a scheme is still refused
    r = gateway.request("GET", "/v1/models", headers={"Authorization": header})
    assert r.status == 401
    assert_request_id(r.headers)
    assert r.error["message"] == "Missing bearer or basic authentication in header"
    assert r.error["type"] == "invalid_request_error"
    assert r.error["code"] is None
    assert project_key not in r.body.decode()
    assert mock_upstream.requests == []


def test_basic_auth_with_key_as_password_is_accepted(gateway, project_key):
    r = gateway.request("GET", "/v1/models", headers={"Authorization": basic_auth(project_key)})
    assert r.status == 200, r.body
    assert [x["id"] for x in r.json()["data"]] == m.MODELS


def test_revoked_key_is_refused_within_one_second(gateway):
    key = gateway.create_key("to-revoke")
    c = gateway.client(key["value"])
    assert c.models.list().data  # works before revocation
    gateway.revoke(key["id"])
    deadline = time.monotonic() + 1.0
    while True:
        try:
            c.models.list()
        except openai.AuthenticationError as e:
            assert e.code == "invalid_api_key"
            assert key["value"] not in str(e)
            break
        assert time.monotonic() < deadline, "revoked key still accepted after 1 s"
        time.sleep(0.05)
    r = gateway.admin("GET", f"/v1/organization/projects/{gateway.project_id()}/api_keys/{key['id']}")
    assert r.status == 404


def test_admin_key_cannot_call_chat(gateway, mock_upstream):
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client(ADMIN_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    e = exc.value
    assert e.status_code == 401
    assert "Missing scopes: model.request" in e.body["message"]
    assert e.code is None
    assert REQUEST_ID.match(e.request_id or "")
    assert mock_upstream.requests == []


def test_project_key_cannot_call_admin_api(gateway, project_key):
    r = gateway.request("GET", "/v1/organization/projects", headers={"Authorization": f"Bearer {project_key}"})
    assert r.status == 401
    assert_request_id(r.headers)
    assert r.error["type"] == "invalid_request_error"
    assert project_key not in r.body.decode()


def test_admin_api_never_shows_the_secret_again(gateway):
    key = gateway.create_key("listed")
    assert key["object"] == "organization.project.api_key"
    assert key["id"].startswith("key_")
    assert key["redacted_value"] and key["value"] not in key["redacted_value"]
    assert key["redacted_value"].endswith(key["value"][-4:])
    pid = gateway.project_id()
    for r in (gateway.admin("GET", f"/v1/organization/projects/{pid}/api_keys"),
              gateway.admin("GET", f"/v1/organization/projects/{pid}/api_keys/{key['id']}")):
        assert r.status == 200, r.body
        assert key["value"] not in r.body.decode()
        assert '"value"' not in r.body.decode()
        assert_request_id(r.headers)
    listed = gateway.admin("GET", f"/v1/organization/projects/{pid}/api_keys").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert key["id"] in [k["id"] for k in listed["data"]]


def test_gateway_logs_never_contain_keys(gateway, project_key):
    c = gateway.client(project_key)
    c.models.list()
    list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    tampered = project_key[:-1] + ("A" if project_key[-1] != "A" else "B")
    with pytest.raises(openai.AuthenticationError):
        gateway.client(tampered).models.list()
    with pytest.raises(openai.AuthenticationError):
        gateway.client(ADMIN_KEY).models.list()
    gateway.request("GET", "/v1/models", headers={"Authorization": f"Token {project_key}"})
    assert gateway.stop() == 0
    logs = gateway.stderr()
    for secret in (project_key, tampered, ADMIN_KEY, UPSTREAM_SECRET):
        assert secret not in logs, f"{secret[:12]}... appears in keygate's log"


# --- what reaches the upstream ------------------------------------------------


def test_client_key_and_org_project_headers_never_reach_upstream(gateway, project_key, mock_upstream):
    org, project = gateway.organization_id(project_key), gateway.project_id()
    mock_upstream.clear()
    c = gateway.client(project_key, organization=org, project=project)
    c.models.list()
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                   stream_options={"include_usage": True}))
    c.embeddings.create(model="text-embedding-3-small", input="x")
    c.responses.create(model="gpt-4o", input="x")
    # Basic auth and a cookie/api-key header must not leak either.
    gateway.request("GET", "/v1/models", headers={
        "Authorization": basic_auth(project_key), "api-key": project_key, "Cookie": f"session={project_key}",
        "OpenAI-Organization": org, "OpenAI-Project": project})

    reqs = mock_upstream.requests
    assert len(reqs) == 6
    secret = project_key.split("-")[-1]  # the random part, in case a prefix is shared
    for rec in reqs:
        for name, value in rec.header_items:
            assert project_key not in value and secret not in value, f"client key leaked in {name}: {value}"
        assert project_key.encode() not in rec.body
        assert rec.headers.get("authorization") == f"Bearer {UPSTREAM_SECRET}", rec.headers
        assert "openai-organization" not in rec.headers, rec.headers
        assert "openai-project" not in rec.headers, rec.headers
        assert "api-key" not in rec.headers
        assert "cookie" not in rec.headers


# --- request ids --------------------------------------------------------------


def test_request_id_on_success_and_upstream_id_renamed(gateway, project_key, mock_upstream):
    r = gateway.request("GET", "/v1/models", headers={"Authorization": f"Bearer {project_key}"})
    assert r.status == 200
    rid = assert_request_id(r.headers)
    upstream_id = mock_upstream.last("/v1/models").request_id
    assert r.headers.get_all("x-upstream-request-id") == [upstream_id]
    assert rid != upstream_id


def test_request_id_on_streaming_response(gateway, project_key, mock_upstream):
    r = gateway.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {project_key}"},
                        body={"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    assert r.status == 200
    assert_request_id(r.headers)
    assert r.headers.get("x-upstream-request-id") == mock_upstream.last("/v1/chat/completions").request_id


def test_request_ids_are_unique(gateway, project_key):
    ids = {assert_request_id(gateway.request("GET", "/v1/models",
                                             headers={"Authorization": f"Bearer {project_key}"}).headers)
           for _ in range(5)}
    assert len(ids) == 5


def test_request_id_on_401(gateway):
    r = gateway.request("GET", "/v1/models", headers={"Authorization": "Bearer sk-proj-nope-nope-nope-nope"})
    assert r.status == 401
    assert_request_id(r.headers)


def test_request_id_on_404_unknown_admin_path(gateway, project_key):
    r = gateway.admin("GET", "/v1/organization/nope")
    assert r.status == 404
    assert_request_id(r.headers)
    assert r.error["message"] == "Invalid URL (GET /v1/organization/nope)"
    assert r.error["type"] == "invalid_request_error"

    r = gateway.request("GET", "/v1/organization/nope", headers={"Authorization": f"Bearer {project_key}"})
    assert r.status in (401, 404)
    assert_request_id(r.headers)


def test_request_id_on_404_from_upstream_keeps_upstream_id(gateway, project_key, mock_upstream):
    r = gateway.request("GET", "/v1/no-such-endpoint", headers={"Authorization": f"Bearer {project_key}"})
    assert r.status == 404
    assert_request_id(r.headers)
    assert r.error["message"] == "Invalid URL (GET /v1/no-such-endpoint)"
    assert r.headers.get("x-upstream-request-id") == mock_upstream.last("/v1/no-such-endpoint").request_id


def test_request_id_on_404_outside_v1(gateway):
    r = gateway.request("GET", "/definitely-not-here")
    assert r.status == 404
    assert_request_id(r.headers)


def test_malformed_json_is_400_with_request_id(gateway, project_key, mock_upstream):
    r = gateway.request("POST", "/v1/chat/completions",
                        headers={"Authorization": f"Bearer {project_key}", "Content-Type": "application/json"},
                        body=b'{"model": "gpt-4o", "messages": [')
    assert r.status == 400
    assert_request_id(r.headers)
    assert r.error["type"] == "invalid_request_error"
    assert set(r.error) == {"message", "type", "param", "code"}
    assert mock_upstream.requests == []


# --- upstream errors ----------------------------------------------------------


def test_upstream_error_passes_through_unchanged(client, mock_upstream):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=m.TRIGGER_400_MODEL, messages=MESSAGES)
    e = exc.value
    assert e.status_code == 400
    assert e.body == {"message": m.TRIGGER_400_MESSAGE, "type": "invalid_request_error", "param": "model",
                      "code": m.TRIGGER_400_CODE}
    assert REQUEST_ID.match(e.request_id or "")
    assert e.response.headers.get("x-upstream-request-id") == mock_upstream.last().request_id


def test_upstream_unreachable_is_502(make_gateway):
    gw = make_gateway(upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    key = gw.create_key("k")["value"]
    with pytest.raises(openai.InternalServerError) as exc:
        gw.client(key).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.status_code == 502
    assert REQUEST_ID.match(exc.value.request_id or "")
    assert set(exc.value.body) == {"message", "type", "param", "code"}


def test_upstream_timeout_is_504(make_gateway):
    gw = make_gateway(extra_env={"KEYGATE_UPSTREAM__READ_TIMEOUT_MS": "500"})
    key = gw.create_key("k")["value"]
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        gw.client(key).chat.completions.create(model=m.SLOW_MODEL, messages=MESSAGES)
    assert exc.value.status_code == 504
    assert time.monotonic() - started < m.SLOW_SECONDS, "the read timeout was not applied"
    assert REQUEST_ID.match(exc.value.request_id or "")


# --- persistence / lifecycle --------------------------------------------------


def test_keys_survive_restart(gateway):
    key = gateway.create_key("persistent", prefix="sk-prod-")
    assert key["value"].startswith("sk-prod-")
    gateway.restart()
    c = gateway.client(key["value"])
    assert [mdl.id for mdl in c.models.list().data] == m.MODELS
    r = gateway.admin("GET", f"/v1/organization/projects/{gateway.project_id()}/api_keys/{key['id']}")
    assert r.status == 200
    assert "value" not in r.json()
    assert key["value"] not in r.body.decode()


def test_bootstrap_admin_key_printed_once(make_gateway):
    gw = make_gateway(admin_key=None)
    first = gw.stderr()
    found = re.findall(r"sk-admin-[A-Za-z0-9_-]+", first)
    assert len(found) == 1, f"expected exactly one admin key in stderr, got {found}\n{first}"
    admin = found[0]
    assert admin.startswith("sk-admin-kg1")
    r = gw.admin("GET", "/v1/organization/projects", key=admin)
    assert r.status == 200, r.body
    assert r.json()["object"] == "list"

    gw.restart()
    second = gw.stderr()
    assert "sk-admin-kg1" not in second, second
    assert gw.admin("GET", "/v1/organization/projects", key=admin).status == 200


def test_sigterm_shuts_down_cleanly(gateway):
    assert gateway.stop() == 0
