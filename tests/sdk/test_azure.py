"""keygate's Azure OpenAI front door and Azure upstreams, through the official SDK.

The front door: `openai.AzureOpenAI` pointed at keygate with a keygate project
key, both with `azure_deployment` set (the SDK's base URL is
`/openai/deployments/{deployment}`) and unset (the SDK moves `model` into the
path). keygate resolves the deployment to its model and forwards to the mock as
an OpenAI request. Azure's own errors must match Azure byte for byte.

Azure upstreams: an `[[upstreams]]` entry with `kind = "azure"` pointing at the
mock's `/openai/deployments/...` routes; OpenAI clients must get clean
OpenAI-shaped answers out of Azure-shaped ones.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from urllib.parse import urlencode

import openai
import pytest

from conftest import HTTP_TIMEOUT_S, UPSTREAM_SECRET, Gateway, RawResponse
from mock_upstream import (
    AZURE_CHAT_TEMPLATE,
    AZURE_STREAM_PIECES,
    CHAT_COMPLETION_TOKENS,
    CHAT_CONTENT,
    CHAT_PROMPT_TOKENS,
    CHAT_STREAM_PIECES,
    CHAT_TOTAL_TOKENS,
    EMBEDDING,
    EMBEDDING_TOKENS_PER_INPUT,
    MODELS,
)

# The Azure SDK reads these; a stray value must not leak into tests.
for _var in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION"):
    os.environ.pop(_var, None)

API_VERSION = "2024-10-21"
REGION = "Test Region"
FRONT_DOOR_ENV = {
    "KEYGATE_AZURE__DEPLOYMENTS": '{ "prod-gpt4o" = "gpt-4o", "embed" = "text-embedding-3-small" }',
    "KEYGATE_AZURE__REGION": REGION,
}

INVALID_KEY_BODY = (
    b'{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. '
    b"Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for "
    b'your resource."}}'
)
RESOURCE_NOT_FOUND_BODY = b'{"error":{"code":"404","message": "Resource not found"}}'
DEPLOYMENT_NOT_FOUND_BODY = (
    b'{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. '
    b'If you created the deployment within the last 5 minutes, please wait a moment and try again."}}'
)
VERSION_NOT_SUPPORTED_BODY = b'{"error":{"code":"BadRequest","message":"API version not supported"}}'

# An OpenAI-issued key's shape (fake): keygate must recognize and refuse it.
OPENAI_SHAPED_KEY = "sk-proj-" + "a" * 20 + "T3BlbkFJ" + "b" * 20

# The Azure upstream: its own credential, its own deployment names.
AZURE_UPSTREAM_SECRET = "azure-upstream-secret-for-tests"
AZURE_UPSTREAM_KEY_ENV = "MOCK_AZURE_UPSTREAM_KEY"

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")
HELLO = [{"role": "user", "content": "Say hello"}]


def test_fixed_bodies_have_azures_lengths():
    assert len(INVALID_KEY_BODY) == 224
    assert len(RESOURCE_NOT_FOUND_BODY) == 56


# --- helpers --------------------------------------------------------------------


def azure_client(gw: Gateway, key: str, deployment: str | None = None, api_version: str = API_VERSION,
                 endpoint: str | None = None, **kw) -> openai.AzureOpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", HTTP_TIMEOUT_S)
    return openai.AzureOpenAI(
        azure_endpoint=endpoint or gw.url,
        azure_deployment=deployment,
        api_key=key,
        api_version=api_version,
        **kw,
    )


def assert_azure_headers(headers, region: str = REGION) -> None:
    """What every Azure answer carries, success or error."""
    apim = headers.get("apim-request-id")
    assert apim, dict(headers)
    assert str(uuid.UUID(apim)) == apim.lower(), apim
    assert headers.get("x-ms-region") == region, dict(headers)
    assert headers.get("x-ms-client-request-id"), dict(headers)
    assert REQUEST_ID.fullmatch(headers.get("x-request-id", "")), dict(headers)


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def denial_record(gw: Gateway, rid: str, timeout: float = 5.0) -> dict:
    """GET /v1/organization/requests/{rid}, polled: denials are written ~1 s later."""

    def get():
        r = gw.admin("GET", f"/v1/organization/requests/{rid}")
        if r.status == 200:
            return r.json()
        assert r.status == 404, (r.status, r.body)
        return None

    return wait_for(get, timeout, f"the denial record of {rid}")


def usage_by_model(gw: Gateway, kind: str, key_id: str) -> dict[str, dict]:
    """{model: result} of one key's usage in a window around now."""
    now = int(time.time())
    query = urlencode([("start_time", now - now % 60 - 3600), ("end_time", now + 3600), ("bucket_width", "1d"),
                       ("group_by", "model"), ("api_key_ids", key_id)])
    r = gw.admin("GET", f"/v1/organization/usage/{kind}?{query}")
    assert r.status == 200, (r.status, r.body)
    return {res["model"]: res for bucket in r.json()["data"] for res in bucket["results"]}


def wait_for_usage(gw: Gateway, kind: str, key_id: str, requests: int, timeout: float = 6.0) -> dict[str, dict]:
    def get():
        by_model = usage_by_model(gw, kind, key_id)
        return by_model if sum(r["num_model_requests"] for r in by_model.values()) >= requests else None

    return wait_for(get, timeout, f"{requests} {kind} requests in the usage API")


def azure_post(gw: Gateway, path: str, key: str | None, body: dict | None = None,
               headers: dict[str, str] | None = None) -> RawResponse:
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["api-key"] = key
    return gw.request("POST", path, headers=hdrs, body=body if body is not None else {"messages": HELLO})


def chat_path(deployment: str = "prod-gpt4o", api_version: str | None = API_VERSION) -> str:
    path = f"/openai/deployments/{deployment}/chat/completions"
    return path if api_version is None else f"{path}?api-version={api_version}"


def assert_never_leaked(mock_upstream, *secrets: str) -> None:
    requests = mock_upstream.requests
    assert requests, "the mock upstream saw no request"
    for rec in requests:
        for secret in secrets:
            for name, value in rec.header_items:
                assert secret not in value, f"{secret!r} reached the upstream in {name}: {rec.path}"
            assert secret.encode() not in rec.body, f"{secret!r} reached the upstream in a body: {rec.path}"
            assert secret not in rec.path


# --- fixtures -------------------------------------------------------------------


@pytest.fixture
def azure_gw(make_gateway) -> Gateway:
    """A gateway whose Azure front door serves `prod-gpt4o` and `embed` (configured by env)."""
    return make_gateway(extra_env=FRONT_DOOR_ENV)


@pytest.fixture
def key(azure_gw) -> str:
    return azure_gw.create_key("azure-sdk")["value"]


def azure_upstream_toml(mock_upstream, front_door: bool = True) -> str:
    toml = f"""
[[upstreams]]
name = "azure-mock"
kind = "azure"
url = "{mock_upstream.root_url}"
api_version = "{API_VERSION}"
api_key_env = "{AZURE_UPSTREAM_KEY_ENV}"
models = ["gpt-4o*", "text-embedding-*"]

[upstreams.deployments]
"gpt-4o" = "prod-4o"
"text-embedding-3-small" = "embed-small"
"""
    if front_door:
        toml += f"""
[azure]
region = "{REGION}"

[azure.deployments]
"prod-gpt4o" = "gpt-4o"
"embed" = "text-embedding-3-small"
"""
    return toml


@pytest.fixture
def azure_upstream_gw(make_gateway, mock_upstream) -> Gateway:
    """The default upstream is the mock's OpenAI API; gpt-4o* and text-embedding-* go to its Azure routes."""
    return make_gateway(config_toml=azure_upstream_toml(mock_upstream),
                        extra_env={AZURE_UPSTREAM_KEY_ENV: AZURE_UPSTREAM_SECRET})


# --- the front door: data plane ------------------------------------------------


def test_chat_through_azure_deployment(azure_gw, key, mock_upstream):
    client = azure_client(azure_gw, key, deployment="prod-gpt4o")
    raw = client.chat.completions.with_raw_response.create(model="prod-gpt4o", messages=HELLO)
    assert raw.http_request.url.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert raw.http_request.url.params["api-version"] == API_VERSION
    assert raw.http_request.headers["api-key"] == key
    assert_azure_headers(raw.headers)
    assert raw.headers["x-ms-client-request-id"] == raw.headers["apim-request-id"]
    completion = raw.parse()
    assert completion.choices[0].message.content == CHAT_CONTENT
    assert completion.usage.total_tokens == CHAT_TOTAL_TOKENS

    sent = mock_upstream.last()
    assert sent.path == "/v1/chat/completions", "the api-version is Azure's, not the upstream's"
    assert sent.json()["model"] == "gpt-4o", "the deployment is resolved to its model"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert "api-key" not in sent.headers
    assert_never_leaked(mock_upstream, key)


def test_chat_with_model_as_deployment(azure_gw, key, mock_upstream):
    client = azure_client(azure_gw, key)  # no azure_deployment: the SDK puts `model` in the path
    raw = client.chat.completions.with_raw_response.create(model="prod-gpt4o", messages=HELLO)
    assert raw.http_request.url.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert raw.parse().choices[0].message.content == CHAT_CONTENT
    assert_azure_headers(raw.headers)
    sent = mock_upstream.last()
    assert (sent.path, sent.json()["model"]) == ("/v1/chat/completions", "gpt-4o")
    assert_never_leaked(mock_upstream, key)


def test_client_request_id_is_echoed(azure_gw, key):
    client = azure_client(azure_gw, key, deployment="prod-gpt4o")
    raw = client.chat.completions.with_raw_response.create(
        model="prod-gpt4o", messages=HELLO, extra_headers={"x-ms-client-request-id": "my-trace-0001"})
    assert raw.headers["x-ms-client-request-id"] == "my-trace-0001"
    assert raw.headers["apim-request-id"] != "my-trace-0001"


@pytest.mark.parametrize("deployment", ["prod-gpt4o", None])
def test_streaming_chat(azure_gw, key, mock_upstream, deployment):
    client = azure_client(azure_gw, key, deployment=deployment)
    stream = client.chat.completions.create(model="prod-gpt4o", messages=HELLO, stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == CHAT_STREAM_PIECES
    assert all(c.usage is None for c in chunks), "keygate's injected usage chunk must not reach the client"
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant"
    sent = mock_upstream.last()
    assert sent.json()["model"] == "gpt-4o"
    assert sent.json()["stream_options"] == {"include_usage": True}, "keygate asks for usage to meter the stream"
    assert_never_leaked(mock_upstream, key)


def test_streaming_chat_with_usage(azure_gw, key):
    client = azure_client(azure_gw, key, deployment="prod-gpt4o")
    with client.chat.completions.with_streaming_response.create(
        model="prod-gpt4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert_azure_headers(response.headers)
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(CHAT_STREAM_PIECES)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == CHAT_TOTAL_TOKENS


@pytest.mark.parametrize("deployment", ["embed", None])
def test_embeddings(azure_gw, key, mock_upstream, deployment):
    client = azure_client(azure_gw, key, deployment=deployment)
    raw = client.embeddings.with_raw_response.create(model="embed", input=["one", "two"])
    assert raw.http_request.url.path == "/openai/deployments/embed/embeddings"
    assert_azure_headers(raw.headers)
    result = raw.parse()
    assert [d.embedding for d in result.data] == [EMBEDDING, EMBEDDING]
    sent = mock_upstream.last()
    assert sent.path == "/v1/embeddings"
    assert sent.json()["model"] == "text-embedding-3-small"
    assert_never_leaked(mock_upstream, key)


@pytest.mark.parametrize("deployment", ["prod-gpt4o", None])
def test_models_list(azure_gw, key, mock_upstream, deployment):
    client = azure_client(azure_gw, key, deployment=deployment)
    raw = client.models.with_raw_response.list()
    assert raw.http_request.url.path == "/openai/models"
    assert raw.http_request.url.params["api-version"] == API_VERSION
    assert raw.status_code == 200
    assert_azure_headers(raw.headers)
    ids = [m.id for m in raw.parse()]
    assert set(MODELS) <= set(ids), ids
    assert mock_upstream.last().path == "/v1/models"
    assert_never_leaked(mock_upstream, key)


def test_bearer_authorization_works_on_azure_routes(azure_gw, key):
    r = azure_gw.request("POST", chat_path(), headers={"Authorization": f"Bearer {key}"}, body={"messages": HELLO})
    assert r.status == 200, r.body
    assert r.json()["choices"][0]["message"]["content"] == CHAT_CONTENT


def test_authorization_and_api_key_must_carry_the_same_key(azure_gw, key):
    # Older Azure SDKs send both headers with the same key: accepted.
    same = azure_post(azure_gw, chat_path(), key, headers={"Authorization": f"Bearer {key}"})
    assert same.status == 200, same.body
    # Two different keys: refused, whichever of them is valid.
    for api_key, bearer in [(key, "not-a-keygate-key"), ("0123456789abcdef0123456789abcdef", key)]:
        refused = azure_post(azure_gw, chat_path(), api_key, headers={"Authorization": f"Bearer {bearer}"})
        assert refused.status == 401
        assert refused.body == INVALID_KEY_BODY


def test_double_slash_before_openai_is_collapsed(azure_gw, key, mock_upstream):
    r = azure_post(azure_gw, "/" + chat_path(), key)
    assert r.status == 200, r.body
    assert r.json()["choices"][0]["message"]["content"] == CHAT_CONTENT
    assert_azure_headers(r.headers)
    assert mock_upstream.last().path == "/v1/chat/completions"
    # An unknown deployment behind the doubled slash is Azure's DeploymentNotFound, not an OpenAI 404.
    unknown = azure_post(azure_gw, "/" + chat_path(deployment="no-such-deployment"), key)
    assert unknown.status == 404
    assert unknown.body == DEPLOYMENT_NOT_FOUND_BODY
    # The SDK with a trailing slash on the endpoint still reaches keygate.
    client = azure_client(azure_gw, key, deployment="prod-gpt4o", endpoint=azure_gw.url + "/")
    assert client.chat.completions.create(model="prod-gpt4o", messages=HELLO).choices[0].message.content == CHAT_CONTENT


def test_openai_v1_surface_takes_deployment_as_model(azure_gw, key, mock_upstream):
    client = openai.OpenAI(base_url=f"{azure_gw.url}/openai/v1", api_key=key, max_retries=0, timeout=HTTP_TIMEOUT_S)
    raw = client.chat.completions.with_raw_response.create(model="prod-gpt4o", messages=HELLO)
    assert raw.parse().choices[0].message.content == CHAT_CONTENT
    assert_azure_headers(raw.headers)
    assert mock_upstream.last().json()["model"] == "gpt-4o"
    emb = client.embeddings.create(model="embed", input="hello")
    assert emb.data[0].embedding == EMBEDDING
    assert mock_upstream.last().json()["model"] == "text-embedding-3-small"
    assert_never_leaked(mock_upstream, key)


def test_same_key_works_on_openai_and_azure_routes(azure_gw, key, mock_upstream):
    openai_client = azure_gw.client(key)
    assert openai_client.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content == CHAT_CONTENT
    assert openai_client.embeddings.create(model="text-embedding-3-small", input="x").data[0].embedding == EMBEDDING
    assert {m.id for m in openai_client.models.list()} >= set(MODELS)
    azure = azure_client(azure_gw, key, deployment="prod-gpt4o")
    assert azure.chat.completions.create(model="prod-gpt4o", messages=HELLO).choices[0].message.content == CHAT_CONTENT
    assert [r.json()["model"] for r in mock_upstream.requests if r.method == "POST"] == [
        "gpt-4o", "text-embedding-3-small", "gpt-4o"]
    assert_never_leaked(mock_upstream, key)


def test_openai_surface_answers_without_azure_headers(azure_gw, key):
    raw = azure_gw.client(key).chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert "apim-request-id" not in raw.headers
    assert REQUEST_ID.fullmatch(raw.headers["x-request-id"])


def test_azure_requests_are_metered_under_the_model(azure_gw, mock_upstream):
    created = azure_gw.create_key("metered")
    client = azure_client(azure_gw, created["value"], deployment="prod-gpt4o")
    client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
    list(client.chat.completions.create(model="prod-gpt4o", messages=HELLO, stream=True))
    azure_client(azure_gw, created["value"]).embeddings.create(model="embed", input=["a", "b"])
    chat = wait_for_usage(azure_gw, "completions", created["id"], 2)
    assert set(chat) == {"gpt-4o"}, "usage is under the model, not the deployment"
    assert chat["gpt-4o"]["num_model_requests"] == 2
    assert chat["gpt-4o"]["input_tokens"] == 2 * CHAT_PROMPT_TOKENS
    assert chat["gpt-4o"]["output_tokens"] == 2 * CHAT_COMPLETION_TOKENS
    emb = wait_for_usage(azure_gw, "embeddings", created["id"], 1)
    assert set(emb) == {"text-embedding-3-small"}
    assert emb["text-embedding-3-small"]["input_tokens"] == 2 * EMBEDDING_TOKENS_PER_INPUT


# --- the front door: Azure's errors, byte for byte ------------------------------


def test_wrong_key_is_azures_401(azure_gw, key, mock_upstream):
    for bad in ("0123456789abcdef0123456789abcdef", key[:-1] + ("A" if key[-1] != "A" else "B")):
        client = azure_client(azure_gw, bad, deployment="prod-gpt4o")
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
        e = exc.value
        assert e.status_code == 401
        assert e.response.content == INVALID_KEY_BODY, (bad, e.response.content)
        assert e.response.headers["content-length"] == "224"
        assert e.code == "401"
        assert_azure_headers(e.response.headers)
    assert mock_upstream.requests == []


def test_missing_key_is_azures_401(azure_gw, mock_upstream):
    r = azure_post(azure_gw, chat_path(), None)
    assert r.status == 401
    assert r.body == INVALID_KEY_BODY
    assert_azure_headers(r.headers)
    assert mock_upstream.requests == []


def test_revoked_key_is_azures_401(azure_gw, mock_upstream):
    created = azure_gw.create_key("soon-revoked")
    client = azure_client(azure_gw, created["value"], deployment="prod-gpt4o")
    assert client.chat.completions.create(model="prod-gpt4o", messages=HELLO).choices[0].message.content
    azure_gw.revoke(created["id"])
    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
    assert exc.value.response.content == INVALID_KEY_BODY
    assert mock_upstream.requests == []


@pytest.mark.parametrize("deployment", ["nope", None])
def test_unknown_deployment_is_not_found(azure_gw, key, mock_upstream, deployment):
    client = azure_client(azure_gw, key, deployment=deployment)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=HELLO)
    e = exc.value
    assert e.status_code == 404
    assert e.code == "DeploymentNotFound"
    assert e.response.content == DEPLOYMENT_NOT_FOUND_BODY
    assert_azure_headers(e.response.headers)
    assert mock_upstream.requests == []


def test_missing_api_version_is_resource_not_found(azure_gw, key, mock_upstream):
    for method, path, body in [
        ("POST", chat_path(api_version=None), {"messages": HELLO}),
        ("POST", "/openai/deployments/embed/embeddings", {"input": "x"}),
        ("GET", "/openai/models", None),
    ]:
        r = azure_gw.request(method, path, headers={"api-key": key}, body=body)
        assert (r.status, r.body) == (404, RESOURCE_NOT_FOUND_BODY), (method, path)
        assert r.headers["content-length"] == "56"
        assert_azure_headers(r.headers)
    assert mock_upstream.requests == []


def test_unsupported_api_version_is_resource_not_found(azure_gw, key, mock_upstream):
    for deployment in ("prod-gpt4o", None):
        client = azure_client(azure_gw, key, deployment=deployment, api_version="0613")
        with pytest.raises(openai.NotFoundError) as exc:
            client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
        assert exc.value.response.content == RESOURCE_NOT_FOUND_BODY
        assert_azure_headers(exc.value.response.headers)
    with pytest.raises(openai.NotFoundError) as exc:
        azure_client(azure_gw, key, api_version="0613").models.list()
    assert exc.value.response.content == RESOURCE_NOT_FOUND_BODY
    assert mock_upstream.requests == []


def test_other_accepted_api_versions(azure_gw, key):
    for version in ("2024-02-01", "2024-02-15-preview", "2025-01-01-preview"):
        client = azure_client(azure_gw, key, deployment="prod-gpt4o", api_version=version)
        assert client.chat.completions.create(model="prod-gpt4o", messages=HELLO).choices[0].message.content


def test_v1_surface_refuses_dated_api_version(azure_gw, key, mock_upstream):
    r = azure_gw.request("POST", f"/openai/v1/chat/completions?api-version={API_VERSION}",
                         headers={"api-key": key}, body={"model": "prod-gpt4o", "messages": HELLO})
    assert (r.status, r.body) == (400, VERSION_NOT_SUPPORTED_BODY)
    assert_azure_headers(r.headers)
    client = openai.OpenAI(base_url=f"{azure_gw.url}/openai/v1", api_key=key, max_retries=0,
                           default_query={"api-version": API_VERSION})
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
    assert exc.value.response.content == VERSION_NOT_SUPPORTED_BODY
    assert mock_upstream.requests == []


def test_rate_limit_is_azures_429(azure_gw, mock_upstream):
    limited = azure_gw.create_key("limited", rate_limits={"max_requests_per_1_minute": 1})["value"]
    client = azure_client(azure_gw, limited, deployment="prod-gpt4o")
    client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
    e = exc.value
    assert e.code == "429"
    seconds = int(e.response.headers["retry-after"])
    assert 1 <= seconds <= 60
    assert 0 < int(e.response.headers["retry-after-ms"]) <= 60_000
    assert e.body["message"] == (
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {API_VERSION} have "
        f"exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds. "
        "Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
    )
    assert_azure_headers(e.response.headers)
    assert len(mock_upstream.requests) == 1


# --- explain --------------------------------------------------------------------


def test_model_name_as_deployment_is_explained(azure_gw, key, mock_upstream):
    client = azure_client(azure_gw, key)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert exc.value.code == "DeploymentNotFound"
    assert exc.value.response.content == DEPLOYMENT_NOT_FOUND_BODY
    rid = exc.value.response.headers["x-request-id"]
    record = denial_record(azure_gw, rid)
    assert record["reason"] == "unknown_deployment", record
    text = record["explanation"]
    assert "`gpt-4o` is a model name" in text and "prod-gpt4o" in text, text
    assert key not in json.dumps(record)
    assert mock_upstream.requests == []


def test_openai_key_on_azure_route_is_explained(azure_gw, mock_upstream):
    client = azure_client(azure_gw, OPENAI_SHAPED_KEY, deployment="prod-gpt4o")
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="prod-gpt4o", messages=HELLO)
    assert exc.value.response.content == INVALID_KEY_BODY, "Azure's body never hints"
    record = denial_record(azure_gw, exc.value.response.headers["x-request-id"])
    assert "an OpenAI API key" in record["explanation"], record
    assert OPENAI_SHAPED_KEY not in json.dumps(record)
    assert mock_upstream.requests == []


# --- Azure upstreams ------------------------------------------------------------


def assert_clean_chat_json(body: dict) -> None:
    assert "prompt_filter_results" not in body, body
    for choice in body["choices"]:
        assert "content_filter_results" not in choice, body


def test_openai_client_gets_clean_chat_from_azure_upstream(azure_upstream_gw, mock_upstream):
    key = azure_upstream_gw.create_key("openai-to-azure")["value"]
    client = azure_upstream_gw.client(key)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.status_code == 200
    assert "apim-request-id" not in raw.headers, "an OpenAI client gets OpenAI's headers"
    body = json.loads(raw.content)
    assert_clean_chat_json(body)
    completion = raw.parse()
    assert completion.choices[0].message.content == AZURE_CHAT_TEMPLATE.format(deployment="prod-4o")
    assert completion.usage.total_tokens == CHAT_TOTAL_TOKENS
    assert "prompt_filter_results" not in (completion.model_extra or {})

    sent = mock_upstream.last()
    assert sent.path == f"/openai/deployments/prod-4o/chat/completions?api-version={API_VERSION}"
    assert sent.headers["api-key"] == AZURE_UPSTREAM_SECRET
    assert "authorization" not in sent.headers
    assert b'"prompt_filter_results"' in sent.response_body, "the mock did answer in Azure's shape"
    assert_never_leaked(mock_upstream, key, UPSTREAM_SECRET)


def test_openai_client_gets_clean_stream_from_azure_upstream(azure_upstream_gw, mock_upstream):
    key = azure_upstream_gw.create_key("openai-to-azure")["value"]
    client = azure_upstream_gw.client(key)
    piece_text = "".join(AZURE_STREAM_PIECES).format(deployment="prod-4o")

    # Raw SSE first: nothing Azure-only, no empty-choices chunk, ends with [DONE].
    with client.chat.completions.with_streaming_response.create(model="gpt-4o", messages=HELLO, stream=True) as resp:
        text = resp.read().decode()
    assert "prompt_filter_results" not in text and "content_filter_results" not in text, text
    assert '"choices":[]' not in text.replace(" ", ""), text
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["choices"][0]["delta"]["role"] == "assistant", first
    sent = mock_upstream.last()
    assert sent.path == f"/openai/deployments/prod-4o/chat/completions?api-version={API_VERSION}"
    assert sent.headers["api-key"] == AZURE_UPSTREAM_SECRET
    assert b'"prompt_filter_results"' in sent.response_body, "the mock did send Azure's filter chunk"

    # The SDK's view, with usage asked for.
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == piece_text
    assert all(c.choices for c in chunks[:-1]), "only the usage chunk may have no choices"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == CHAT_TOTAL_TOKENS
    for c in chunks:
        assert "prompt_filter_results" not in (c.model_extra or {})
        for choice in c.choices:
            assert "content_filter_results" not in (choice.model_extra or {})
    assert_never_leaked(mock_upstream, key, UPSTREAM_SECRET)


def test_openai_client_embeddings_from_azure_upstream(azure_upstream_gw, mock_upstream):
    key = azure_upstream_gw.create_key("openai-to-azure")["value"]
    result = azure_upstream_gw.client(key).embeddings.create(model="text-embedding-3-small", input="hello")
    assert result.data[0].embedding == EMBEDDING
    sent = mock_upstream.last()
    assert sent.path == f"/openai/deployments/embed-small/embeddings?api-version={API_VERSION}"
    assert sent.headers["api-key"] == AZURE_UPSTREAM_SECRET
    assert "authorization" not in sent.headers


def test_models_not_routed_to_azure_stay_on_the_default_upstream(azure_upstream_gw, mock_upstream):
    key = azure_upstream_gw.create_key("openai-to-azure")["value"]
    azure_upstream_gw.client(key).chat.completions.create(model="gpt-3.5-turbo", messages=HELLO)
    sent = mock_upstream.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert "api-key" not in sent.headers


def test_azure_client_through_azure_upstream_keeps_azure_fields(azure_upstream_gw, mock_upstream):
    key = azure_upstream_gw.create_key("azure-to-azure")["value"]
    client = azure_client(azure_upstream_gw, key, deployment="prod-gpt4o")
    raw = client.chat.completions.with_raw_response.create(model="prod-gpt4o", messages=HELLO)
    assert_azure_headers(raw.headers)
    body = json.loads(raw.content)
    assert body["choices"][0]["message"]["content"] == AZURE_CHAT_TEMPLATE.format(deployment="prod-4o")
    assert "prompt_filter_results" in body, "an Azure client expects Azure's content-filter fields"
    assert "content_filter_results" in body["choices"][0]
    sent = mock_upstream.last()
    assert sent.path == f"/openai/deployments/prod-4o/chat/completions?api-version={API_VERSION}"
    assert sent.headers["api-key"] == AZURE_UPSTREAM_SECRET
    assert_never_leaked(mock_upstream, key, UPSTREAM_SECRET)


def test_azure_client_streams_through_azure_upstream(azure_upstream_gw, mock_upstream):
    key = azure_upstream_gw.create_key("azure-to-azure")["value"]
    client = azure_client(azure_upstream_gw, key, deployment="prod-gpt4o")
    piece_text = "".join(AZURE_STREAM_PIECES).format(deployment="prod-4o")
    chunks = list(client.chat.completions.create(model="prod-gpt4o", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == piece_text
    assert all(c.usage is None for c in chunks), "keygate's injected usage chunk must not reach the client"
    assert "prompt_filter_results" in (chunks[0].model_extra or {}), "an Azure client gets Azure's stream as is"
    sent = mock_upstream.last()
    assert sent.path == f"/openai/deployments/prod-4o/chat/completions?api-version={API_VERSION}"
    assert sent.json()["stream_options"] == {"include_usage": True}
    with_usage = list(client.chat.completions.create(model="prod-gpt4o", messages=HELLO, stream=True,
                                                     stream_options={"include_usage": True}))
    assert with_usage[-1].usage.total_tokens == CHAT_TOTAL_TOKENS
    assert_never_leaked(mock_upstream, key, UPSTREAM_SECRET)


def test_azure_upstream_requests_are_metered(azure_upstream_gw, mock_upstream):
    created = azure_upstream_gw.create_key("metered")
    client = azure_upstream_gw.client(created["value"])
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    chat = wait_for_usage(azure_upstream_gw, "completions", created["id"], 2)
    assert chat["gpt-4o"]["num_model_requests"] == 2
    assert chat["gpt-4o"]["input_tokens"] == 2 * CHAT_PROMPT_TOKENS, "the Azure upstream's own counts"
    assert chat["gpt-4o"]["output_tokens"] == 2 * CHAT_COMPLETION_TOKENS


# --- token limits on requests that generate no tokens ----------------------------


def test_token_limited_key_can_list_models(azure_gw):
    limited = azure_gw.create_key("tpm", rate_limits={"max_tokens_per_1_minute": 200})["value"]
    ids = [m.id for m in azure_client(azure_gw, limited).models.list()]
    assert set(MODELS) <= set(ids)


def test_token_limited_key_can_embed(azure_gw):
    limited = azure_gw.create_key("tpm", rate_limits={"max_tokens_per_1_minute": 200})["value"]
    result = azure_client(azure_gw, limited, deployment="embed").embeddings.create(model="embed", input="hi")
    assert result.data[0].embedding == EMBEDDING
