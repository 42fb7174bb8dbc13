"""A mock OpenAI upstream for keygate's SDK tests, standard library only.

It runs in-process on 127.0.0.1 (port 0 by default), records every request it
receives, and answers with deterministic OpenAI-shaped bodies whose token
counts are the constants below, so tests can assert exact values.

Endpoints:
  GET  /v1/models, /v1/models/{id}
  POST /v1/chat/completions   (JSON, or SSE when "stream": true)
  POST /v1/completions
  POST /v1/embeddings         (base64 little-endian float32, or a float list)
  POST /v1/responses          (JSON, or SSE with `event:` lines)
Azure OpenAI routes (what an Azure upstream of keygate calls), answered in
Azure's shape: `prompt_filter_results`, per-choice `content_filter_results`,
and in streams a filter-only first chunk (`choices: []`) and
`"content_filter_results": {}` on the role chunk:
  POST /openai/deployments/{deployment}/chat/completions?api-version=V
  POST /openai/deployments/{deployment}/embeddings?api-version=V
A missing `api-version` gets Azure's 404 "Resource not found".
Anything else gets an OpenAI-shaped 404 "Invalid URL (...)".

Special models (chat/completions/responses/embeddings):
  "trigger-400"   -> 400 invalid_request_error with TRIGGER_400_MESSAGE
  "trigger-slow"  -> waits SLOW_SECONDS before answering (timeout tests)
  "gated-stream"  -> (chat, stream) sends the first content chunk, then waits
                     for `MockUpstream.release` (at most GATE_SECONDS) before
                     sending the rest; records whether it was released.

Every response carries `x-request-id: upstream-<n>`.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CREATED = 1_700_000_000

MODELS = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]

# Chat completions.
CHAT_ID = "chatcmpl-mock123"
CHAT_CONTENT = "Hello from the mock upstream!"
CHAT_STREAM_PIECES = ["Hello", " from", " the", " mock", " upstream!"]
CHAT_PROMPT_TOKENS = 11
CHAT_COMPLETION_TOKENS = 7
CHAT_TOTAL_TOKENS = CHAT_PROMPT_TOKENS + CHAT_COMPLETION_TOKENS

# Legacy completions.
COMPLETION_TEXT = " a mock completion."
COMPLETION_PROMPT_TOKENS = 5
COMPLETION_COMPLETION_TOKENS = 4
COMPLETION_TOTAL_TOKENS = COMPLETION_PROMPT_TOKENS + COMPLETION_COMPLETION_TOKENS

# Embeddings: values exactly representable in float32.
EMBEDDING = [0.5, -0.25, 0.125, 1.0, -2.0, 0.0625]
EMBEDDING_TOKENS_PER_INPUT = 3

# Responses API.
RESPONSE_ID = "resp_mock123"
RESPONSE_MESSAGE_ID = "msg_mock123"
RESPONSE_TEXT = "Hello from responses!"
RESPONSE_PIECES = ["Hello", " from", " responses!"]
RESPONSE_INPUT_TOKENS = 13
RESPONSE_OUTPUT_TOKENS = 6
RESPONSE_TOTAL_TOKENS = RESPONSE_INPUT_TOKENS + RESPONSE_OUTPUT_TOKENS

# Azure OpenAI routes: the answer names the deployment it was sent to.
AZURE_CHAT_TEMPLATE = "Hello from Azure deployment {deployment}!"
AZURE_STREAM_PIECES = ["Hello", " from", " Azure", " deployment", " {deployment}!"]
AZURE_FILTERS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
AZURE_RESOURCE_NOT_FOUND = b'{"error":{"code":"404","message": "Resource not found"}}'

TRIGGER_400_MODEL = "trigger-400"
TRIGGER_400_MESSAGE = "The mock upstream refuses model `trigger-400` (on purpose)."
TRIGGER_400_CODE = "mock_refused"
SLOW_MODEL = "trigger-slow"
SLOW_SECONDS = 3.0
GATED_STREAM_MODEL = "gated-stream"
GATE_SECONDS = 5.0


AZURE_CHAT_ID = "chatcmpl-azure123"
_AZURE_ROUTE = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/(?P<operation>chat/completions|embeddings)")


@dataclass
class RecordedRequest:
    method: str
    path: str  # including the query string
    headers: dict[str, str]  # lower-cased names; repeated headers joined by ", "
    header_items: list[tuple[str, str]]  # raw (name, value) pairs as received
    body: bytes
    request_id: str = ""  # the x-request-id this mock answered with
    response_status: int = 0
    response_body: bytes = b""  # what the mock sent (SSE bytes for streams)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _error(message: str, type_: str = "invalid_request_error", param: Any = None, code: Any = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def chat_usage() -> dict:
    return {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": CHAT_COMPLETION_TOKENS,
        "total_tokens": CHAT_TOTAL_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def response_usage() -> dict:
    return {
        "input_tokens": RESPONSE_INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": RESPONSE_OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": RESPONSE_TOTAL_TOKENS,
    }


def response_object(model: str, status: str, text: str | None, usage: dict | None) -> dict:
    output = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": RESPONSE_MESSAGE_ID,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        )
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # Silence the default stderr access log.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # --- plumbing -------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, then the blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self) -> RecordedRequest:
        body = self._read_body()
        items = [(k, v) for k, v in self.headers.items()]
        headers: dict[str, str] = {}
        for k, v in items:
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=headers,
            header_items=items,
            body=body,
            request_id=self.server.owner._next_request_id(),
        )
        self.server.owner._append(rec)
        return rec

    def _send_json(self, rec: RecordedRequest, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        rec.response_status = status
        rec.response_body = data
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", rec.request_id)
        self.send_header("openai-processing-ms", "7")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_sse(self, rec: RecordedRequest) -> None:
        rec.response_status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", rec.request_id)
        self.end_headers()
        self.wfile.flush()

    def _sse_write(self, rec: RecordedRequest, event: bytes) -> None:
        rec.response_body += event
        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.flush()

    def _end_sse(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json_body(self, rec: RecordedRequest) -> dict | None:
        try:
            obj = json.loads(rec.body or b"null")
        except ValueError:
            self._send_json(rec, 400, _error("We could not parse the JSON body of your request. (mock)"))
            return None
        if not isinstance(obj, dict):
            self._send_json(rec, 400, _error("The body must be a JSON object. (mock)"))
            return None
        return obj

    def _special_model(self, rec: RecordedRequest, body: dict) -> bool:
        """Handle the trigger models; True when a response was sent."""
        model = body.get("model")
        if model == TRIGGER_400_MODEL:
            self._send_json(rec, 400, _error(TRIGGER_400_MESSAGE, param="model", code=TRIGGER_400_CODE))
            return True
        if model == SLOW_MODEL:
            time.sleep(SLOW_SECONDS)
        return False

    # --- routing --------------------------------------------------------

    def _admitted(self, rec: RecordedRequest) -> bool:
        """As a provider checks its own key: with `expected_key` set, any other
        credential gets OpenAI's 401; `delay_seconds` slows every answer."""
        owner = self.server.owner
        if owner.delay_seconds:
            time.sleep(owner.delay_seconds)
        if owner.expected_key is None or rec.headers.get("authorization") == f"Bearer {owner.expected_key}":
            return True
        self._send_json(
            rec,
            401,
            _error(
                "Incorrect API key provided: sk-wrong. You can find your API key at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            ),
        )
        return False

    def do_GET(self) -> None:  # noqa: N802
        rec = self._record()
        if not self._admitted(rec):
            return
        path = urlsplit(self.path).path
        if path == "/v1/models":
            data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "openai"} for m in MODELS]
            self._send_json(rec, 200, {"object": "list", "data": data})
        elif path.startswith("/v1/models/"):
            model = path[len("/v1/models/"):]
            if model in MODELS:
                self._send_json(rec, 200, {"id": model, "object": "model", "created": CREATED, "owned_by": "openai"})
            else:
                self._send_json(
                    rec,
                    404,
                    _error(
                        f"The model `{model}` does not exist or you do not have access to it.",
                        param=None,
                        code="model_not_found",
                    ),
                )
        else:
            self._not_found(rec)

    def do_POST(self) -> None:  # noqa: N802
        rec = self._record()
        if not self._admitted(rec):
            return
        path = urlsplit(self.path).path
        azure = _AZURE_ROUTE.fullmatch(path)
        if azure is not None:
            self._azure(rec, azure.group("deployment"), azure.group("operation"))
            return
        if path.endswith("/cancel"):
            # The SDKs' bodiless cancel calls: answered with the object's id and
            # a cancelling status (the SDK builds its type without validating).
            object_id = path.rsplit("/", 2)[-2]
            self._send_json(rec, 200, {"id": object_id, "status": "cancelling", "object": "cancelled"})
            return
        route = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }.get(path)
        if route is None:
            self._not_found(rec)
            return
        body = self._json_body(rec)
        if body is None or self._special_model(rec, body):
            return
        route(rec, body)

    def do_DELETE(self) -> None:  # noqa: N802
        self._not_found(self._record())

    do_PUT = do_DELETE
    do_PATCH = do_DELETE

    def _not_found(self, rec: RecordedRequest) -> None:
        self._send_json(rec, 404, _error(f"Invalid URL ({rec.method} {urlsplit(rec.path).path})"))

    # --- Azure OpenAI ---------------------------------------------------

    def _azure(self, rec: RecordedRequest, deployment: str, operation: str) -> None:
        if not parse_qs(urlsplit(rec.path).query).get("api-version"):
            rec.response_status = 404
            rec.response_body = AZURE_RESOURCE_NOT_FOUND
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(AZURE_RESOURCE_NOT_FOUND)))
            self.end_headers()
            self.wfile.write(AZURE_RESOURCE_NOT_FOUND)
            self.wfile.flush()
            return
        body = self._json_body(rec)
        if body is None:
            return
        if operation == "embeddings":
            self._azure_embeddings(rec, deployment, body)
        else:
            self._azure_chat(rec, deployment, body)

    def _azure_chat(self, rec: RecordedRequest, deployment: str, body: dict) -> None:
        # Azure reports the model behind the deployment, not the deployment.
        model = "gpt-4o-2024-08-06"
        if not body.get("stream"):
            self._send_json(
                rec,
                200,
                {
                    "id": AZURE_CHAT_ID,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": AZURE_FILTERS}],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "logprobs": None,
                            "message": {
                                "role": "assistant",
                                "content": AZURE_CHAT_TEMPLATE.format(deployment=deployment),
                                "refusal": None,
                            },
                            "content_filter_results": AZURE_FILTERS,
                        }
                    ],
                    "usage": chat_usage(),
                    "system_fingerprint": "fp_azure",
                },
            )
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(obj: dict) -> bytes:
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        def chunk(choices: list, **extra: Any) -> dict:
            return {
                "id": AZURE_CHAT_ID,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": "fp_azure",
                "choices": choices,
                **extra,
            }

        def choice(d: dict, filters: dict, finish: Any = None) -> list:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish, "content_filter_results": filters}]

        self._start_sse(rec)
        # Azure's first event carries only the prompt's filter results.
        self._sse_write(
            rec,
            event(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": AZURE_FILTERS}],
                }
            ),
        )
        self._sse_write(rec, event(chunk(choice({"role": "assistant", "content": "", "refusal": None}, {}))))
        for piece in AZURE_STREAM_PIECES:
            self._sse_write(rec, event(chunk(choice({"content": piece.format(deployment=deployment)}, AZURE_FILTERS))))
        self._sse_write(rec, event(chunk(choice({}, {}, "stop"))))
        if include_usage:
            self._sse_write(rec, event(chunk([], usage=chat_usage())))
        self._sse_write(rec, b"data: [DONE]\n\n")
        self._end_sse()

    def _azure_embeddings(self, rec: RecordedRequest, deployment: str, body: dict) -> None:
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        if body.get("encoding_format") == "base64":
            vector: Any = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        else:
            vector = list(EMBEDDING)
        tokens = EMBEDDING_TOKENS_PER_INPUT * n
        self._send_json(
            rec,
            200,
            {
                "object": "list",
                "data": [{"object": "embedding", "embedding": vector, "index": i} for i in range(n)],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    # --- endpoints ------------------------------------------------------

    def _chat(self, rec: RecordedRequest, body: dict) -> None:
        model = body.get("model", "gpt-4o")
        if not body.get("stream"):
            self._send_json(
                rec,
                200,
                {
                    "id": CHAT_ID,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": CHAT_CONTENT, "refusal": None, "annotations": []},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": chat_usage(),
                    "service_tier": "default",
                    "system_fingerprint": "fp_mock",
                },
            )
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list, usage: Any = None) -> bytes:
            obj = {
                "id": CHAT_ID,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        def delta(d: dict, finish: Any = None) -> list:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

        self._start_sse(rec)
        self._sse_write(rec, chunk(delta({"role": "assistant", "content": ""})))
        for i, piece in enumerate(CHAT_STREAM_PIECES):
            self._sse_write(rec, chunk(delta({"content": piece})))
            if i == 0 and model == GATED_STREAM_MODEL:
                released = self.server.owner.release.wait(GATE_SECONDS)
                self.server.owner.gate_results.append(released)
        self._sse_write(rec, chunk(delta({}, "stop")))
        if include_usage:
            self._sse_write(rec, chunk([], chat_usage()))
        self._sse_write(rec, b"data: [DONE]\n\n")
        self._end_sse()

    def _completions(self, rec: RecordedRequest, body: dict) -> None:
        self._send_json(
            rec,
            200,
            {
                "id": "cmpl-mock123",
                "object": "text_completion",
                "created": CREATED,
                "model": body.get("model", "gpt-3.5-turbo-instruct"),
                "choices": [{"text": COMPLETION_TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": COMPLETION_PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_COMPLETION_TOKENS,
                    "total_tokens": COMPLETION_TOTAL_TOKENS,
                },
            },
        )

    def _embeddings(self, rec: RecordedRequest, body: dict) -> None:
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        if body.get("encoding_format") == "base64":
            vector: Any = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        else:
            vector = list(EMBEDDING)
        tokens = EMBEDDING_TOKENS_PER_INPUT * n
        self._send_json(
            rec,
            200,
            {
                "object": "list",
                "data": [{"object": "embedding", "embedding": vector, "index": i} for i in range(n)],
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _responses(self, rec: RecordedRequest, body: dict) -> None:
        model = body.get("model", "gpt-4o")
        if not body.get("stream"):
            self._send_json(rec, 200, response_object(model, "completed", RESPONSE_TEXT, response_usage()))
            return
        seq = 0

        def event(type_: str, payload: dict) -> bytes:
            nonlocal seq
            obj = {"type": type_, **payload, "sequence_number": seq}
            seq += 1
            return f"event: {type_}\ndata: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()

        self._start_sse(rec)
        self._sse_write(rec, event("response.created", {"response": response_object(model, "in_progress", None, None)}))
        for piece in RESPONSE_PIECES:
            self._sse_write(
                rec,
                event(
                    "response.output_text.delta",
                    {"item_id": RESPONSE_MESSAGE_ID, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []},
                ),
            )
        self._sse_write(
            rec,
            event("response.completed", {"response": response_object(model, "completed", RESPONSE_TEXT, response_usage())}),
        )
        self._end_sse()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "MockUpstream"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that hangs up mid-stream (a cancelled request) is expected; stay quiet.
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@dataclass
class MockUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    _requests: list[RecordedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    gate_results: list[bool] = field(default_factory=list)
    # A provider's own key check (None: any credential), and a slow provider.
    expected_key: str | None = None
    delay_seconds: float = 0.0

    def start(self) -> "MockUpstream":
        self._server = _Server((self.host, self.port), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        """Base URL including /v1, as keygate's --upstream expects."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The bare origin: an Azure upstream's `url` (keygate appends /openai/...)."""
        return f"http://{self.host}:{self.port}"

    def _next_request_id(self) -> str:
        with self._lock:
            self._counter += 1
            return f"upstream-{self._counter}"

    def _append(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(rec)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
        self.release.clear()
        self.gate_results.clear()

    def last(self, path_prefix: str = "") -> RecordedRequest:
        matching = [r for r in self.requests if r.path.startswith(path_prefix)]
        assert matching, f"the mock upstream received no request under {path_prefix!r}"
        return matching[-1]


if __name__ == "__main__":  # manual use: python mock_upstream.py [port]
    import sys

    mock = MockUpstream(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"mock upstream at {mock.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        mock.stop()
