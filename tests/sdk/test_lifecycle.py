"""Key lifecycle: rotation with a grace period, expiry, revocation, suspend/resume,
last-used tracking, the audit log, denial records and `keygate explain`, error
hints, the rotation policy (`?due=true`), and that no secret is ever written
anywhere. Driven by the official `openai` SDK where it can go, raw HTTP for the
Administration API, and the `keygate` CLI as a subprocess."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import openai
import pytest

import mock_upstream as m
from conftest import cli, ADMIN_KEY, KEYGATE_BIN, UPSTREAM_SECRET, Gateway, RawResponse, basic_auth

MESSAGES = [{"role": "user", "content": "Say hello"}]
EXPIRES_HEADER = "x-keygate-key-expires-at"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")
BOOTSTRAP_ADMIN_NAME = "bootstrap (KEYGATE_ADMIN_KEY)"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LEN, SECRET_LEN, CHECK_LEN = 12, 43, 6
HINT_CHECKSUM = " (keygate hint: the key's checksum does not match: it was mistyped or altered.)"
# An OpenAI-looking project key (the `T3BlbkFJ` marker is base64 of "OpenAI").
OPENAI_LOOKING_KEY = "sk-proj-" + "a1B2c3D4e5" * 4 + "T3BlbkFJ" + "f6G7h8J9k0" * 4


# --- helpers ------------------------------------------------------------------


def rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> int:
    assert RFC3339.match(value), f"not an RFC 3339 UTC timestamp: {value!r}"
    return int(datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())


def mask(key: str) -> str:
    return key if len(key) <= 12 else key[:8] + "*" * (len(key) - 12) + key[-4:]


def incorrect_key_message(key: str) -> str:
    return (f"Incorrect API key provided: {mask(key)}. "
            "You can find your API key at https://platform.openai.com/account/api-keys.")


def checksum(signed: str) -> str:
    """keygate v1 check: CRC-32 of everything before it, 6 base62 chars, most significant first."""
    n = zlib.crc32(signed.encode())
    out = []
    for _ in range(CHECK_LEN):
        out.append(ALPHABET[n % 62])
        n //= 62
    return "".join(reversed(out))


def split_key(value: str, prefix: str) -> tuple[str, str, str]:
    """(bare id, secret, check) of a keygate v1 key."""
    assert value.startswith(prefix + "kg1"), value[:12]
    body = value[len(prefix) + 3:]
    assert len(body) == ID_LEN + SECRET_LEN + CHECK_LEN
    return body[:ID_LEN], body[ID_LEN:ID_LEN + SECRET_LEN], body[ID_LEN + SECRET_LEN:]


def secret_part(value: str, prefix: str) -> str:
    return split_key(value, prefix)[1]


def forge(prefix: str, bare_id: str, secret: str | None = None) -> str:
    """A well-formed v1 key (valid checksum) with the given id and a random (or given) secret."""
    secret = secret or "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LEN))
    signed = f"{prefix}kg1{bare_id}{secret}"
    return signed + checksum(signed)


def typo(value: str, prefix: str) -> str:
    """The key with one character of its secret part changed: a checksum mismatch."""
    pos = len(prefix) + 3 + ID_LEN + 10
    new = "A" if value[pos] != "A" else "B"
    bad = value[:pos] + new + value[pos + 1:]
    assert bad != value and len(bad) == len(value)
    return bad


def keyref(key: dict) -> str:
    """How keygate names a key in explanations (no secret)."""
    return f"key `{key['name']}` ({key['id']}, prefix {key['prefix']})"


def keyobj(key: dict) -> dict:
    return {"id": key["id"], "name": key["name"], "prefix": key["prefix"]}


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Polls `fn` until it returns something truthy; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def key_path(gw: Gateway, key_id: str = "", suffix: str = "", pid: str | None = None) -> str:
    path = f"/v1/organization/projects/{pid or gw.project_id()}/api_keys"
    if key_id:
        path += f"/{key_id}"
    return path + suffix


def rotate(gw: Gateway, key_id: str, grace: int | None = None, pid: str | None = None,
           body: Any = None) -> RawResponse:
    if body is None and grace is not None:
        body = {"grace_period_seconds": grace}
    return gw.admin("POST", key_path(gw, key_id, "/rotate", pid), body=body)


def rotated(gw: Gateway, key_id: str, grace: int, pid: str | None = None) -> dict:
    r = rotate(gw, key_id, grace, pid)
    assert r.status == 200, (r.status, r.body)
    return r.json()


def get_key(gw: Gateway, key_id: str, pid: str | None = None, include_revoked: bool = False) -> RawResponse:
    return gw.admin("GET", key_path(gw, key_id, "?include_revoked=true" if include_revoked else "", pid))


def models(gw: Gateway, key: str, **headers: str) -> RawResponse:
    return gw.request("GET", "/v1/models", headers=bearer(key, **headers))


def refused_id(r: RawResponse, status: int = 401) -> str:
    assert r.status == status, (r.status, r.body)
    rid = r.headers.get("x-request-id", "")
    assert REQUEST_ID.match(rid), rid
    return rid


def bootstrap_admin(gw: Gateway) -> dict:
    r = gw.admin("GET", "/v1/organization/admin_api_keys?limit=100")
    assert r.status == 200, r.body
    found = [k for k in r.json()["data"] if k["name"] == BOOTSTRAP_ADMIN_NAME]
    assert len(found) == 1, r.json()
    return found[0]


def denial_record(gw: Gateway, rid: str, timeout: float = 5.0) -> dict:
    """GET /v1/organization/requests/{rid}, polled: denials are written ~1 s later."""
    def get():
        r = gw.admin("GET", f"/v1/organization/requests/{rid}")
        if r.status == 200:
            return r.json()
        assert r.status == 404, (r.status, r.body)
        return None
    return wait_for(get, timeout, f"the denial record of {rid}")


_ANY = object()


def explain(gw: Gateway, rid: str, reason: str, explanation: str | None = None, fragments: tuple[str, ...] = (),
            key: Any = _ANY, project_id: Any = _ANY, status: int = 401, method: str = "GET",
            path: str = "/v1/models") -> dict:
    """Checks the denial record over HTTP, then `keygate explain` and `keygate explain --json`."""
    rec = denial_record(gw, rid)
    assert rec["object"] == "keygate.request"
    assert rec["id"] == rid
    assert rec["status"] == status
    assert rec["method"] == method
    assert rec["path"] == path
    assert rec["client_ip"] == "127.0.0.1"
    assert isinstance(rec["created_at"], int) and abs(rec["created_at"] - time.time()) < 60, rec
    assert rec["reason"] == reason, rec
    if explanation is not None:
        assert rec["explanation"] == explanation
    for fragment in fragments:
        assert fragment in rec["explanation"], (fragment, rec["explanation"])
    if key is not _ANY:
        assert rec["key"] == key, rec
    if project_id is not _ANY:
        assert rec["project_id"] == project_id, rec

    text = cli(gw, "explain", rid)
    assert text.returncode == 0, (text.returncode, text.stdout, text.stderr)
    lines = text.stdout.splitlines()
    assert lines[0] == f"{rid} {method} {path} -> {status} at {rfc3339(rec['created_at'])} from 127.0.0.1", lines
    assert lines[1] == f"reason: {reason}", lines
    assert lines[2] == rec["explanation"], lines

    as_json = cli(gw, "explain", "--json", rid)
    assert as_json.returncode == 0, (as_json.returncode, as_json.stdout, as_json.stderr)
    assert json.loads(as_json.stdout) == rec
    return rec


def audit(gw: Gateway, params: Any = (), key: str | None = None) -> RawResponse:
    query = urlencode(list(params.items()) if isinstance(params, dict) else list(params))
    return gw.admin("GET", "/v1/organization/audit_logs" + (f"?{query}" if query else ""), key=key)


def audit_all(gw: Gateway, params: Any = ()) -> list[dict]:
    """Every entry matching `params`, newest first, following `after` cursors."""
    base = list(params.items()) if isinstance(params, dict) else list(params)
    entries: list[dict] = []
    after = None
    for _ in range(100):
        r = audit(gw, base + [("limit", "100")] + ([("after", after)] if after else []))
        assert r.status == 200, (r.status, r.body)
        page = r.json()
        entries += page["data"]
        if not page["has_more"]:
            return entries
        after = page["last_id"]
    raise AssertionError("audit log pagination did not end")


def sdk_error(call: Callable[[], Any]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as exc:
        call()
    return exc.value


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory, mock_upstream):
    """One gateway for the read-mostly explain table (each case makes its own keys)."""
    gw = Gateway(tmp_path_factory.mktemp("keygate-lifecycle"), mock_upstream.url)
    gw.start()
    yield gw
    try:
        gw.stop()
    except AssertionError:
        pass


# --- helpers check themselves -----------------------------------------------------


def test_forged_checksum_matches_a_real_key(gateway):
    """The test helpers reproduce keygate's v1 layout exactly (used to forge well-formed keys)."""
    for prefix in ("sk-", "sk-prod-"):
        key = gateway.create_key("layout", prefix=prefix)
        bare_id, secret, check = split_key(key["value"], prefix)
        assert key["id"] == f"key_{bare_id}"
        assert forge(prefix, bare_id, secret) == key["value"]
        assert checksum(typo(key["value"], prefix)[:-CHECK_LEN]) != check


# --- rotation -------------------------------------------------------------------


def test_rotated_key_old_secret_works_during_grace_with_expiry_header_then_is_refused(gateway, mock_upstream):
    key = gateway.create_key("rotating", permissions="all")
    old = key["value"]
    old_client = gateway.client(old)
    assert old_client.models.list().data

    before = int(time.time())
    rot = rotated(gateway, key["id"], grace=2)
    after = int(time.time())
    new = rot["value"]
    assert new != old
    assert (rot["id"], rot["name"], rot["prefix"], rot["permissions"], rot["scopes"]) == (
        key["id"], key["name"], key["prefix"], key["permissions"], key["scopes"])
    assert new.startswith(key["prefix"] + "kg1" + key["id"][len("key_"):]), "a rotation keeps the public id"
    assert before <= rot["rotated_at"] <= after
    assert rot["previous_secret_expires_at"] == rot["rotated_at"] + 2
    assert rot["redacted_value"].endswith(new[-4:])
    assert old not in json.dumps(rot)

    # The stored object shows the rotation, and never a secret.
    got = get_key(gateway, key["id"])
    assert got.status == 200
    assert got.json()["rotated_at"] == rot["rotated_at"]
    assert got.json()["previous_secret_expires_at"] == rot["previous_secret_expires_at"]
    assert "value" not in got.json() and new not in got.body.decode() and old not in got.body.decode()

    # During the grace period the old secret works, and says when it stops working on every answer.
    expected = rfc3339(rot["previous_secret_expires_at"])
    raw = old_client.models.with_raw_response.list()
    header = raw.headers.get(EXPIRES_HEADER)
    assert header == expected, (header, expected)
    assert abs(parse_rfc3339(header) - (time.time() + 2)) <= 2
    raw = old_client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == m.CHAT_CONTENT
    assert raw.headers.get(EXPIRES_HEADER) == expected
    raw = old_client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "".join(
        m.CHAT_STREAM_PIECES)
    assert raw.headers.get(EXPIRES_HEADER) == expected
    e = sdk_error(lambda: old_client.chat.completions.create(model=m.TRIGGER_400_MODEL, messages=MESSAGES))
    assert e.status_code == 400 and e.response.headers.get(EXPIRES_HEADER) == expected, "upstream errors too"
    r = gateway.request("POST", "/v1/chat/completions", headers={**bearer(old), "Content-Type": "application/json"},
                        body=b'{"model": "gpt-4o", "messages": [')
    assert r.status == 400 and r.headers.get(EXPIRES_HEADER) == expected, "keygate's own errors too"

    # The new secret works and carries no warning.
    new_client = gateway.client(new)
    raw = new_client.models.with_raw_response.list()
    assert raw.parse().data
    assert raw.headers.get(EXPIRES_HEADER) is None
    raw = new_client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers.get(EXPIRES_HEADER) is None

    # After the grace period the old secret is refused like an unknown key.
    def refused():
        r = models(gateway, old)
        if r.status == 200:
            assert r.headers.get(EXPIRES_HEADER) == expected
            return None
        return r
    r = wait_for(refused, 5.0, "the old secret to be refused after a 2 s grace")
    rid = refused_id(r)
    assert r.error == {"message": incorrect_key_message(old), "type": "invalid_request_error", "param": None,
                       "code": "invalid_api_key"}
    assert old not in r.body.decode() and EXPIRES_HEADER not in {k.lower() for k in r.headers.keys()}
    unknown = "sk-" + "Zx9" * 16
    u = models(gateway, unknown)
    assert u.status == 401
    assert r.body.decode().replace(mask(old), "MASK") == u.body.decode().replace(mask(unknown), "MASK"), (
        "a rotated-out secret must look exactly like an unknown key")
    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        old_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.code == "invalid_api_key"
    assert mock_upstream.requests == []

    # The new secret keeps working, without a warning.
    ok = models(gateway, new)
    assert ok.status == 200 and ok.headers.get(EXPIRES_HEADER) is None

    explain(gateway, rid, "rotated_out",
            explanation=(f"{keyref(key)} was rotated at {rfc3339(rot['rotated_at'])}; the grace period of the "
                         f"presented (old) secret ended at {expected}; its replacement is the newest secret of "
                         f"{key['id']} (same id)"),
            key=keyobj(key), project_id=gateway.project_id())


def test_rotation_with_zero_grace_refuses_the_old_secret_at_once(gateway):
    key = gateway.create_key("instant")
    assert models(gateway, key["value"]).status == 200
    rot = rotated(gateway, key["id"], grace=0)
    assert rot["previous_secret_expires_at"] == rot["rotated_at"]
    r = models(gateway, key["value"])
    rid = refused_id(r)
    assert r.error["code"] == "invalid_api_key"
    ok = models(gateway, rot["value"])
    assert ok.status == 200 and ok.headers.get(EXPIRES_HEADER) is None
    rec = explain(gateway, rid, "rotated_out", fragments=(f"{keyref(key)} was rotated at ", "grace period"),
                  key=keyobj(key))
    assert "rotat" in cli(gateway, "explain", rid).stdout


def test_rotation_default_grace_is_one_day(gateway):
    key = gateway.create_key("default-grace")
    for body in (b"", {}):
        r = rotate(gateway, key["id"], body=body)
        assert r.status == 200, r.body
        rot = r.json()
        assert rot["previous_secret_expires_at"] - rot["rotated_at"] == 86400
    r = models(gateway, rot["value"])
    assert r.status == 200 and r.headers.get(EXPIRES_HEADER) is None


def test_second_rotation_shortens_the_grace_of_every_older_secret(gateway):
    key = gateway.create_key("twice")
    first = rotated(gateway, key["id"], grace=3600)
    assert models(gateway, key["value"]).headers.get(EXPIRES_HEADER) == rfc3339(first["previous_secret_expires_at"])
    second = rotated(gateway, key["id"], grace=0)
    for old in (key["value"], first["value"]):
        assert models(gateway, old).status == 401
    assert models(gateway, second["value"]).status == 200


@pytest.mark.parametrize("body", [
    {"grace_period_seconds": -1},
    {"grace_period_seconds": 31536001},
])
def test_rotation_grace_period_out_of_range_is_400(gateway, body):
    key = gateway.create_key("k")
    r = rotate(gateway, key["id"], body=body)
    assert r.status == 400, r.body
    assert r.error["type"] == "invalid_request_error"
    assert r.error["param"] == "grace_period_seconds"
    assert models(gateway, key["value"]).headers.get(EXPIRES_HEADER) is None, "a refused rotation changes nothing"


@pytest.mark.parametrize("body", [{"grace_period_seconds": "soon"}, {"colour": "blue"}])
def test_rotation_with_bad_body_is_400(gateway, body):
    key = gateway.create_key("k")
    r = rotate(gateway, key["id"], body=body)
    assert r.status == 400, r.body
    assert r.error["type"] == "invalid_request_error"
    assert models(gateway, key["value"]).status == 200


def test_rotation_max_grace_is_accepted(gateway):
    key = gateway.create_key("k")
    rot = rotated(gateway, key["id"], grace=31536000)
    assert rot["previous_secret_expires_at"] - rot["rotated_at"] == 31536000


def test_rotating_a_revoked_or_unknown_key_is_404(gateway):
    key = gateway.create_key("gone")
    gateway.revoke(key["id"])
    assert rotate(gateway, key["id"], grace=0).status == 404
    assert rotate(gateway, "key_AAAAAAAAAAAA", grace=0).status == 404


def test_rotation_of_an_expiring_key_reports_the_earlier_deadline(gateway):
    expires_at = int(time.time()) + 3600
    key = gateway.create_key("expiring", expires_at=expires_at)
    rot = rotated(gateway, key["id"], grace=86400)
    assert models(gateway, key["value"]).headers.get(EXPIRES_HEADER) == rfc3339(expires_at)
    assert models(gateway, rot["value"]).headers.get(EXPIRES_HEADER) == rfc3339(expires_at)
    short = rotated(gateway, key["id"], grace=60)
    assert models(gateway, rot["value"]).headers.get(EXPIRES_HEADER) == rfc3339(short["previous_secret_expires_at"])


# --- expiry ---------------------------------------------------------------------


def test_expired_key_is_refused_after_warning_header_and_explained(gateway, mock_upstream):
    expires_at = int(time.time()) + 2
    key = gateway.create_key("short-lived", expires_at=expires_at)
    assert key["expires_at"] == expires_at
    c = gateway.client(key["value"])
    raw = c.models.with_raw_response.list()
    assert raw.headers.get(EXPIRES_HEADER) == rfc3339(expires_at)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers.get(EXPIRES_HEADER) == rfc3339(expires_at)

    r = wait_for(lambda: (lambda r: r if r.status != 200 else None)(models(gateway, key["value"])), 5.0,
                 "the key to expire")
    rid = refused_id(r)
    assert time.time() >= expires_at - 1
    assert r.error == {"message": incorrect_key_message(key["value"]), "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}
    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert mock_upstream.requests == []
    explain(gateway, rid, "expired", explanation=f"{keyref(key)} expired at {rfc3339(expires_at)}",
            key=keyobj(key), project_id=gateway.project_id())


def test_expires_at_can_be_set_and_cleared_by_update(gateway):
    key = gateway.create_key("later")
    assert key["expires_at"] is None
    assert models(gateway, key["value"]).headers.get(EXPIRES_HEADER) is None
    at = int(time.time()) + 3600
    assert gateway.update_key(key["id"], expires_at=at)["expires_at"] == at
    assert models(gateway, key["value"]).headers.get(EXPIRES_HEADER) == rfc3339(at)
    assert gateway.update_key(key["id"], expires_at=None)["expires_at"] is None
    r = models(gateway, key["value"])
    assert r.status == 200 and r.headers.get(EXPIRES_HEADER) is None
    bad = gateway.admin("POST", key_path(gateway, key["id"]), body={"expires_at": int(time.time()) - 10})
    assert bad.status == 400 and bad.error["param"] == "expires_at"

    soon = int(time.time()) + 2
    gateway.update_key(key["id"], expires_at=soon)
    wait_for(lambda: models(gateway, key["value"]).status == 401, 5.0, "the updated expiry to take effect")


# --- revocation -----------------------------------------------------------------


def test_revoked_key_is_refused_and_explained_with_who_and_why(gateway, mock_upstream):
    key = gateway.create_key("leaky")
    c = gateway.client(key["value"])
    c.models.list()
    r = gateway.admin("DELETE", key_path(gateway, key["id"], "?reason=leaked"))
    assert r.status == 200, r.body
    assert r.json() == {"object": "organization.project.api_key.deleted", "id": key["id"], "deleted": True}

    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    e = exc.value
    assert e.code == "invalid_api_key"
    assert e.body["message"] == incorrect_key_message(key["value"])
    assert mock_upstream.requests == []
    rid = e.request_id
    assert REQUEST_ID.match(rid or "")

    assert get_key(gateway, key["id"]).status == 404
    listed = gateway.admin("GET", key_path(gateway)).json()
    assert key["id"] not in [k["id"] for k in listed["data"]]
    everything = gateway.admin("GET", key_path(gateway, suffix="?include_revoked=true")).json()
    revoked = {k["id"]: k for k in everything["data"]}[key["id"]]
    assert revoked["state"] == "revoked"
    assert revoked["revoke_reason"] == "leaked"
    assert isinstance(revoked["revoked_at"], int) and abs(revoked["revoked_at"] - time.time()) < 30
    got = get_key(gateway, key["id"], include_revoked=True)
    assert got.status == 200 and got.json()["state"] == "revoked" and got.json()["revoke_reason"] == "leaked"

    admin = bootstrap_admin(gateway)
    explain(gateway, rid, "revoked",
            explanation=(f"{keyref(key)} was revoked at {rfc3339(revoked['revoked_at'])} by admin key "
                         f"`{BOOTSTRAP_ADMIN_NAME}` ({admin['id']}); reason: leaked"),
            key=keyobj(key), project_id=gateway.project_id(), method="POST", path="/v1/chat/completions")


def test_revoking_twice_is_404_and_a_revoked_key_cannot_be_changed(gateway):
    key = gateway.create_key("once")
    gateway.revoke(key["id"])
    assert gateway.admin("DELETE", key_path(gateway, key["id"])).status == 404
    assert gateway.admin("POST", key_path(gateway, key["id"], "/resume")).status == 404
    assert gateway.admin("POST", key_path(gateway, key["id"]), body={"name": "x"}).status == 404
    assert models(gateway, key["value"]).status == 401


# --- suspend / resume -------------------------------------------------------------


def test_suspend_and_resume_round_trip(gateway, mock_upstream):
    key = gateway.create_key("napping")
    c = gateway.client(key["value"])
    c.models.list()

    r = gateway.admin("POST", key_path(gateway, key["id"], "/suspend"))
    assert r.status == 200, r.body
    assert r.json()["state"] == "suspended" and r.json()["id"] == key["id"]
    assert "value" not in r.json()
    assert get_key(gateway, key["id"]).json()["state"] == "suspended"
    assert key["id"] in [k["id"] for k in gateway.admin("GET", key_path(gateway)).json()["data"]]

    mock_upstream.clear()
    with pytest.raises(openai.AuthenticationError) as exc:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    e = exc.value
    assert e.body == {"message": incorrect_key_message(key["value"]), "type": "invalid_request_error",
                      "param": None, "code": "invalid_api_key"}, "a suspended key is refused like a revoked one"
    assert mock_upstream.requests == []
    explain(gateway, e.request_id, "suspended", fragments=(f"{keyref(key)} is suspended (since ", ", by admin key key_"),
            key=keyobj(key),
            project_id=gateway.project_id(), method="POST", path="/v1/chat/completions")

    r = gateway.admin("POST", key_path(gateway, key["id"], "/resume"))
    assert r.status == 200, r.body
    assert r.json()["state"] == "active"
    assert c.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content == m.CHAT_CONTENT
    assert get_key(gateway, key["id"]).json()["state"] == "active"


def test_suspended_key_can_be_revoked(gateway):
    key = gateway.create_key("napping")
    gateway.admin("POST", key_path(gateway, key["id"], "/suspend"))
    gateway.revoke(key["id"])
    assert gateway.admin("POST", key_path(gateway, key["id"], "/resume")).status == 404
    assert models(gateway, key["value"]).status == 401


# --- explain: one case per cause -----------------------------------------------------


def _case_unknown_key(gw: Gateway) -> dict:
    bad = "sk-" + "Zx9" * 16
    return dict(resp=models(gw, bad), reason="unknown_key", key=None, project_id=None,
                explanation=("no key with this value exists on this gateway (from another gateway or environment, "
                             "deleted, or not a keygate key)"))


def _case_unknown_well_formed_key(gw: Gateway) -> dict:
    bad = forge("sk-", "".join(secrets.choice(ALPHABET) for _ in range(ID_LEN)))
    return dict(resp=models(gw, bad), reason="unknown_key", key=None, project_id=None,
                fragments=("no key with this value exists on this gateway",))


def _case_openai_key(gw: Gateway) -> dict:
    return dict(resp=models(gw, OPENAI_LOOKING_KEY), reason="unknown_key", key=None,
                fragments=("the client sent an OpenAI API key, not a key issued by this gateway",))


def _case_azure_key(gw: Gateway) -> dict:
    return dict(resp=models(gw, secrets.token_hex(16)), reason="unknown_key", key=None,
                fragments=("the client sent an Azure OpenAI key",))


def _case_checksum_typo(gw: Gateway) -> dict:
    key = gw.create_key("typo-target")
    return dict(resp=models(gw, typo(key["value"], key["prefix"])), reason="malformed_key", key=keyobj(key),
                project_id=gw.project_id(),
                explanation=(f"the presented key is malformed: checksum mismatch: the key was mistyped or altered; "
                             f"it names {keyref(key)}, so it is probably a mistyped or truncated copy of that key"))


def _case_wrong_secret(gw: Gateway) -> dict:
    key = gw.create_key("forged-target", prefix="sk-prod-")
    bare_id = key["id"][len("key_"):]
    return dict(resp=models(gw, forge("sk-prod-", bare_id)), reason="wrong_secret", key=keyobj(key),
                fragments=(f"the key names {keyref(key)} but its secret does not match",))


def _case_revoked(gw: Gateway) -> dict:
    key = gw.create_key("revoked-target")
    assert gw.admin("DELETE", key_path(gw, key["id"], "?reason=leaked")).status == 200
    at = get_key(gw, key["id"], include_revoked=True).json()["revoked_at"]
    admin = bootstrap_admin(gw)
    return dict(resp=models(gw, key["value"]), reason="revoked", key=keyobj(key), project_id=gw.project_id(),
                explanation=(f"{keyref(key)} was revoked at {rfc3339(at)} by admin key `{BOOTSTRAP_ADMIN_NAME}` "
                             f"({admin['id']}); reason: leaked"))


def _case_rotated_out(gw: Gateway) -> dict:
    key = gw.create_key("rotated-target")
    rot = rotated(gw, key["id"], grace=0)
    return dict(resp=models(gw, key["value"]), reason="rotated_out", key=keyobj(key),
                explanation=(f"{keyref(key)} was rotated at {rfc3339(rot['rotated_at'])}; the grace period of the "
                             f"presented (old) secret ended at {rfc3339(rot['previous_secret_expires_at'])}; its "
                             f"replacement is the newest secret of {key['id']} (same id)"))


def _case_expired(gw: Gateway) -> dict:
    at = int(time.time()) + 1
    key = gw.create_key("expired-target", expires_at=at)
    time.sleep(max(0.0, at + 0.2 - time.time()))  # keygate's clock is whole unix seconds
    return dict(resp=models(gw, key["value"]), reason="expired", key=keyobj(key), explanation=f"{keyref(key)} expired at {rfc3339(at)}")


def _case_suspended(gw: Gateway) -> dict:
    key = gw.create_key("suspended-target")
    assert gw.admin("POST", key_path(gw, key["id"], "/suspend")).status == 200
    return dict(resp=models(gw, key["value"]), reason="suspended", key=keyobj(key),
                fragments=(f"{keyref(key)} is suspended (since ", ", by admin key key_"))


def _case_project_archived(gw: Gateway) -> dict:
    project = gw.create_project("doomed")
    key = gw.create_key("archived-target", project_id=project["id"])
    r = gw.admin("POST", f"/v1/organization/projects/{project['id']}/archive")
    assert r.status == 200, r.body
    return dict(resp=models(gw, key["value"]), reason="project_archived", key=keyobj(key),
                project_id=project["id"],
                explanation=(f"{keyref(key)} belongs to project {project['id']}, which was archived at "
                             f"{rfc3339(r.json()['archived_at'])}"))


def _case_missing_scope(gw: Gateway) -> dict:
    key = gw.create_key("read-only-target", permissions="read_only")
    resp = gw.request("POST", "/v1/chat/completions", headers=bearer(key["value"]),
                      body={"model": "gpt-4o", "messages": MESSAGES})
    return dict(resp=resp, reason="missing_scope", key=keyobj(key), project_id=gw.project_id(), method="POST",
                path="/v1/chat/completions",
                explanation=f"{keyref(key)} lacks scope model.request needed by this route (its permissions do "
                            "not include it)")


def _case_organization_mismatch(gw: Gateway) -> dict:
    key = gw.create_key("org-target")
    return dict(resp=models(gw, key["value"], **{"OpenAI-Organization": "org-x"}), reason="organization_mismatch",
                key=keyobj(key),
                fragments=("the OpenAI-Organization header `org-x` does not match this gateway's organization",
                           keyref(key)))


def _case_project_mismatch(gw: Gateway) -> dict:
    key = gw.create_key("proj-target")
    return dict(resp=models(gw, key["value"], **{"OpenAI-Project": "proj_x"}), reason="project_mismatch",
                key=keyobj(key),
                explanation=(f"the OpenAI-Project header proj_x does not match the key's project {gw.project_id()} "
                             f"({keyref(key)})"))


def _case_missing_credential(gw: Gateway) -> dict:
    return dict(resp=gw.request("GET", "/v1/models"), reason="missing_credential", key=None, project_id=None,
                explanation="no Authorization header arrived (the client sent none, or a proxy stripped it)")


def _case_model_not_allowed(gw: Gateway) -> dict:
    key = gw.create_key("mini-target", models=["gpt-4o-mini"])
    resp = gw.request("POST", "/v1/chat/completions", headers=bearer(key["value"]),
                      body={"model": "gpt-4o", "messages": MESSAGES})
    return dict(resp=resp, status=404, reason="model_not_allowed", key=keyobj(key), method="POST",
                path="/v1/chat/completions", fragments=("model `gpt-4o` is outside the model allow-list",
                                                        keyref(key)))


def _case_ip_not_allowed(gw: Gateway) -> dict:
    key = gw.create_key("office-target", allowed_ips=["10.0.0.0/8"])
    return dict(resp=models(gw, key["value"]), reason="ip_not_allowed", key=keyobj(key),
                fragments=("client address 127.0.0.1 is outside the IP allow-list", keyref(key)))


def _case_project_key_on_admin_api(gw: Gateway) -> dict:
    key = gw.create_key("not-admin")
    resp = gw.request("GET", "/v1/organization/projects", headers=bearer(key["value"]))
    return dict(resp=resp, reason="project_key_on_admin", key=keyobj(key), path="/v1/organization/projects",
                fragments=(f"{keyref(key)} is a project key",))


def _case_admin_key_on_data_plane(gw: Gateway) -> dict:
    r = gw.admin("POST", "/v1/organization/admin_api_keys", body={"name": "ops-target"})
    assert r.status == 200, r.body
    admin = r.json()
    return dict(resp=models(gw, admin["value"]), reason="admin_key_on_data_plane",
                key={"id": admin["id"], "name": "ops-target", "prefix": "sk-admin-"},
                fragments=("is an admin key, which can only call the Administration API",))


EXPLAIN_CASES = {
    "unknown_key": _case_unknown_key,
    "unknown_well_formed_key": _case_unknown_well_formed_key,
    "openai_key": _case_openai_key,
    "azure_key": _case_azure_key,
    "checksum_typo": _case_checksum_typo,
    "wrong_secret": _case_wrong_secret,
    "revoked": _case_revoked,
    "rotated_out": _case_rotated_out,
    "expired": _case_expired,
    "suspended": _case_suspended,
    "project_archived": _case_project_archived,
    "missing_scope": _case_missing_scope,
    "organization_mismatch": _case_organization_mismatch,
    "project_mismatch": _case_project_mismatch,
    "missing_credential": _case_missing_credential,
    "model_not_allowed": _case_model_not_allowed,
    "ip_not_allowed": _case_ip_not_allowed,
    "project_key_on_admin_api": _case_project_key_on_admin_api,
    "admin_key_on_data_plane": _case_admin_key_on_data_plane,
}


@pytest.mark.parametrize("case", list(EXPLAIN_CASES))
def test_explain_names_the_cause(shared_gateway, mock_upstream, case):
    gw = shared_gateway
    mock_upstream.clear()
    spec = EXPLAIN_CASES[case](gw)
    resp = spec.pop("resp")
    status = spec.pop("status", 401)
    rid = refused_id(resp, status)
    assert not [r for r in mock_upstream.requests if "/chat/" in r.path or r.path == "/v1/models"], (
        "a refused request must not reach the upstream")
    if spec.get("project_id", _ANY) is _ANY and spec.get("key"):
        spec["project_id"] = gw.project_id() if spec["key"]["prefix"] != "sk-admin-" else None
    explain(gw, rid, status=status, **spec)


def test_explain_of_an_unknown_or_successful_request_is_404(gateway, project_key):
    ok = models(gateway, project_key)
    assert ok.status == 200
    time.sleep(1.5)  # past the denial flush: a success is never recorded
    for rid in (ok.headers["x-request-id"], "req_" + "0" * 32, "not-a-request-id"):
        r = gateway.admin("GET", f"/v1/organization/requests/{rid}")
        assert r.status == 404, (rid, r.status, r.body)
        assert r.error["type"] == "invalid_request_error"
    p = cli(gateway, "explain", ok.headers["x-request-id"])
    assert p.returncode != 0
    assert ADMIN_KEY not in p.stdout + p.stderr


def test_requests_api_needs_an_admin_key(gateway, project_key):
    rid = refused_id(models(gateway, "sk-" + "Zx9" * 16))
    denial_record(gateway, rid)
    r = gateway.request("GET", f"/v1/organization/requests/{rid}", headers=bearer(project_key))
    assert r.status == 401
    assert "req_" not in r.body.decode().replace(r.headers.get("x-request-id", ""), "")
    assert gateway.request("GET", f"/v1/organization/requests/{rid}").status == 401
    p = cli(gateway, "explain", rid, admin_key=project_key)
    assert p.returncode != 0
    assert project_key not in p.stdout + p.stderr


# --- last used ------------------------------------------------------------------


def test_last_used_at_ip_and_user_agent_appear_after_use(gateway):
    key = gateway.create_key("tracked")
    idle = gateway.create_key("idle")
    assert (key["last_used_at"], key["last_used_ip"], key["last_used_user_agent"]) == (None, None, None)
    before = int(time.time())
    gateway.client(key["value"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    after = int(time.time())

    def used():
        k = get_key(gateway, key["id"]).json()
        return k if k["last_used_at"] is not None else None
    k = wait_for(used, 5.0, "last_used_at to be written")
    assert before <= k["last_used_at"] <= after + 1
    assert k["last_used_ip"] == "127.0.0.1"
    assert k["last_used_user_agent"] == f"OpenAI/Python {openai.__version__}"
    listed = {x["id"]: x for x in gateway.admin("GET", key_path(gateway)).json()["data"]}
    assert listed[key["id"]]["last_used_user_agent"] == k["last_used_user_agent"]
    assert listed[idle["id"]]["last_used_at"] is None

    # A later use with another agent replaces the record.
    r = gateway.request("GET", "/v1/models", headers={**bearer(key["value"]), "User-Agent": "curl/8.5.0"})
    assert r.status == 200
    wait_for(lambda: get_key(gateway, key["id"]).json()["last_used_user_agent"] == "curl/8.5.0", 5.0,
             "the second use to be recorded")


def test_last_used_survives_restart(gateway):
    key = gateway.create_key("tracked")
    models(gateway, key["value"])
    wait_for(lambda: get_key(gateway, key["id"]).json()["last_used_at"], 5.0, "last_used_at")
    gateway.restart()
    k = get_key(gateway, key["id"]).json()
    assert k["last_used_at"] is not None and k["last_used_ip"] == "127.0.0.1"


# --- audit log ------------------------------------------------------------------


def assert_actor(entry: dict, admin: dict, name: str = BOOTSTRAP_ADMIN_NAME, is_admin: bool = True) -> None:
    actor = entry["actor"]
    assert actor["type"] == "api_key", entry
    api_key = actor["api_key"]
    assert api_key["id"] == admin["id"], entry
    assert api_key["type"] == "service_account", entry
    assert api_key["service_account"]["id"].startswith("svc_acct_"), entry
    assert api_key["name"] == name, entry
    assert api_key["admin"] is is_admin, entry


def test_audit_log_has_one_entry_per_admin_action(gateway):
    admin = bootstrap_admin(gateway)
    default_pid = gateway.project_id()
    t0 = int(time.time())
    expected: list[tuple[str, str | None, str | None]] = []  # (type, details id, project id)

    project = gateway.create_project("audited")
    pid = project["id"]
    expected.append(("project.created", pid, pid))
    assert gateway.admin("POST", f"/v1/organization/projects/{pid}", body={"name": "audited-2"}).status == 200
    expected.append(("project.updated", pid, pid))

    key = gateway.create_key("k", project_id=pid, permissions="restricted", scopes=["api.model.read"])
    expected.append(("api_key.created", key["id"], pid))
    gateway.update_key(key["id"], project_id=pid, permissions="read_only")
    expected.append(("api_key.updated", key["id"], pid))
    rotated(gateway, key["id"], grace=60, pid=pid)
    expected.append(("api_key.updated", key["id"], pid))
    assert gateway.admin("POST", key_path(gateway, key["id"], "/suspend", pid)).status == 200
    expected.append(("api_key.updated", key["id"], pid))
    assert gateway.admin("POST", key_path(gateway, key["id"], "/resume", pid)).status == 200
    expected.append(("api_key.updated", key["id"], pid))
    assert gateway.admin("DELETE", key_path(gateway, key["id"], "?reason=leaked", pid)).status == 200
    expected.append(("api_key.deleted", key["id"], pid))

    sa = gateway.admin("POST", f"/v1/organization/projects/{pid}/service_accounts", body={"name": "bot"}).json()
    expected.append(("service_account.created", sa["id"], pid))
    expected.append(("api_key.created", sa["api_key"]["id"], pid))
    assert gateway.admin("DELETE", f"/v1/organization/projects/{pid}/service_accounts/{sa['id']}").status == 200
    expected.append(("service_account.deleted", sa["id"], pid))

    user = gateway.admin("POST", "/v1/organization/users",
                         body={"name": "Ada", "email": "ada@example.com", "role": "owner"}).json()
    expected.append(("user.added", user["id"], None))
    assert gateway.admin("POST", f"/v1/organization/users/{user['id']}", body={"role": "reader"}).status == 200
    expected.append(("user.updated", user["id"], None))
    assert gateway.admin("DELETE", f"/v1/organization/users/{user['id']}").status == 200
    expected.append(("user.deleted", user["id"], None))

    ops = gateway.admin("POST", "/v1/organization/admin_api_keys", body={"name": "ops"}).json()
    expected.append(("api_key.created", ops["id"], None))
    # An action by the new admin key names it as the actor.
    by_ops = gateway.admin("POST", "/v1/organization/projects", body={"name": "by-ops"}, key=ops["value"]).json()
    expected.append(("project.created", by_ops["id"], by_ops["id"]))
    assert gateway.admin("DELETE", f"/v1/organization/admin_api_keys/{ops['id']}").status == 200
    expected.append(("api_key.deleted", ops["id"], None))

    assert gateway.admin("POST", f"/v1/organization/projects/{pid}/archive").status == 200
    expected.append(("project.archived", pid, pid))

    # Failed logins: a project key, a deleted admin key, a mistyped admin key, an unknown key (not logged).
    live = gateway.create_key("live")
    expected.append(("api_key.created", live["id"], default_pid))
    refused = [
        (gateway.admin("GET", "/v1/organization/projects", key=live["value"]), live["id"], "project_key_on_admin"),
        (gateway.admin("GET", "/v1/organization/projects", key=ops["value"]), ops["id"], "revoked"),
        (gateway.admin("GET", "/v1/organization/users", key=typo(ops["value"], "sk-admin-")), ops["id"],
         "malformed_key"),
    ]
    assert gateway.admin("GET", "/v1/organization/projects", key="sk-admin-" + "Zx9" * 16).status == 401
    for r, _, _ in refused:
        assert r.status == 401, r.body

    def logins():
        got = audit_all(gateway, {"event_types[]": "login.failed"})
        return got if len(got) >= len(refused) else None
    failed = wait_for(logins, 5.0, "login.failed entries")
    time.sleep(1.2)  # one more flush: nothing else may arrive (the unknown key names no key)
    t1 = int(time.time())

    entries = audit_all(gateway)
    assert all(isinstance(e["effective_at"], int) for e in entries)
    assert [e["effective_at"] for e in entries] == sorted((e["effective_at"] for e in entries), reverse=True), (
        "newest first")
    mine = [e for e in reversed(entries) if e["type"] != "login.failed"]
    got = [(e["type"], e[e["type"]].get("id"), (e.get("project") or {}).get("id")) for e in mine]
    assert got == expected
    assert entries[:len(refused)] == failed[:len(refused)] and len(failed) == len(refused), (
        "failed logins arrive after the actions")

    for e in entries:
        assert re.match(r"^audit_log-[A-Za-z0-9_-]+$", e["id"]), e
        assert t0 <= e["effective_at"] <= t1, e
        assert e["type"] in e, e
        if "project" in e:
            assert set(e["project"]) == {"id", "name"}, e
    assert len({e["id"] for e in entries}) == len(entries)

    by_type = lambda t: [e for e in mine if e["type"] == t]  # noqa: E731
    for e in mine:
        if e["type"] == "project.created" and e["project.created"]["id"] == by_ops["id"]:
            assert_actor(e, ops, name="ops")
        else:
            assert_actor(e, admin)

    created = by_type("api_key.created")[0]
    assert created["api_key.created"] == {"id": key["id"], "data": {"scopes": ["api.model.read"]}}
    assert created["project"] == {"id": pid, "name": "audited"} or created["project"]["id"] == pid
    updates = [e["api_key.updated"] for e in by_type("api_key.updated")]
    assert all(set(u) == {"id", "changes_requested"} for u in updates), updates
    assert updates[1]["changes_requested"].get("rotated") is True
    assert updates[1]["changes_requested"].get("grace_period_seconds") == 60
    assert updates[2]["changes_requested"].get("state") == "suspended"
    assert updates[3]["changes_requested"].get("state") == "resumed"
    assert by_type("api_key.deleted")[0]["api_key.deleted"] == {"id": key["id"]}
    assert by_type("project.archived")[0]["project.archived"] == {"id": pid}
    assert by_type("user.added")[0]["user.added"]["id"] == user["id"]
    assert "project" not in by_type("user.added")[0]
    assert by_type("user.updated")[0]["user.updated"]["changes_requested"] == {"role": "reader"}
    assert isinstance(by_type("api_key.created")[-2]["api_key.created"]["data"]["scopes"], list)  # the admin key

    by_actor = {e["actor"]["api_key"]["id"]: e for e in failed}
    for _, actor_id, code in refused:
        matching = [e for e in failed if e["actor"]["api_key"]["id"] == actor_id
                    and e["login.failed"]["error_code"] == code]
        assert len(matching) == 1, (actor_id, code, failed)
    assert by_actor[live["id"]]["actor"]["api_key"]["admin"] is False
    assert by_actor[ops["id"]]["actor"]["api_key"]["admin"] is True
    body = json.dumps(entries)
    for value in (key["value"], sa["api_key"]["value"], ops["value"], live["value"], ADMIN_KEY):
        assert value not in body


def test_audit_log_filters(gateway):
    admin = bootstrap_admin(gateway)
    ops = gateway.admin("POST", "/v1/organization/admin_api_keys", body={"name": "ops"}).json()
    a = gateway.create_project("a")
    b = gateway.admin("POST", "/v1/organization/projects", body={"name": "b"}, key=ops["value"]).json()
    ka = gateway.create_key("ka", project_id=a["id"])
    kb = gateway.create_key("kb", project_id=b["id"])
    user = gateway.admin("POST", "/v1/organization/users", body={"name": "U", "email": "u@example.com"}).json()
    early = int(time.time())
    wait_for(lambda: int(time.time()) > early, 2.0, "the next second")
    late = int(time.time())
    gateway.update_key(ka["id"], project_id=a["id"], name="ka-2")
    gateway.create_project("c")

    full = audit_all(gateway)
    assert len(full) >= 8

    def ids(params) -> list[str]:
        return [e["id"] for e in audit_all(gateway, params)]

    def expect(params, pred) -> list[dict]:
        want = [e["id"] for e in full if pred(e)]
        assert want, f"the filter {params} selects nothing in this session"
        assert ids(params) == want, params
        return want

    expect({"event_types[]": "project.created"}, lambda e: e["type"] == "project.created")
    expect([("event_types[]", "project.created"), ("event_types[]", "user.added")],
           lambda e: e["type"] in ("project.created", "user.added"))
    expect({"project_ids[]": a["id"]}, lambda e: (e.get("project") or {}).get("id") == a["id"])
    expect([("project_ids[]", a["id"]), ("project_ids[]", b["id"])],
           lambda e: (e.get("project") or {}).get("id") in (a["id"], b["id"]))
    expect({"resource_ids[]": ka["id"]}, lambda e: e[e["type"]].get("id") == ka["id"])
    assert len(ids({"resource_ids[]": ka["id"]})) == 2  # created, updated
    expect({"resource_ids[]": user["id"]}, lambda e: e["type"] == "user.added")
    expect({"actor_ids[]": ops["id"]}, lambda e: e["actor"]["api_key"]["id"] == ops["id"])
    expect({"actor_ids[]": admin["id"]}, lambda e: e["actor"]["api_key"]["id"] == admin["id"])
    expect([("event_types[]", "api_key.created"), ("project_ids[]", b["id"])],
           lambda e: e["type"] == "api_key.created" and (e.get("project") or {}).get("id") == b["id"])
    expect({"effective_at[gte]": str(late)}, lambda e: e["effective_at"] >= late)
    expect({"effective_at[gt]": str(early)}, lambda e: e["effective_at"] > early)
    expect({"effective_at[lt]": str(late)}, lambda e: e["effective_at"] < late)
    expect({"effective_at[lte]": str(early)}, lambda e: e["effective_at"] <= early)
    expect([("effective_at[gte]", str(late)), ("event_types[]", "project.created")],
           lambda e: e["effective_at"] >= late and e["type"] == "project.created")
    assert ids({"event_types[]": "project.deleted"}) == []
    assert ids({"resource_ids[]": "key_AAAAAAAAAAAA"}) == []

    # limit + after walk the whole log, newest first, without gaps or repeats.
    walked, after, pages = [], None, 0
    while True:
        r = audit(gateway, [("limit", "2")] + ([("after", after)] if after else []))
        assert r.status == 200, r.body
        page = r.json()
        assert page["object"] == "list"
        assert 1 <= len(page["data"]) <= 2
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        walked += [e["id"] for e in page["data"]]
        pages += 1
        assert pages < 50
        if not page["has_more"]:
            break
        assert len(page["data"]) == 2
        after = page["last_id"]
    assert walked == [e["id"] for e in full]
    r = audit(gateway, {"limit": "1"}).json()
    assert [e["id"] for e in r["data"]] == [full[0]["id"]] and r["has_more"] is True
    r = audit(gateway, {"after": full[-1]["id"]}).json()
    assert r["data"] == [] and r["has_more"] is False
    r = audit(gateway, {"before": full[1]["id"]}).json()
    assert [e["id"] for e in r["data"]] == [full[0]["id"]]


@pytest.mark.parametrize("query", [
    {"colour": "blue"},
    {"limit": "0"},
    {"limit": "101"},
    {"limit": "many"},
    {"effective_at[gte]": "yesterday"},
    {"effective_at[since]": "1"},
])
def test_audit_log_bad_query_is_400(gateway, query):
    r = audit(gateway, query)
    assert r.status == 400, (query, r.status, r.body)
    assert r.error["type"] == "invalid_request_error"


def test_audit_log_needs_an_admin_key(gateway, project_key):
    r = gateway.request("GET", "/v1/organization/audit_logs", headers=bearer(project_key))
    assert r.status == 401
    assert gateway.request("GET", "/v1/organization/audit_logs").status == 401


def test_audit_log_before_returns_the_adjacent_previous_page(gateway):
    """`before=<first id of a page>` gives the page just before it (as OpenAI's cursor lists do),
    not the newest page of the log."""
    for i in range(6):
        gateway.create_project(f"p{i}")
    full = audit_all(gateway)
    assert len(full) >= 6
    third = audit(gateway, {"limit": "2", "after": full[3]["id"]}).json()
    assert [e["id"] for e in third["data"]] == [full[4]["id"], full[5]["id"]]
    second = audit(gateway, {"limit": "2", "before": full[4]["id"]}).json()
    assert [e["id"] for e in second["data"]] == [full[2]["id"], full[3]["id"]], (
        [e["id"] for e in second["data"]], [e["id"] for e in full[:6]])


# --- no secret anywhere -----------------------------------------------------------


@pytest.mark.parametrize("log_level", ["debug", "trace"])
def test_no_secret_in_database_logs_audit_log_or_denial_records(make_gateway, mock_upstream, log_level):
    gw = make_gateway(extra_env={"KEYGATE_LOG": log_level})
    pid = gw.project_id()
    seen: list[str] = [ADMIN_KEY, UPSTREAM_SECRET]
    keygate_secrets: list[str] = []  # the 43-character secret parts
    rids: list[str] = []

    def keep(value: str, prefix: str | None = None) -> str:
        seen.append(value)
        if prefix is not None:
            keygate_secrets.append(secret_part(value, prefix))
        return value

    def refused(r: RawResponse, status: int = 401) -> None:
        rids.append(refused_id(r, status))

    alpha = gw.create_key("alpha")
    beta = gw.create_key("beta", prefix="sk-prod-")
    a0, b0 = keep(alpha["value"], "sk-"), keep(beta["value"], "sk-prod-")
    c = gw.client(a0)
    c.models.list()
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    c.embeddings.create(model="text-embedding-3-small", input="x")

    a1 = keep(rotated(gw, alpha["id"], grace=60)["value"], "sk-")
    b1 = keep(rotated(gw, beta["id"], grace=0)["value"], "sk-prod-")
    for value in (a0, a1, b1):
        assert models(gw, value).status == 200
    assert gw.request("GET", "/v1/models", headers={"Authorization": basic_auth(a1)}).status == 200
    refused(models(gw, b0))  # rotated out

    sa = gw.admin("POST", f"/v1/organization/projects/{pid}/service_accounts", body={"name": "bot"}).json()
    sa_key = keep(sa["api_key"]["value"], "sk-")
    gw.client(sa_key).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    ops = gw.admin("POST", "/v1/organization/admin_api_keys", body={"name": "ops"}).json()
    ops_key = keep(ops["value"], "sk-admin-")
    assert gw.admin("GET", "/v1/organization/projects", key=ops_key).status == 200
    refused(gw.admin("GET", "/v1/organization/projects", key=keep(typo(ops_key, "sk-admin-"))))
    refused(models(gw, ops_key))  # admin key on the data plane
    assert gw.admin("DELETE", f"/v1/organization/admin_api_keys/{ops['id']}").status == 200
    refused(gw.admin("GET", "/v1/organization/projects", key=ops_key))  # deleted admin key

    refused(models(gw, keep(typo(a1, "sk-"))))
    refused(models(gw, keep(OPENAI_LOOKING_KEY)))
    refused(models(gw, keep(secrets.token_hex(16))))
    refused(models(gw, keep(forge("sk-", alpha["id"][4:]), "sk-")))  # wrong secret
    refused(models(gw, keep(forge("sk-", "Q" * ID_LEN), "sk-")))  # unknown id
    refused(gw.request("GET", "/v1/models", headers={"Authorization": f'Bearer "{a1}"'}))  # quoted
    refused(gw.request("GET", "/v1/models", headers={"Authorization": f"Bearer {a1[:-5]}"}))  # truncated
    refused(gw.request("GET", "/v1/models", headers={"Authorization": f"Token {a1}"}))  # no scheme
    refused(models(gw, a1, **{"OpenAI-Project": "proj_x"}))
    refused(gw.request("GET", "/v1/organization/projects", headers=bearer(a1)))  # project key on admin
    gw.update_key(alpha["id"], permissions="read_only")
    refused(gw.request("POST", "/v1/chat/completions", headers=bearer(a1),
                       body={"model": "gpt-4o", "messages": MESSAGES}))
    gw.admin("POST", key_path(gw, beta["id"], "/suspend"))
    refused(models(gw, b1))
    assert gw.admin("DELETE", key_path(gw, alpha["id"], "?reason=leaked")).status == 200
    refused(models(gw, a0))
    refused(models(gw, a1))

    # keygate explain (CLI) on every refusal, and the records over HTTP.
    records = [denial_record(gw, rid) for rid in rids]
    outputs = [cli(gw, "explain", "--json", rid).stdout for rid in rids[:3]]
    wait_for(lambda: get_key(gw, sa["api_key"]["id"]).json()["last_used_at"], 5.0, "last_used_at")

    bodies = [json.dumps(records), json.dumps(audit_all(gw)), *outputs]
    for path in (key_path(gw, suffix="?include_revoked=true"), "/v1/organization/admin_api_keys",
                 f"/v1/organization/projects/{pid}/service_accounts"):
        bodies.append(gw.admin("GET", path).body.decode())
    for body in bodies:
        for value in seen + keygate_secrets:
            assert value not in body, f"{value[:12]}... appears in an API answer"

    assert gw.stop() == 0
    db_files = [p for p in (gw.db_path, Path(f"{gw.db_path}-wal"), Path(f"{gw.db_path}-shm")) if p.exists()]
    db = b"".join(p.read_bytes() for p in db_files)
    assert alpha["id"][4:].encode() in db, "grepping the wrong database file"
    logs = b"".join(p.read_bytes() for p in gw.workdir.glob("std*.log"))
    assert logs.count(b"request refused") >= len(rids), "grepping the wrong log"
    for value in seen + keygate_secrets:
        needle = value.encode()
        assert needle not in db, f"{value[:12]}... appears in the database files"
        assert needle not in logs, f"{value[:12]}... appears in keygate's log"


# --- hints ----------------------------------------------------------------------


def test_hints_enabled_append_format_facts_only(make_gateway):
    gw = make_gateway(extra_env={"KEYGATE_ERRORS__HINTS": "true"})
    expiring = gw.create_key("expiring", expires_at=int(time.time()) + 1)
    key = gw.create_key("hinted")

    def message(value: str) -> str:
        e = sdk_error(lambda: gw.client(value).models.list())
        assert e.status_code == 401 and e.code == "invalid_api_key"
        assert value not in e.response.text
        return e.body["message"]

    bad = typo(key["value"], key["prefix"])
    assert message(bad) == incorrect_key_message(bad) + HINT_CHECKSUM
    assert "OpenAI key" in message(OPENAI_LOOKING_KEY).split("(keygate hint:")[1]
    hexkey = secrets.token_hex(16)
    assert "Azure" in message(hexkey).split("(keygate hint:")[1]
    truncated = key["value"][:-3]
    assert "(keygate hint: the key has the wrong length" in message(truncated)

    # Nothing that would tell whether a key exists, or what happened to it.
    unknown = forge("sk-", "Q" * ID_LEN)
    wrong = forge("sk-", key["id"][4:])
    assert message(unknown) == incorrect_key_message(unknown)
    assert message(wrong) == incorrect_key_message(wrong)
    assert message("sk-" + "Zx9" * 16) == incorrect_key_message("sk-" + "Zx9" * 16)
    rot = gw.create_key("rotated")
    rotated(gw, rot["id"], grace=0)
    assert message(rot["value"]) == incorrect_key_message(rot["value"])
    sus = gw.create_key("suspended")
    gw.admin("POST", key_path(gw, sus["id"], "/suspend"))
    assert message(sus["value"]) == incorrect_key_message(sus["value"])
    gw.revoke(key["id"])
    assert message(key["value"]) == incorrect_key_message(key["value"]), "a revoked key gets no hint"
    wait_for(lambda: models(gw, expiring["value"]).status == 401, 5.0, "the key to expire")
    assert message(expiring["value"]) == incorrect_key_message(expiring["value"]), "an expired key gets no hint"


def test_hints_are_off_by_default(gateway):
    key = gateway.create_key("plain")
    for value in (typo(key["value"], key["prefix"]), OPENAI_LOOKING_KEY, secrets.token_hex(16)):
        e = sdk_error(lambda: gateway.client(value).models.list())
        assert e.status_code == 401
        assert e.body["message"] == incorrect_key_message(value)
        assert "keygate hint" not in e.response.text


# --- rotation policy --------------------------------------------------------------


def due(gw: Gateway, pid: str) -> dict:
    r = gw.admin("GET", key_path(gw, suffix="?due=true", pid=pid))
    assert r.status == 200, r.body
    body = r.json()
    assert body["object"] == "list" and body["has_more"] is False
    return body


def test_max_key_age_seconds_is_stored_on_create_and_update(gateway):
    project = gateway.create_project("policy", max_key_age_seconds=90)
    assert project["max_key_age_seconds"] == 90
    got = gateway.admin("GET", f"/v1/organization/projects/{project['id']}").json()
    assert got["max_key_age_seconds"] == 90
    r = gateway.admin("POST", f"/v1/organization/projects/{project['id']}", body={"max_key_age_seconds": 120})
    assert r.status == 200 and r.json()["max_key_age_seconds"] == 120
    gateway.restart()
    got = gateway.admin("GET", f"/v1/organization/projects/{project['id']}").json()
    assert got["max_key_age_seconds"] == 120


def test_due_lists_keys_older_than_max_key_age(gateway):
    project = gateway.create_project("rotating", max_key_age_seconds=2)
    pid = project["id"]
    assert project["max_key_age_seconds"] == 2
    a = gateway.create_key("a", project_id=pid)
    b = gateway.create_key("b", project_id=pid)
    c = gateway.create_key("c", project_id=pid)
    assert due(gateway, pid)["data"] == []
    r = gateway.admin("DELETE", key_path(gateway, c["id"], pid=pid))
    assert r.status == 200

    body = wait_for(lambda: (lambda d: d if {k["id"] for k in d["data"]} == {a["id"], b["id"]} else None)(
        due(gateway, pid)), 5.0, "keys a and b to become due")
    assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
    assert all(k["object"] == "organization.project.api_key" and "value" not in k for k in body["data"])

    rotated(gateway, a["id"], grace=60, pid=pid)
    assert [k["id"] for k in due(gateway, pid)["data"]] == [b["id"]], "a fresh secret is not due"
    everything = gateway.admin("GET", key_path(gateway, pid=pid)).json()["data"]
    assert {k["id"] for k in everything} == {a["id"], b["id"]}, "without due=true every live key is listed"

    r = gateway.admin("POST", f"/v1/organization/projects/{pid}", body={"max_key_age_seconds": 3600})
    assert r.status == 200 and r.json()["max_key_age_seconds"] == 3600
    assert due(gateway, pid)["data"] == []
    r = gateway.admin("POST", f"/v1/organization/projects/{pid}", body={"max_key_age_seconds": None})
    assert r.status == 200 and r.json()["max_key_age_seconds"] is None
    assert due(gateway, pid)["data"] == [], "no policy: nothing is due"


def test_due_without_policy_is_empty(gateway):
    gateway.create_key("old")
    assert gateway.admin("GET", f"/v1/organization/projects/{gateway.project_id()}").json()[
        "max_key_age_seconds"] is None
    assert due(gateway, gateway.project_id())["data"] == []


@pytest.mark.parametrize("age", [0, -1])
def test_max_key_age_must_be_positive(gateway, age):
    r = gateway.admin("POST", f"/v1/organization/projects/{gateway.project_id()}", body={"max_key_age_seconds": age})
    assert r.status == 400, r.body
    assert r.error["param"] == "max_key_age_seconds"


@pytest.mark.parametrize("age", [0, -1])
def test_project_create_with_bad_max_key_age_is_400_and_creates_nothing(gateway, age):
    r = gateway.admin("POST", "/v1/organization/projects", body={"name": "bad-age", "max_key_age_seconds": age})
    assert r.status == 400, r.body
    assert r.error["param"] == "max_key_age_seconds"
    names = [p["name"] for p in gateway.admin("GET", "/v1/organization/projects?limit=100").json()["data"]]
    assert "bad-age" not in names, "a refused body must not create a project"
    assert audit_all(gateway, {"event_types[]": "project.created"}) == []
