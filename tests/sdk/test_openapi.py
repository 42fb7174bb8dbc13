"""The OpenAPI document at /openapi.json, and a bounded schemathesis run against
it: every generated request (valid and invalid) must get a non-5xx answer."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import ADMIN_KEY
from openapi_spec_validator import validate

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def run_schemathesis(gateway, key: str, *filters: str, cwd) -> subprocess.CompletedProcess:
    cmd = [
        str(SCHEMATHESIS), "run", f"{gateway.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", "8",
        "--seed", "7",
        "--workers", "1",
        "--request-timeout", "10",
        "--max-time", "30",
        "--generation-database", "none",
        "-H", f"Authorization: Bearer {key}",
        *filters,
    ]
    # schemathesis keeps a crash cache in its working directory: not the repo's.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=cwd)


def test_openapi_document_is_served_and_complete(gateway):
    r = gateway.request("GET", "/openapi.json")
    assert r.status == 200
    doc = json.loads(r.body)
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/organization/projects", "/v1/organization/projects/{project_id}/api_keys",
                 "/v1/organization/admin_api_keys", "/v1/organization/audit_logs",
                 "/v1/organization/requests/{request_id}", "/v1/chat/completions", "/v1/embeddings"):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_openapi_document_passes_validation_with_unique_operation_ids_and_summaries(gateway):
    doc = gateway.request("GET", "/openapi.json").json()
    validate(doc)  # raises on any OpenAPI 3.1 error (repeated operationIds included)
    ids: dict[str, str] = {}
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op, where = item[method], f"{method.upper()} {path}"
            assert op.get("operationId"), f"{where}: no operationId"
            assert op["operationId"] not in ids, f"{where}: operationId {op['operationId']} repeats {ids.get(op['operationId'])}"
            ids[op["operationId"]] = where
            assert op.get("summary", "").strip(), f"{where}: no summary"
    for path in ("/healthz", "/readyz", "/v1/keygate/echo-auth", "/v1/keys/leaked",
                 "/openai/deployments/{deployment-id}/chat/completions",
                 "/openai/deployments/{deployment-id}/completions",
                 "/openai/deployments/{deployment-id}/embeddings"):
        assert path in doc["paths"], path
    # /metrics is served on the metrics listener only: described, not a path of this server.
    assert "/metrics" not in doc["paths"]
    assert "metrics_listen" in doc["info"]["description"]
    assert doc["components"]["securitySchemes"]["api-key"] == {"type": "apiKey", "in": "header", "name": "api-key"}


def test_schemathesis_finds_no_server_error_in_the_admin_api(gateway, tmp_path):
    result = run_schemathesis(gateway, ADMIN_KEY, "--include-path-regex", "^/v1/organization", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:] + gateway.stderr()[-4000:]


def test_schemathesis_finds_no_server_error_in_the_data_plane(gateway, project_key, tmp_path):
    result = run_schemathesis(gateway, project_key, "--exclude-path-regex", "^/v1/organization", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:] + gateway.stderr()[-4000:]
