"""Scopes and permissions, model and IP allow-lists, organization/project headers,
projects, service accounts, users and admin keys, driven by the official `openai`
SDK (and raw HTTP for the Administration API, which the SDK does not cover)."""

from __future__ import annotations

import time

import openai
import pytest

import mock_upstream as m
from conftest import ADMIN_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]
EMBED_MODEL = "text-embedding-3-small"


def missing_scope(scope: str) -> str:
    return (
        f"You have insufficient permissions for this operation. Missing scopes: {scope}. Check that you have the "
        "correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using "
        "a restricted API key, that it has the necessary scopes.")


def model_not_found(model: str) -> str:
    return f"The model `{model}` does not exist or you do not have access to it."


def assert_missing_scope(exc_info, scope: str) -> None:
    e = exc_info.value
    assert isinstance(e, openai.AuthenticationError), type(e)
    assert e.status_code == 401
    assert e.type == "invalid_request_error"
    assert e.code is None
    assert e.param is None
    assert e.body["message"] == missing_scope(scope)


def assert_invalid_api_key(exc_info, key: str) -> None:
    e = exc_info.value
    assert e.status_code == 401
    assert e.code == "invalid_api_key"
    assert e.type == "invalid_request_error"
    assert e.body["message"].startswith("Incorrect API key provided: ")
    assert key not in e.response.text


def assert_model_not_found(exc_info, model: str) -> None:
    e = exc_info.value
    assert isinstance(e, openai.NotFoundError), type(e)
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.type == "invalid_request_error"
    assert e.body["message"] == model_not_found(model)


def passes_gateway(call, mock, path: str) -> None:
    """`call` got past keygate's checks: it reached the mock upstream, which has no
    such endpoint for some routes (files, moderations) and answers 404 Invalid URL."""
    before = len(mock.requests)
    try:
        call()
    except openai.NotFoundError as e:
        assert e.body["message"].startswith("Invalid URL"), e.body
    assert len(mock.requests) == before + 1, "the request did not reach the upstream"
    assert mock.requests[-1].path.startswith(path), mock.requests[-1].path


def chat(c: openai.OpenAI, model: str = "gpt-4o"):
    return c.chat.completions.create(model=model, messages=MESSAGES)


def embed(c: openai.OpenAI, model: str = EMBED_MODEL):
    return c.embeddings.create(model=model, input="hi")


def complete(c: openai.OpenAI, model: str = "gpt-4o-mini"):
    return c.completions.create(model=model, prompt="Once")


def moderate(c: openai.OpenAI):
    return c.moderations.create(input="hi")


def upload(c: openai.OpenAI):
    return c.files.create(file=("data.jsonl", b'{"a": 1}\n'), purpose="assistants")


def restricted(gateway, *scopes: str, **fields) -> openai.OpenAI:
    key = gateway.create_key("restricted", permissions="restricted", scopes=list(scopes), **fields)
    assert key["permissions"] == "restricted"
    assert sorted(key["scopes"]) == sorted(scopes)
    return gateway.client(key["value"])


# --- read_only ----------------------------------------------------------------


def test_read_only_key_lists_models_but_chat_is_refused_naming_model_request(gateway, mock_upstream):
    key = gateway.create_key("ro", permissions="read_only")
    assert key["permissions"] == "read_only"
    assert key["scopes"] == ["api.all.read"]
    c = gateway.client(key["value"])
    assert [x.id for x in c.models.list().data] == m.MODELS
    assert c.models.retrieve("gpt-4o").id == "gpt-4o"

    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert_missing_scope(exc, "model.request")
    with pytest.raises(openai.AuthenticationError) as exc:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert_missing_scope(exc, "model.request")
    assert mock_upstream.requests == [], "a refused request must not reach the upstream"


def test_read_only_key_is_refused_every_write(gateway, mock_upstream):
    c = gateway.client(gateway.create_key("ro", permissions="read_only")["value"])
    for call, scope in [
        (embed, "model.request"),
        (complete, "model.request"),
        (moderate, "model.request"),
        (lambda c: c.responses.create(model="gpt-4o", input="x"), "api.responses.write"),
        (upload, "api.files.write"),
    ]:
        with pytest.raises(openai.AuthenticationError) as exc:
            call(c)
        assert_missing_scope(exc, scope)
    assert mock_upstream.requests == []


def test_read_only_key_may_get_mapped_resources_but_not_unmapped_ones(gateway, mock_upstream):
    key = gateway.create_key("ro", permissions="read_only")["value"]
    c = gateway.client(key)
    passes_gateway(lambda: c.files.list(), mock_upstream, "/v1/files")
    passes_gateway(lambda: c.responses.retrieve("resp_x"), mock_upstream, "/v1/responses/resp_x")
    mock_upstream.clear()
    r = gateway.request("GET", "/v1/some_unmapped_resource", headers={"Authorization": f"Bearer {key}"})
    assert r.status == 401, r.body
    assert r.error["message"] == missing_scope("api.all.read")
    assert mock_upstream.requests == []


# --- restricted -------------------------------------------------------------


def test_embeddings_only_key_can_embed_but_chat_is_refused_naming_the_scope(gateway, mock_upstream):
    c = restricted(gateway, "api.model.embeddings.request")
    resp = embed(c)
    assert resp.data[0].embedding == m.EMBEDDING
    mock_upstream.clear()
    for call in (chat, complete, moderate):
        with pytest.raises(openai.AuthenticationError) as exc:
            call(c)
        assert_missing_scope(exc, "model.request")
    # Listing models is a different scope, which this key lacks too.
    with pytest.raises(openai.AuthenticationError) as exc:
        c.models.list()
    assert_missing_scope(exc, "api.model.read")
    assert mock_upstream.requests == []


@pytest.mark.parametrize("scope, allowed", [
    ("api.model.chat.request", chat),
    ("api.model.completions.request", complete),
    ("api.model.embeddings.request", embed),
])
def test_per_capability_scope_grants_exactly_that_capability(gateway, mock_upstream, scope, allowed):
    c = restricted(gateway, scope)
    allowed(c)
    for other in (chat, complete, embed):
        if other is allowed:
            continue
        with pytest.raises(openai.AuthenticationError) as exc:
            other(c)
        assert_missing_scope(exc, "model.request")


def test_moderations_scope_grants_moderations_only(gateway, mock_upstream):
    c = restricted(gateway, "api.model.moderations.request")
    passes_gateway(lambda: moderate(c), mock_upstream, "/v1/moderations")
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert_missing_scope(exc, "model.request")


@pytest.mark.parametrize("scope", ["model.request", "api.model.request"])
def test_model_request_umbrella_grants_every_model_capability(gateway, mock_upstream, scope):
    c = restricted(gateway, scope)
    assert chat(c).choices[0].message.content == m.CHAT_CONTENT
    assert embed(c).data[0].embedding == m.EMBEDDING
    assert complete(c).choices[0].text == m.COMPLETION_TEXT
    passes_gateway(lambda: moderate(c), mock_upstream, "/v1/moderations")
    # ...but not reading the model list, nor other resources.
    with pytest.raises(openai.AuthenticationError) as exc:
        c.models.list()
    assert_missing_scope(exc, "api.model.read")
    with pytest.raises(openai.AuthenticationError) as exc:
        c.responses.create(model="gpt-4o", input="x")
    assert_missing_scope(exc, "api.responses.write")


@pytest.mark.parametrize("scope", ["api.model.read", "model.read"])
def test_model_read_scope_lists_models_only(gateway, mock_upstream, scope):
    c = restricted(gateway, scope)
    assert [x.id for x in c.models.list().data] == m.MODELS
    assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert_missing_scope(exc, "model.request")


def test_responses_write_scope_allows_responses_but_not_chat(gateway, mock_upstream):
    c = restricted(gateway, "api.responses.write")
    assert c.responses.create(model="gpt-4o", input="x").output_text == m.RESPONSE_TEXT
    events = list(c.responses.create(model="gpt-4o", input="x", stream=True))
    assert events[-1].type == "response.completed"
    passes_gateway(lambda: c.responses.retrieve("resp_x"), mock_upstream, "/v1/responses/resp_x")  # write implies read
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert_missing_scope(exc, "model.request")


def test_files_write_implies_read_and_files_read_cannot_write(gateway, mock_upstream):
    writer = restricted(gateway, "api.files.write")
    passes_gateway(lambda: writer.files.list(), mock_upstream, "/v1/files")
    passes_gateway(lambda: upload(writer), mock_upstream, "/v1/files")
    passes_gateway(lambda: writer.files.delete("file-x"), mock_upstream, "/v1/files/file-x")

    reader = restricted(gateway, "api.files.read")
    passes_gateway(lambda: reader.files.list(), mock_upstream, "/v1/files")
    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        upload(reader)
    assert_missing_scope(exc, "api.files.write")
    with pytest.raises(openai.AuthenticationError) as exc:
        reader.files.delete("file-x")
    assert_missing_scope(exc, "api.files.write")
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(reader)
    assert_missing_scope(exc, "model.request")
    assert mock_upstream.requests == []


def test_scopes_without_permissions_field_mean_restricted(gateway):
    key = gateway.create_key("implicit", scopes=["api.model.read"])
    assert key["permissions"] == "restricted"
    assert key["scopes"] == ["api.model.read"]
    c = gateway.client(key["value"])
    c.models.list()
    with pytest.raises(openai.AuthenticationError):
        chat(c)


def test_default_key_has_all_permissions(gateway, mock_upstream):
    key = gateway.create_key("plain")
    assert key["permissions"] == "all"
    assert key["scopes"] == []
    assert key["models"] is None
    assert key["allowed_ips"] == []
    c = gateway.client(key["value"])
    chat(c)
    embed(c)
    c.models.list()
    passes_gateway(lambda: upload(c), mock_upstream, "/v1/files")




@pytest.mark.parametrize("path", [
    "/v1/embeddings/../chat/completions",
    "/v1/embeddings/%2e%2e/chat/completions",
    "/v1/embeddings/%2E%2E/chat/completions",
])
def test_dot_segments_cannot_smuggle_a_request_past_its_scope(gateway, mock_upstream, path):
    key = gateway.create_key("emb", permissions="restricted", scopes=["api.model.embeddings.request"])["value"]
    r = gateway.request("POST", path, headers={"Authorization": f"Bearer {key}"},
                        body={"model": "gpt-4o", "messages": MESSAGES})
    assert not [x for x in mock_upstream.requests if x.path.startswith("/v1/chat")], (
        f"an embeddings-only key reached the upstream's chat endpoint via {path} (keygate answered {r.status})")
    assert r.status != 200


def test_dot_segments_cannot_read_other_resources_with_a_model_read_key(gateway, mock_upstream):
    key = gateway.create_key("mr", permissions="restricted", scopes=["api.model.read"])["value"]
    r = gateway.request("GET", "/v1/models/../files", headers={"Authorization": f"Bearer {key}"})
    assert not [x for x in mock_upstream.requests if x.path.startswith("/v1/files")], (
        f"a models-only key reached the upstream's files endpoint (keygate answered {r.status})")


def test_dot_segments_cannot_reach_the_upstreams_organization_api(gateway, mock_upstream):
    key = gateway.create_key("ro", permissions="read_only")["value"]
    r = gateway.request("GET", "/v1/models/../organization/projects", headers={"Authorization": f"Bearer {key}"})
    assert not [x for x in mock_upstream.requests if x.path.startswith("/v1/organization")], (
        f"a project key reached the upstream's /v1/organization API (keygate answered {r.status})")


# --- model allow-list ---------------------------------------------------------


def test_key_limited_to_gpt_4o_mini_gets_not_found_for_gpt_4o(gateway, mock_upstream):
    key = gateway.create_key("mini", models=["gpt-4o-mini*"])
    assert key["models"] == ["gpt-4o-mini*"]
    c = gateway.client(key["value"])
    assert chat(c, "gpt-4o-mini").choices[0].message.content == m.CHAT_CONTENT
    mock_upstream.clear()
    with pytest.raises(openai.NotFoundError) as exc:
        chat(c, "gpt-4o")
    assert_model_not_found(exc, "gpt-4o")
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert_model_not_found(exc, "gpt-4o")
    with pytest.raises(openai.NotFoundError) as exc:
        embed(c)
    assert_model_not_found(exc, EMBED_MODEL)
    with pytest.raises(openai.NotFoundError) as exc:
        c.responses.create(model="gpt-4o", input="x")
    assert_model_not_found(exc, "gpt-4o")
    assert mock_upstream.requests == [], "a refused model must not reach the upstream"


def test_model_limited_key_sees_only_its_models(gateway):
    c = gateway.client(gateway.create_key("mini", models=["gpt-4o-mini*"])["value"])
    assert [x.id for x in c.models.list().data] == ["gpt-4o-mini"]
    assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as exc:
        c.models.retrieve("gpt-4o")
    assert_model_not_found(exc, "gpt-4o")


def test_project_model_allow_list_applies_to_its_keys_and_intersects_with_the_keys(gateway, mock_upstream):
    project = gateway.create_project("embeddings-only", models=["text-embedding-*"])
    assert project["models"] == ["text-embedding-*"]
    c = gateway.client(gateway.create_key("k", project_id=project["id"])["value"])
    assert [x.id for x in c.models.list().data] == [EMBED_MODEL]
    embed(c)
    with pytest.raises(openai.NotFoundError) as exc:
        chat(c, "gpt-4o-mini")
    assert_model_not_found(exc, "gpt-4o-mini")

    both = gateway.create_project("gpt", models=["gpt-4o*"])
    c = gateway.client(gateway.create_key("k", project_id=both["id"], models=["*-mini"])["value"])
    assert [x.id for x in c.models.list().data] == ["gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        chat(c, "gpt-4o")
    chat(c, "gpt-4o-mini")




@pytest.mark.parametrize("content_type", [
    "Application/JSON",
    None,
    "text/plain",
])
def test_model_allow_list_is_not_bypassed_by_the_content_type(gateway, mock_upstream, content_type):
    key = gateway.create_key("mini", models=["gpt-4o-mini*"])["value"]
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    r = gateway.request("POST", "/v1/chat/completions", headers=headers,
                        body=b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}')
    leaked = [x for x in mock_upstream.requests if b"gpt-4o\"" in x.body]
    assert not leaked, f"model gpt-4o reached the upstream with Content-Type {content_type!r} (status {r.status})"
    assert r.status in (400, 404), r.body


def test_dot_segments_cannot_retrieve_a_model_outside_the_allow_list(gateway, mock_upstream):
    key = gateway.create_key("mini", models=["gpt-4o-mini*"])["value"]
    r = gateway.request("GET", "/v1/models/gpt-4o-mini/../gpt-4o", headers={"Authorization": f"Bearer {key}"})
    assert not [x for x in mock_upstream.requests if x.path == "/v1/models/gpt-4o"], (
        f"a gpt-4o-mini-only key retrieved gpt-4o (keygate answered {r.status}: {r.body[:200]!r})")


# --- IP allow-list ------------------------------------------------------------


def test_key_ip_allow_list_outside_is_refused(gateway, mock_upstream):
    key = gateway.create_key("office", allowed_ips=["10.0.0.0/8"])
    assert key["allowed_ips"] == ["10.0.0.0/8"]
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client(key["value"]).models.list()
    e = exc.value
    assert e.status_code == 401
    assert e.code is None
    assert e.type == "invalid_request_error"
    assert e.body["message"] == "IP not authorized for this project."
    assert mock_upstream.requests == []


@pytest.mark.parametrize("allowed", [["127.0.0.1/32"], ["127.0.0.1"], ["10.0.0.0/8", "127.0.0.0/8"]])
def test_key_ip_allow_list_including_the_client_works(gateway, allowed):
    key = gateway.create_key("local", allowed_ips=allowed)
    c = gateway.client(key["value"])
    assert chat(c).choices[0].message.content == m.CHAT_CONTENT


def test_ipv6_only_allow_list_refuses_an_ipv4_client(gateway):
    key = gateway.create_key("v6", allowed_ips=["::1/128"])
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client(key["value"]).models.list()
    assert exc.value.body["message"] == "IP not authorized for this project."


def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(gateway, mock_upstream):
    key = gateway.create_key("office", allowed_ips=["10.0.0.0/8"])["value"]
    r = gateway.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}",
                                                       "X-Forwarded-For": "10.1.2.3"})
    assert r.status == 401
    assert r.error["message"] == "IP not authorized for this project."
    assert mock_upstream.requests == []


def test_project_ip_allow_list_applies_to_its_keys_and_updates_take_effect(gateway):
    project = gateway.create_project("office", allowed_ips=["10.0.0.0/8"])
    assert project["allowed_ips"] == ["10.0.0.0/8"]
    c = gateway.client(gateway.create_key("k", project_id=project["id"])["value"])
    with pytest.raises(openai.AuthenticationError) as exc:
        c.models.list()
    assert exc.value.body["message"] == "IP not authorized for this project."
    assert exc.value.code is None

    updated = gateway.admin("POST", f"/v1/organization/projects/{project['id']}",
                            body={"allowed_ips": ["127.0.0.0/8"]})
    assert updated.status == 200, updated.body
    assert updated.json()["allowed_ips"] == ["127.0.0.0/8"]
    assert c.models.list().data


# --- organization / project headers ----------------------------------------


def test_data_plane_answers_carry_keygates_organization(gateway, project_key):
    c = gateway.client(project_key)
    org = gateway.organization_id(project_key)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers.get("openai-organization") == org
    raw = c.embeddings.with_raw_response.create(model=EMBED_MODEL, input="x")
    assert raw.headers.get("openai-organization") == org


def test_wrong_organization_is_mismatched_organization(gateway, project_key, mock_upstream):
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(gateway.client(project_key, organization="org-wrong"))
    e = exc.value
    assert e.status_code == 401
    assert e.code == "mismatched_organization"
    assert e.type == "invalid_request_error"
    assert e.body["message"] == "OpenAI-Organization header should match organization for API key"
    assert mock_upstream.requests == []


def test_wrong_project_is_mismatched_project(gateway, project_key, mock_upstream):
    other = gateway.create_project("other")
    for project in ("proj_wrong", other["id"]):
        with pytest.raises(openai.AuthenticationError) as exc:
            chat(gateway.client(project_key, project=project))
        e = exc.value
        assert e.status_code == 401
        assert e.code == "mismatched_project"
        assert e.body["message"] == "OpenAI-Project header should match project for API key"
    assert mock_upstream.requests == []


def test_correct_organization_and_project_work(gateway):
    project = gateway.create_project("p")
    key = gateway.create_key("k", project_id=project["id"])["value"]
    org = gateway.organization_id(key)
    c = gateway.client(key, organization=org, project=project["id"])
    assert chat(c).choices[0].message.content == m.CHAT_CONTENT
    assert c.models.list().data


# --- permission changes take effect on the next request ---------------------


def test_permission_changes_take_effect_on_the_next_request(gateway, mock_upstream):
    key = gateway.create_key("changing")
    c = gateway.client(key["value"])
    chat(c)

    updated = gateway.update_key(key["id"], permissions="read_only")
    assert updated["permissions"] == "read_only"
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert_missing_scope(exc, "model.request")
    c.models.list()

    updated = gateway.update_key(key["id"], permissions="restricted", scopes=["api.model.embeddings.request"])
    assert updated["scopes"] == ["api.model.embeddings.request"]
    embed(c)
    with pytest.raises(openai.AuthenticationError):
        chat(c)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()

    assert gateway.update_key(key["id"], permissions="all")["permissions"] == "all"
    chat(c)
    assert gateway.runs == 1, "no restart happened"


def test_model_and_ip_changes_take_effect_on_the_next_request(gateway):
    key = gateway.create_key("changing")
    c = gateway.client(key["value"])
    assert len(c.models.list().data) == len(m.MODELS)

    assert gateway.update_key(key["id"], models=["gpt-4o-mini"])["models"] == ["gpt-4o-mini"]
    assert [x.id for x in c.models.list().data] == ["gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        chat(c, "gpt-4o")

    assert gateway.update_key(key["id"], models=None)["models"] is None
    assert [x.id for x in c.models.list().data] == m.MODELS
    chat(c, "gpt-4o")

    gateway.update_key(key["id"], allowed_ips=["10.0.0.0/8"])
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert exc.value.body["message"] == "IP not authorized for this project."
    gateway.update_key(key["id"], allowed_ips=[])
    chat(c)


def test_key_update_is_persisted_and_partial(gateway):
    key = gateway.create_key("before", models=["gpt-4o*"], allowed_ips=["127.0.0.1/32"])
    updated = gateway.update_key(key["id"], name="after")
    assert updated["name"] == "after"
    assert updated["models"] == ["gpt-4o*"], "fields not sent must be left as they are"
    assert updated["allowed_ips"] == ["127.0.0.1/32"]
    gateway.update_key(key["id"], permissions="read_only")
    gateway.restart()
    got = gateway.admin("GET", f"/v1/organization/projects/{gateway.project_id()}/api_keys/{key['id']}").json()
    assert (got["name"], got["permissions"], got["models"]) == ("after", "read_only", ["gpt-4o*"])
    c = gateway.client(key["value"])
    with pytest.raises(openai.AuthenticationError):
        chat(c)
    assert [x.id for x in c.models.list().data] == ["gpt-4o", "gpt-4o-mini"]


def test_key_update_with_bad_scope_is_400_and_changes_nothing(gateway):
    key = gateway.create_key("k")
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys/{key['id']}",
                      body={"permissions": "restricted", "scopes": ["api.nope"]})
    assert r.status == 400, r.body
    assert r.error["param"] == "permissions"
    chat(gateway.client(key["value"]))


def test_expired_key_is_refused(gateway):
    key = gateway.create_key("short", expires_at=int(time.time()) + 2)
    c = gateway.client(key["value"])
    c.models.list()
    time.sleep(3.1)
    with pytest.raises(openai.AuthenticationError) as exc:
        c.models.list()
    assert_invalid_api_key(exc, key["value"])


# --- projects -----------------------------------------------------------------


def test_create_get_and_update_project(gateway):
    p = gateway.create_project("Research", models=["gpt-4o*"], allowed_ips=["127.0.0.1/32"])
    assert p["id"].startswith("proj_")
    assert p["object"] == "organization.project"
    assert p["name"] == "Research"
    assert isinstance(p["created_at"], int)
    assert p["archived_at"] is None
    assert p["status"] == "active"
    assert p["models"] == ["gpt-4o*"]
    assert p["allowed_ips"] == ["127.0.0.1/32"]

    got = gateway.admin("GET", f"/v1/organization/projects/{p['id']}")
    assert got.status == 200 and got.json() == p

    r = gateway.admin("POST", f"/v1/organization/projects/{p['id']}", body={"name": "Renamed"})
    assert r.status == 200, r.body
    assert r.json()["name"] == "Renamed"
    assert r.json()["models"] == ["gpt-4o*"]

    r = gateway.admin("POST", f"/v1/organization/projects/{p['id']}", body={"models": None})
    assert r.json()["models"] is None
    assert gateway.admin("GET", "/v1/organization/projects/proj_nope").status == 404


def test_archived_projects_key_gets_401(gateway, mock_upstream):
    p = gateway.create_project("doomed")
    key = gateway.create_key("k", project_id=p["id"])["value"]
    c = gateway.client(key)
    chat(c)
    r = gateway.admin("POST", f"/v1/organization/projects/{p['id']}/archive")
    assert r.status == 200, r.body
    archived = r.json()
    assert archived["status"] == "archived"
    assert isinstance(archived["archived_at"], int)
    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(c)
    assert_invalid_api_key(exc, key)
    assert mock_upstream.requests == []


def test_archived_project_refuses_new_keys_and_service_accounts(gateway):
    p = gateway.create_project("doomed")
    gateway.admin("POST", f"/v1/organization/projects/{p['id']}/archive")
    r = gateway.admin("POST", f"/v1/organization/projects/{p['id']}/api_keys", body={"name": "k"})
    assert r.status == 400, r.body
    assert r.error["type"] == "invalid_request_error"
    r = gateway.admin("POST", f"/v1/organization/projects/{p['id']}/service_accounts", body={"name": "sa"})
    assert r.status == 400, r.body


def test_project_list_hides_archived_unless_asked(gateway):
    live = gateway.create_project("live")
    gone = gateway.create_project("gone")
    gateway.admin("POST", f"/v1/organization/projects/{gone['id']}/archive")
    default = [p["id"] for p in gateway.admin("GET", "/v1/organization/projects").json()["data"]]
    assert live["id"] in default and gone["id"] not in default
    everything = gateway.admin("GET", "/v1/organization/projects?include_archived=true").json()["data"]
    by_id = {p["id"]: p for p in everything}
    assert by_id[gone["id"]]["status"] == "archived"
    assert live["id"] in by_id


def test_default_project_cannot_be_archived(gateway, project_key):
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/archive")
    assert r.status == 400, r.body
    assert r.error["type"] == "invalid_request_error"
    chat(gateway.client(project_key))


# --- service accounts ---------------------------------------------------------


def test_service_account_create_list_get_and_its_key_works(gateway):
    pid = gateway.project_id()
    r = gateway.admin("POST", f"/v1/organization/projects/{pid}/service_accounts", body={"name": "bot"})
    assert r.status == 200, r.body
    sa = r.json()
    assert sa["object"] == "organization.project.service_account"
    assert sa["id"].startswith("svc_acct_")
    assert sa["name"] == "bot"
    assert sa["role"] == "member"
    assert isinstance(sa["created_at"], int)
    api_key = sa["api_key"]
    assert api_key["object"] == "organization.project.service_account.api_key"
    assert api_key["value"].startswith("sk-")
    assert api_key["name"] == "Secret Key"
    assert api_key["id"].startswith("key_")
    assert isinstance(api_key["created_at"], int)

    assert chat(gateway.client(api_key["value"])).choices[0].message.content == m.CHAT_CONTENT

    listed = gateway.admin("GET", f"/v1/organization/projects/{pid}/service_accounts").json()
    assert listed["object"] == "list"
    assert sa["id"] in [x["id"] for x in listed["data"]]
    got = gateway.admin("GET", f"/v1/organization/projects/{pid}/service_accounts/{sa['id']}")
    assert got.status == 200
    assert got.json()["name"] == "bot"
    assert "api_key" not in got.json()
    assert api_key["value"] not in got.body.decode()

    key = gateway.admin("GET", f"/v1/organization/projects/{pid}/api_keys/{api_key['id']}").json()
    assert key["owner"]["type"] == "service_account"
    assert key["owner"]["service_account"]["id"] == sa["id"]


def test_deleting_a_service_account_revokes_its_keys(gateway, mock_upstream):
    pid = gateway.project_id()
    sa = gateway.admin("POST", f"/v1/organization/projects/{pid}/service_accounts", body={"name": "bot"}).json()
    extra = gateway.create_key("extra", service_account_id=sa["id"])
    assert extra["owner"]["type"] == "service_account"
    assert extra["owner"]["service_account"]["id"] == sa["id"]
    first = gateway.client(sa["api_key"]["value"])
    chat(first)

    r = gateway.admin("DELETE", f"/v1/organization/projects/{pid}/service_accounts/{sa['id']}")
    assert r.status == 200, r.body
    assert r.json() == {"object": "organization.project.service_account.deleted", "id": sa["id"], "deleted": True}
    mock_upstream.clear()
    for value in (sa["api_key"]["value"], extra["value"]):
        with pytest.raises(openai.AuthenticationError) as exc:
            chat(gateway.client(value))
        assert_invalid_api_key(exc, value)
    assert mock_upstream.requests == []
    assert gateway.admin("GET", f"/v1/organization/projects/{pid}/service_accounts/{sa['id']}").status == 404
    r = gateway.admin("POST", f"/v1/organization/projects/{pid}/api_keys",
                      body={"name": "k", "service_account_id": sa["id"]})
    assert r.status == 400, r.body


def test_deleting_the_default_service_account_does_not_break_key_creation(gateway):
    pid = gateway.project_id()
    sas = gateway.admin("GET", f"/v1/organization/projects/{pid}/service_accounts").json()["data"]
    default = [sa for sa in sas if sa["name"] == "default"]
    assert default, sas
    deleted = gateway.admin("DELETE", f"/v1/organization/projects/{pid}/service_accounts/{default[0]['id']}")
    r = gateway.admin("POST", f"/v1/organization/projects/{pid}/api_keys", body={"name": "after"})
    assert deleted.status == 400 or r.status == 200, (deleted.status, r.status, r.body)


def test_service_account_of_another_project_cannot_own_a_key(gateway):
    other = gateway.create_project("other")
    sa = gateway.admin("POST", f"/v1/organization/projects/{other['id']}/service_accounts",
                       body={"name": "bot"}).json()
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys",
                      body={"name": "k", "service_account_id": sa["id"]})
    assert r.status == 400, r.body
    assert r.error["param"] == "service_account_id"


# --- users --------------------------------------------------------------------


def test_user_create_list_get_update(gateway):
    r = gateway.admin("POST", "/v1/organization/users", body={"name": "Ada", "email": "ada@example.com",
                                                               "role": "owner"})
    assert r.status == 200, r.body
    user = r.json()
    assert user["object"] == "organization.user"
    assert user["id"].startswith("user-")
    assert (user["name"], user["email"], user["role"]) == ("Ada", "ada@example.com", "owner")
    assert isinstance(user["added_at"], int)

    listed = gateway.admin("GET", "/v1/organization/users").json()
    assert listed["object"] == "list"
    assert user["id"] in [u["id"] for u in listed["data"]]
    assert gateway.admin("GET", f"/v1/organization/users/{user['id']}").json() == user

    r = gateway.admin("POST", f"/v1/organization/users/{user['id']}", body={"role": "reader"})
    assert r.status == 200, r.body
    assert r.json()["role"] == "reader"
    assert gateway.admin("GET", f"/v1/organization/users/{user['id']}").json()["role"] == "reader"

    r = gateway.admin("POST", f"/v1/organization/users/{user['id']}", body={"role": "god"})
    assert r.status == 400
    assert r.error["param"] == "role"


def test_duplicate_user_email_is_400(gateway):
    body = {"name": "Ada", "email": "ada@example.com", "role": "reader"}
    assert gateway.admin("POST", "/v1/organization/users", body=body).status == 200
    r = gateway.admin("POST", "/v1/organization/users", body={**body, "name": "Other Ada"})
    assert r.status == 400, r.body
    assert r.error["param"] == "email"
    assert r.error["type"] == "invalid_request_error"


def test_user_owned_key_and_deleting_the_user_revokes_it(gateway, mock_upstream):
    user = gateway.admin("POST", "/v1/organization/users",
                         body={"name": "Ada", "email": "ada@example.com", "role": "reader"}).json()
    key = gateway.create_key("ada's", user_id=user["id"])
    owner = key["owner"]
    assert owner["type"] == "user"
    assert owner["user"]["id"] == user["id"]
    assert owner["user"]["email"] == "ada@example.com"
    assert owner["user"]["name"] == "Ada"
    chat(gateway.client(key["value"]))

    r = gateway.admin("DELETE", f"/v1/organization/users/{user['id']}")
    assert r.status == 200, r.body
    assert r.json() == {"object": "organization.user.deleted", "id": user["id"], "deleted": True}
    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(gateway.client(key["value"]))
    assert_invalid_api_key(exc, key["value"])
    assert mock_upstream.requests == []
    assert gateway.admin("GET", f"/v1/organization/users/{user['id']}").status == 404
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys",
                      body={"name": "k", "user_id": user["id"]})
    assert r.status == 400, r.body
    assert r.error["param"] == "user_id"


def test_key_owner_must_be_one_of_user_or_service_account(gateway):
    user = gateway.admin("POST", "/v1/organization/users",
                         body={"name": "Ada", "email": "ada@example.com"}).json()
    sa = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/service_accounts",
                       body={"name": "bot"}).json()
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys",
                      body={"name": "k", "user_id": user["id"], "service_account_id": sa["id"]})
    assert r.status == 400, r.body
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys",
                      body={"name": "k", "user_id": "user-nope"})
    assert r.status == 400, r.body
    assert r.error["param"] == "user_id"


# --- admin keys ---------------------------------------------------------------


def create_admin_key(gateway, **body) -> dict:
    r = gateway.admin("POST", "/v1/organization/admin_api_keys", body={"name": "ops", **body})
    assert r.status == 200, r.body
    return r.json()


def test_admin_key_create_list_get(gateway):
    key = create_admin_key(gateway)
    assert key["object"] == "organization.admin_api_key"
    assert key["id"].startswith("key_")
    assert key["name"] == "ops"
    assert key["value"].startswith("sk-admin-")
    assert key["redacted_value"].startswith("sk-admin-")
    assert key["value"] not in key["redacted_value"]
    assert key["redacted_value"].endswith(key["value"][-4:])
    assert isinstance(key["created_at"], int)
    assert key["expires_at"] is None
    owner = key["owner"]
    assert {"type", "object", "id", "name", "created_at", "role"} <= set(owner), owner

    listed = gateway.admin("GET", "/v1/organization/admin_api_keys")
    assert listed.status == 200
    assert key["id"] in [k["id"] for k in listed.json()["data"]]
    assert key["value"] not in listed.body.decode()
    got = gateway.admin("GET", f"/v1/organization/admin_api_keys/{key['id']}")
    assert got.status == 200
    assert "value" not in got.json()
    assert got.json()["redacted_value"] == key["redacted_value"]


def test_new_admin_key_works_on_admin_api_and_is_refused_on_chat(gateway, mock_upstream):
    key = create_admin_key(gateway)["value"]
    r = gateway.admin("GET", "/v1/organization/projects", key=key)
    assert r.status == 200, r.body
    assert gateway.admin("POST", "/v1/organization/projects", body={"name": "by-new-admin"}, key=key).status == 200
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(gateway.client(key))
    assert_missing_scope(exc, "model.request")
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client(key).models.list()
    assert_missing_scope(exc, "api.model.read")
    assert mock_upstream.requests == []


def test_env_admin_key_is_refused_on_chat(gateway, mock_upstream):
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(gateway.client(ADMIN_KEY))
    assert_missing_scope(exc, "model.request")
    assert mock_upstream.requests == []


def test_deleted_admin_key_is_refused_and_a_key_cannot_delete_itself(gateway):
    key = create_admin_key(gateway)
    r = gateway.admin("DELETE", f"/v1/organization/admin_api_keys/{key['id']}", key=key["value"])
    assert r.status == 400, "an admin key must not delete itself"
    r = gateway.admin("DELETE", f"/v1/organization/admin_api_keys/{key['id']}")
    assert r.status == 200, r.body
    assert r.json() == {"object": "organization.admin_api_key.deleted", "id": key["id"], "deleted": True}
    r = gateway.admin("GET", "/v1/organization/projects", key=key["value"])
    assert r.status == 401
    assert r.error["code"] == "invalid_api_key"
    assert gateway.admin("GET", f"/v1/organization/admin_api_keys/{key['id']}").status == 404


@pytest.mark.parametrize("seconds, ok", [(0, False), (-5, False), (31536001, False), (1, True), (31536000, True)])
def test_admin_key_expires_in_seconds_range(gateway, seconds, ok):
    r = gateway.admin("POST", "/v1/organization/admin_api_keys", body={"name": "x", "expires_in_seconds": seconds})
    if ok:
        assert r.status == 200, r.body
        key = r.json()
        assert abs(key["expires_at"] - key["created_at"] - seconds) <= 1
    else:
        assert r.status == 400, r.body
        assert r.error["param"] == "expires_in_seconds"


@pytest.mark.parametrize("method, path, scope", [
    ("GET", "/v1/organization/projects", "api.organization.read"),
    ("POST", "/v1/organization/projects", "api.organization.write"),
    ("GET", "/v1/organization/users", "api.organization.read"),
    ("GET", "/v1/organization/admin_api_keys", "api.organization.read"),
    ("GET", "/v1/organization/projects/{pid}/api_keys", "api.organization.projects.api_keys.read"),
    ("POST", "/v1/organization/projects/{pid}/api_keys", "api.organization.projects.api_keys.write"),
])
def test_project_key_on_the_admin_api_is_refused(gateway, project_key, method, path, scope):
    path = path.format(pid=gateway.project_id())
    r = gateway.request(method, path, headers={"Authorization": f"Bearer {project_key}"},
                        body={"name": "x"} if method == "POST" else None)
    assert r.status == 401, r.body
    assert r.error["message"] == missing_scope(scope)
    assert r.error["type"] == "invalid_request_error"
    assert r.error["code"] is None


def test_project_key_on_admin_api_via_sdk_style_bearer_is_refused(gateway, project_key):
    """Even an unrestricted project key with the right org/project headers is no admin key."""
    org = gateway.organization_id(project_key)
    r = gateway.request("GET", "/v1/organization/projects",
                        headers={"Authorization": f"Bearer {project_key}", "OpenAI-Organization": org})
    assert r.status == 401
    assert "Missing scopes: api.organization.read" in r.error["message"]


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ({"permissions": "restricted", "scopes": ["api.model.nope"]}, "permissions"),
    ({"scopes": ["not-a-scope"]}, "permissions"),
    ({"permissions": "restricted"}, "permissions"),
    ({"permissions": "restricted", "scopes": []}, "permissions"),
    ({"permissions": "superuser"}, "permissions"),
    ({"permissions": "read_only", "scopes": ["api.model.read"]}, "permissions"),
    ({"allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
    ({"allowed_ips": ["not-an-ip"]}, "allowed_ips"),
    ({"models": [""]}, "models"),
    ({"expires_at": 1_000_000}, "expires_at"),
    ({"colour": "blue"}, None),
])
def test_bad_key_bodies_are_400(gateway, body, param):
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys",
                      body={"name": "bad", **body})
    assert r.status == 400, r.body
    assert r.error["type"] == "invalid_request_error"
    assert r.error["param"] == param
    keys = gateway.admin("GET", f"/v1/organization/projects/{gateway.project_id()}/api_keys").json()["data"]
    assert "bad" not in [k["name"] for k in keys], "a refused body must not create a key"


@pytest.mark.parametrize("path, body", [
    ("/v1/organization/projects", {"name": "p", "colour": "blue"}),
    ("/v1/organization/projects", {"name": "p", "allowed_ips": ["300.1.1.1"]}),
    ("/v1/organization/users", {"name": "u", "email": "u@example.com", "colour": "blue"}),
    ("/v1/organization/users", {"name": "u", "email": "u@example.com", "role": "admin"}),
    ("/v1/organization/admin_api_keys", {"name": "a", "colour": "blue"}),
    ("/v1/organization/projects/{pid}/service_accounts", {"name": "s", "colour": "blue"}),
    ("/v1/organization/projects/{pid}", {"colour": "blue"}),
])
def test_bad_admin_bodies_are_400(gateway, path, body):
    r = gateway.admin("POST", path.format(pid=gateway.project_id()), body=body)
    assert r.status == 400, r.body
    assert r.error["type"] == "invalid_request_error"


def test_key_update_with_unknown_field_is_400(gateway):
    key = gateway.create_key("k")
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys/{key['id']}",
                      body={"colour": "blue"})
    assert r.status == 400, r.body
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}/api_keys/{key['id']}",
                      body={"allowed_ips": ["nope"]})
    assert r.status == 400, r.body
    assert r.error["param"] == "allowed_ips"
