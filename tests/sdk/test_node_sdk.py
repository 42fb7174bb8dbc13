"""The official openai Node SDK against keygate: runs tests/sdk/node/azure.test.mjs
(`node --test`) with a running keygate (Azure front door configured) and the
mock upstream, then checks what the mock saw.

Needs `node` and the packages in tests/sdk/node (`npm ci --prefix tests/sdk/node`,
which scripts/test runs). Skipped when node/npm are missing, unless CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import UPSTREAM_SECRET
from mock_upstream import CHAT_CONTENT, CHAT_STREAM_PIECES, CHAT_TOTAL_TOKENS, EMBEDDING, MODELS
from test_azure import FRONT_DOOR_ENV, REGION

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_TIMEOUT_S = 120


def require_node_sdk() -> None:
    """Skips without node/npm, except under CI=true, where that fails; fails
    when the Node packages are not installed."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true requires the Node SDK tests")
        pytest.skip(reason)
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        pytest.fail("the Node packages are not installed: run `npm ci --prefix tests/sdk/node` (scripts/test does)")


def test_node_azure_sdk(make_gateway, mock_upstream):
    require_node_sdk()

    gw = make_gateway(extra_env=FRONT_DOOR_ENV)
    key = gw.create_key("node-sdk")["value"]
    expect = {
        "chatContent": CHAT_CONTENT,
        "streamPieces": CHAT_STREAM_PIECES,
        "totalTokens": CHAT_TOTAL_TOKENS,
        "embedding": EMBEDDING,
        "models": MODELS,
        "region": REGION,
    }
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KEYGATE_", "OPENAI_", "AZURE_OPENAI_", "NODE_OPTIONS"))}
    env.update(KEYGATE_URL=gw.url, KEYGATE_TEST_KEY=key, KEYGATE_TEST_EXPECT=json.dumps(expect), NO_COLOR="1")
    try:
        p = subprocess.run(
            ["node", "--test", "--test-reporter=spec", "azure.test.mjs"],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"node --test ran past {NODE_TIMEOUT_S}s; output:\n{e.stdout}\n{e.stderr}\nkeygate:\n{gw.stderr()}")
    output = f"{p.stdout}\n{p.stderr}"
    assert p.returncode == 0, f"node --test exited with {p.returncode}:\n{output}\nkeygate stderr:\n{gw.stderr()[-4000:]}"
    counts = dict(re.findall(r"^(?:#|\u2139) (pass|fail) (\d+)$", output, re.MULTILINE))
    assert counts.get("fail") == "0" and int(counts.get("pass", 0)) >= 10, f"unexpected summary {counts}:\n{output}"

    # What the SDK sent reached the mock as OpenAI requests, with keygate's credential only.
    requests = mock_upstream.requests
    posted = [r.json()["model"] for r in requests if r.method == "POST"]
    assert "gpt-4o" in posted and "text-embedding-3-small" in posted, posted
    assert "prod-gpt4o" not in posted and "embed" not in posted, "deployments are resolved to models"
    for rec in requests:
        assert rec.path.startswith("/v1/"), rec.path
        assert rec.headers.get("authorization") == f"Bearer {UPSTREAM_SECRET}", rec.headers
        assert "api-key" not in rec.headers
        assert all(key not in v for _, v in rec.header_items)
