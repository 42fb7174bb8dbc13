#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/<target>/seed-*.

Each seed covers one rule of the code under test; see the check functions in
src/fuzzing.rs for each target's input format. Inputs a fuzz run found and
kept are the other files there (named by their hash). Run from anywhere:
`python3 fuzz/seeds.py`; it only (re)writes files named seed-*.
"""
import base64
import pathlib
import zlib

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def checksum(signed: str) -> str:
    n = zlib.crc32(signed.encode())
    out = []
    for _ in range(6):
        out.append(ALPHABET[n % 62])
        n //= 62
    return "".join(reversed(out))


def key(prefix: str = "sk-", salt: int = 0) -> str:
    body = prefix + "kg1" + "".join(ALPHABET[(i * 11 + salt) % 62] for i in range(55))
    return body + checksum(body)


def write(target: str, seeds: dict) -> None:
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for name, data in seeds.items():
        (folder / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


VALID = key()
PROD = key("sk-prod-", 5)
typo = VALID[:20] + ("A" if VALID[20] != "A" else "B") + VALID[21:]

write("key_parse", {
    "valid": VALID,
    "valid-prod": PROD,
    "valid-three-part-prefix": key("sk-a1-b2-", 9),
    "typo": typo,
    "quoted": f'"{VALID}"',
    "single-quoted": f"'{VALID}'",
    "trailing-newline": VALID + "\n",
    "inner-space": VALID[:30] + " " + VALID[30:],
    "truncated": VALID[:-1],
    "doubled": VALID + VALID,
    "no-prefix": VALID[3:],
    "upper-prefix": "SK-" + VALID[3:],
    "version-2": VALID.replace("kg1", "kg2", 1),
    "openai-key": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
    "azure-key": "0123456789abcdef0123456789abcdef",
    "cyrillic-a": VALID[:25] + "\u0430" + VALID[26:],
    "zero-width": VALID[:25] + "\u200b" + VALID[25:],
    "empty": "",
    "bad-char": VALID[:40] + "_" + VALID[41:],
    "edit-substitute": b"\xff" + bytes(range(1, 56)) + b"\x00\x20\x00A",
    "edit-delete": b"\xff\x01" + bytes(range(2, 57)) + b"\x00\x05\x01\x00",
    "edit-insert": b"\xff\x02" + bytes(range(3, 58)) + b"\x00\x10\x02-",
    "edit-swap": b"\xff\x03" + bytes(range(4, 59)) + b"\x00\x30\x03\x00",
})

basic = base64.b64encode(f"user:{VALID}".encode()).decode()
write("credential", {
    "bearer": f"\x00authorization:Bearer {VALID}",
    "bearer-lower": f"\x00authorization:bearer  {VALID}",
    "basic": f"\x00authorization:Basic {basic}",
    "basic-no-password": "\x00authorization:Basic " + base64.b64encode(b"user:").decode(),
    "no-scheme": f"\x00authorization:{VALID}",
    "empty-bearer": "\x00authorization:Bearer ",
    "twice": f"\x00authorization:Bearer {VALID}\nauthorization:Bearer {PROD}",
    "api-key-openai": f"\x00api-key:{VALID}",
    "api-key-azure": f"\x01api-key:{VALID}",
    "api-key-empty": "\x01api-key:   ",
    "both-same": f"\x01authorization:Bearer {VALID}\napi-key:{VALID}",
    "both-different": f"\x01authorization:Bearer {VALID}\napi-key:{PROD}",
    "both-same-spacing": f"\x01authorization:Bearer  {VALID} \napi-key: {VALID}",
    "api-key-twice": f"\x01api-key:{VALID}\napi-key:{VALID}",
    "non-utf8": b"\x00authorization:Bearer sk-\xff\xfe",
    "query-key": f"\x00?model=gpt-4o&x={VALID}",
    "query-names": "\x00?api-key=1\n?API_KEY=2\n?Key=3\n?apikey",
    "query-encoded": "\x00?a=%73k-kg1&b=c+d%",
})

paths_ok = [
    "/v1/chat/completions", "/v1/models/gpt-4o", "/v1/files/", "/v1/models/ft:gpt-4o:acme.v1",
    "/v1/models/...", "/v1/models/..x", "/v1/models/é..", "/v1/models/100%25", "/v1/files/file-AbC123/content",
    "/v1/%63hat/completions", "/v1/models/%2ex", "/v1/models/a%7eb%2D", "/v1/models/a%20b%3a",
    "/v1/CHAT/completions", "/v1/Files/file-AbC",
]
paths_reserved = [
    "/v1/organization/projects", "/v1/Organization/projects", "/v1/%6frganization/admin_api_keys",
    "/v1/%4F%52%47anization", "/v1/keygate", "/v1/KeyGate/echo-auth", "/v1/%6Beygate/echo-auth",
]
paths_bad = [
    "/v1/embeddings/../chat/completions", "/v1/models/%2e%2e/files", "/v1/models/.%2E/x",
    "/v1/embeddings%2f..%2fchat/completions", "/v1//chat/completions", "/v1/models%5Cx", "/v1/models\\..\\files",
    "/v1/models/x%2", "/v1/models/x%zz", "/v1/models/x%00", "/v1/organization;x/projects",
    "/v1/organization%3B/projects", "/v1/", "/v2/chat/completions", "v1/chat/completions",
]
azure = [
    "/openai/deployments/prod%2Dgpt4o/chat/completions?api-version=2024-10-21&x=1",
    "/openai/models?api-version=2024-02-15-preview",
    "/openai/v1/chat/completions", "/openai/v1/responses?api-version=preview",
    "/openai/v1/Organization/projects", "/openai/%6Frganization?api-version=2024-10-21",
    "/openai/deployments/d/../../v1/organization?api-version=2024-10-21",
    "/openai/deployments/%2F/chat/completions?api-version=2024-10-21",
]
write("canonical_path", {
    **{f"ok-{i}": p for i, p in enumerate(paths_ok)},
    **{f"reserved-{i}": p for i, p in enumerate(paths_reserved)},
    **{f"bad-{i}": p for i, p in enumerate(paths_bad)},
    **{f"azure-{i}": p for i, p in enumerate(azure)},
})

write("body_json", {
    "chat": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":64}',
    "escaped-key": '{"mod\\u0065l":"gpt-4o","stream":false}',
    "escaped-value": '{"model":"gpt\\u002d4o"}',
    "duplicate-model": '{"model":"gpt-4o-mini","model":"gpt-4o"}',
    "duplicate-escaped": '{"model":"gpt-4o-mini","\\u006dodel":"gpt-4o"}',
    "duplicate-stream": '{"stream":false,"stream":true}',
    "model-array": '{"model":["gpt-4o"]}',
    "model-null": '{"model":null}',
    "nested-model": '{"messages":{"model":"x"},"model":"y"}',
    "allowances": '{"max_output_tokens":5,"max_tokens":-1,"max_completion_tokens":2.0}',
    "bom": '\ufeff{"model":"gpt-4o"}',
    "array": '[{"model":"gpt-4o"}]',
    "trailing": '{"model":"gpt-4o"} {"model":"o1"}',
    "whitespace": " \r\n\t",
    "deep": '{"x":' + "[" * 200 + "]" * 200 + ',"model":"gpt-4o"}',
    "big-number": '{"max_tokens":18446744073709551616,"model":"a"}',
    "lone-surrogate": '{"x":"\\ud800","model":"a"}',
    "invalid-utf8-ignored": b'{"x":"\xff","model":"a"}',
})

def form(boundary, parts, end="--{b}--\r\n"):
    out = ""
    for head, value in parts:
        out += f"--{boundary}\r\n{head}\r\n\r\n{value}\r\n"
    return out + end.format(b=boundary)

MP = "multipart/form-data; boundary=XyZ"
write("body_form", {
    "multipart": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="model"', "gpt-4o-mini"),
                                          ('Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav', "RIFF")]),
    "multipart-twice": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="model"', "a"),
                                                ('Content-Disposition: form-data; name=MODEL', "b")]),
    "multipart-encoded-name": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="mod%65l"', "b")]),
    "multipart-quoted-semicolon": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="x;name=model"', "b")]),
    "multipart-name-star": MP + "\n" + form("XyZ", [("Content-Disposition: form-data; name*=utf-8''model", "b")]),
    "multipart-quoted-boundary": 'multipart/form-data; boundary="a\'()+_,-./:=? b"\n'
        + form("a'()+_,-./:=? b", [('Content-Disposition: form-data; name="model"', "gpt-4o")]),
    "multipart-boundary-inside": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="prompt"', "x--XyZ")]),
    "multipart-lf": MP + "\n--XyZ\nContent-Disposition: form-data; name=\"model\"\n\ngpt-4o\n--XyZ--\n",
    "multipart-preamble": MP + "\npre\r\n" + form("XyZ", [('Content-Disposition: form-data; name="model"', "a")]),
    "multipart-epilogue": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="model"', "a")])
        + "--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nb\r\n--XyZ--",
    "multipart-transfer-encoding": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="model"\r\nContent-Transfer-Encoding: base64', "Z3B0LTRv")]),
    "multipart-charset": MP + "\n" + form("XyZ", [('Content-Disposition: form-data; name="model"\r\nContent-Type: text/plain; charset=utf-16', "a")]),
    "urlencoded": "application/x-www-form-urlencoded\nmodel=gpt-4o&prompt=hi+there",
    "urlencoded-twice": "application/x-www-form-urlencoded\nmodel=a&MODEL=b",
    "urlencoded-semicolon": "application/x-www-form-urlencoded\nprompt=x;model=a",
    "urlencoded-semicolon-value": "application/x-www-form-urlencoded\nmodel=gpt-4o-mini;gpt-4o",
    "urlencoded-encoded-name": "application/x-www-form-urlencoded\n%6Dodel=a%2Db",
    "urlencoded-json": "application/x-www-form-urlencoded\n{\"model\":\"a\"}",
    "text-json": "text/plain\n\ufeff {\"model\":\"a\"}",
    "no-type-json": "\n[1]",
    "sdp": "application/sdp\nv=0\r\no=- 0 0 IN IP4 127.0.0.1",
    "json-type": "application/json; charset=utf-8\n{\"model\":\"a\",\"stream\":true}",
    "two-params": "multipart/form-data; boundary=a; BOUNDARY=b\n--a--",
})

chunk = 'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}'
usage = 'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}'
azure_first = 'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}'
azure_chunk = 'data: {"choices":[{"index":0,"delta":{"content":"x"},"content_filter_results":{"hate":{"filtered":false}}}],"usage":null}'
responses = ('event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
             'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":7,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":3}}}}\n\n')
json_answer = '{"object":"chat.completion","choices":[{"message":{"content":"hi"},"content_filter_results":{}}],"prompt_filter_results":[],"usage":{"prompt_tokens":8,"completion_tokens":2}}'
write("usage_tap", {
    "sse-usage": "\x01\x05" + f"{chunk}\n\n{usage}\n\ndata: [DONE]\n\n",
    "sse-strip-usage": "\x03\x11" + f"{chunk}\n\n{usage}\n\ndata: [DONE]\n\n",
    "sse-crlf": "\x03\x02" + f"{chunk}\r\n\r\n{usage}\r\n\r\ndata: [DONE]\r\n\r\n",
    "sse-azure": "\x07\x09" + f"{azure_first}\n\n{azure_chunk}\n\n{usage}\n\ndata: [DONE]\n\n",
    "sse-responses": "\x01\x00" + responses,
    "sse-no-final-blank-line": "\x03\x04" + f"{chunk}\n\n{usage}",
    "sse-multiline-data": "\x01\x01" + 'data: {"choices":[],\ndata: "usage":{"input_tokens":1}}\n\n',
    "json-usage": "\x00\x03" + json_answer,
    "json-azure": "\x04\x03" + json_answer,
    "json-duplicate-usage": "\x00\x00" + '{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}',
    "json-odd-counts": "\x00\x07" + '{"usage":{"prompt_tokens":1.5,"completion_tokens":"3","input_tokens":4}}',
    "json-array": "\x00\x00" + '[{"prompt_tokens":5}]',
    "json-embeddings": "\x00\x08" + '{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}',
})

example = (pathlib.Path(__file__).resolve().parent.parent / "keygate.example.toml").read_text()
write("config", {
    "example": example,
    "empty": "",
    "upstream-url": '[upstream]\nurl = "http://127.0.0.1:8000/v1/"\n',
    "azure-upstream": '[upstream]\nkind = "azure"\nurl = "https://x.openai.azure.com"\napi_version = "2024-10-21"\n[upstream.deployments]\n"gpt-4o" = "prod"\n',
    "routed": '[[upstreams]]\nname = "v"\nurl = "http://127.0.0.1:8000/v1"\napi_key_env = "VLLM_API_KEY"\nmodels = ["llama-*"]\n',
    "routed-no-models": '[[upstreams]]\nname = "v"\nurl = "http://h/v1"\nmodels = []\n',
    "missing-env": '[upstream]\napi_key_env = "NOPE"\n',
    "redis": '[redis]\nurl = "redis://:hunter2pass@127.0.0.1:6379"\non_failure = "closed"\n',
    "redis-bad-scheme": '[redis]\nurl = "valkey://:hunter2pass@127.0.0.1:6379"\n',
    "database-bad-scheme": '[database]\nurl = "mysql://root:hunter2pass@db/keygate"\n',
    "upstream-bad-scheme": '[upstream]\nurl = "ftp://user:hunter2pass@host/v1"\n',
    "webhook-bad": '[anomaly]\nwebhook_url = "ftp://u:hunter2pass@h/x"\n',
    "prices": '[prices."gpt-4o"]\ninput = 2.5\noutput = 10.0\n[prices."x"]\ninput = -1.0\n',
    "limits": '[server]\nmax_body_bytes = 0\n',
    "timeouts": '[server]\nheader_read_timeout_ms = 99\n',
    "unknown-field": '[server]\nlisten2 = "x"\n',
    "bad-toml": '[server\nlisten = "127.0.0.1:1"\n',
    "trusted-proxies": '[server]\ntrusted_proxies = ["10.0.0.0/8", "::1", "nope"]\n',
    "organization": '[organization]\nid = "org-\u00e9"\n',
    "anomaly": '[anomaly]\nwindow_seconds = 61\nspike_factor = 1.4\n',
    "retention": '[retention]\ndenials_days = 0\n',
})
