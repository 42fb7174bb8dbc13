"""Adopting existing keys: keys imported from a plaintext CSV and from a
LiteLLM export work through the official openai SDK as they are, with their
model lists and limits; a mistyped one gets the same 401 as any unknown key."""

from __future__ import annotations

import hashlib
import json

import openai
import pytest

from conftest import cli

PLAIN = "sk-team-legacy-0123456789abcdef0123"
LITELLM = "sk-litellm-virtual-9876543210fedcba"


def test_imported_keys_work_through_the_sdk(gateway, tmp_path):
    csv = tmp_path / "keys.csv"
    csv.write_text(f"key,name,models,rpm\n{PLAIN},legacy-app,gpt-4o-mini,2\n")
    litellm = tmp_path / "litellm.jsonl"
    token = hashlib.sha256(LITELLM.encode()).hexdigest()
    litellm.write_text(json.dumps({"token": token, "key_alias": "from-litellm", "models": [], "tpm_limit": 100000}) + "\n")

    for source, path in (("plaintext", csv), ("sha256", litellm)):
        done = cli(gateway, "keys", "import", "--from", source, str(path))
        assert done.returncode == 0, done.stderr
        assert "Imported 1 of 1 keys" in done.stdout

    client = gateway.client(PLAIN, max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).choices
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    other = gateway.client(LITELLM, max_retries=0)
    assert other.embeddings.create(model="text-embedding-3-small", input="hi").data

    typo = gateway.client(PLAIN[:-1] + "4", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        typo.models.list()
    assert caught.value.body["code"] == "invalid_api_key"

    # Running the import again changes nothing.
    again = cli(gateway, "keys", "import", "--from", "plaintext", str(csv))
    assert again.returncode == 0 and "Imported 0 of 1 keys" in again.stdout
