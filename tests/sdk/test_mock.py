"""The built-in mock upstream (`--upstream mock`, the default with nothing
configured) through keygate, driven by the official SDK's helpers: the
Responses stream helper, tool calls, JSON mode, structured outputs, and
OpenAI's 404 for a model it does not know."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from enum import Enum
from typing import List, Optional

import openai
import pytest
from pydantic import BaseModel, Field

from conftest import Gateway
from test_node_sdk import NODE_DIR, NODE_TIMEOUT_S, require_node_sdk

ANSWER = "This is a synthetic answer from the keygate mock upstream."
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
DOCUMENTED_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "text-embedding-3-small",
                     "text-embedding-3-large", "whisper-1", "tts-1", "dall-e-3", "omni-moderation-latest"]


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class GetWeather(BaseModel):
    """Current weather for a city."""

    city: str
    unit: Unit
    days: int = Field(ge=1, le=7)


class Address(BaseModel):
    street: str
    zip: Optional[str]


class Person(BaseModel):
    name: str
    age: int
    height_m: float
    active: bool
    born: dt.date
    seen: dt.datetime
    unit: Unit
    tags: List[str]
    home: Address
    previous: List[Address]
    nickname: Optional[str]


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMETERS, "strict": True}]


@pytest.fixture(scope="module")
def mock_gateway(tmp_path_factory):
    """One keygate on the built-in mock for the module (the tests change nothing)."""
    gw = Gateway(tmp_path_factory.mktemp("keygate-mock"), "mock", upstream_secret=None).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(mock_gateway) -> openai.OpenAI:
    return mock_gateway.client(mock_gateway.create_key("mock-tests")["value"])


# --- models -------------------------------------------------------------------


def test_the_mock_lists_its_documented_models(client):
    listed = [m.id for m in client.models.list().data]
    assert set(DOCUMENTED_MODELS) <= set(listed), listed
    assert client.models.retrieve("gpt-4.1-mini").id == "gpt-4.1-mini"


@pytest.mark.parametrize("call", ["chat", "responses", "embeddings", "retrieve"])
def test_an_unknown_model_is_not_found_as_openai_says_it(client, call):
    with pytest.raises(openai.NotFoundError) as caught:
        if call == "chat":
            client.chat.completions.create(model="gpt-9", messages=MESSAGES)
        elif call == "responses":
            client.responses.create(model="gpt-9", input="hi")
        elif call == "embeddings":
            client.embeddings.create(model="gpt-9", input="hi")
        else:
            client.models.retrieve("gpt-9")
    e = caught.value
    assert e.status_code == 404
    assert (e.code, e.type, e.param) == ("model_not_found", "invalid_request_error", None)
    assert e.body["message"] == "The model `gpt-9` does not exist or you do not have access to it."


# --- Responses API ------------------------------------------------------------


def test_the_responses_stream_helper_accumulates_the_answer(client):
    with client.responses.stream(model="gpt-4o-mini", input="one two three four") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], kinds
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"], kinds
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == ANSWER
    assert deltas[-1].snapshot == ANSWER  # the helper's running text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.output_text == ANSWER
    assert final.output[0].type == "message" and final.output[0].id == deltas[0].item_id
    assert final.usage.input_tokens == 4 and final.usage.output_tokens == 10


def test_a_response_without_streaming(client):
    r = client.responses.create(model="gpt-4o", input="Say hello", instructions="Be brief.")
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == ANSWER
    assert r.instructions == "Be brief."
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_a_streamed_responses_tool_call_through_the_helper(client):
    with client.responses.stream(model="gpt-4o", input="Weather in Paris?",
                                 tools=[openai.pydantic_responses_function_tool(GetWeather)]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and "response.output_text.delta" not in kinds, kinds
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    call = final.output[0]
    assert call.type == "function_call" and call.name == "GetWeather" and call.status == "completed"
    assert deltas[-1].snapshot == call.arguments
    assert isinstance(call.parsed_arguments, GetWeather), call
    assert call.parsed_arguments.unit is Unit.celsius and 1 <= call.parsed_arguments.days <= 7


def test_a_responses_tool_call_then_the_tool_result(client):
    first = client.responses.create(model="gpt-4o", input="Weather in Paris?", tools=RESPONSES_TOOLS)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city", "unit"}
    assert first.tools[0].name == "get_weather"  # the request's tools are echoed
    follow_up = client.responses.create(
        model="gpt-4o",
        tools=RESPONSES_TOOLS,
        input=[{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}],
    )
    assert follow_up.output_text == ANSWER, "after a tool's output the model answers in text"


def test_responses_structured_output(client):
    r = client.responses.parse(model="gpt-4o", input="Describe someone.", text_format=Person)
    assert isinstance(r.output_parsed, Person), r.output_text
    assert r.output_parsed.home.street and r.output_parsed.previous


# --- chat completions ---------------------------------------------------------


def test_a_chat_tool_call(client):
    c = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=CHAT_TOOLS)
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "unit": "celsius"}


def test_a_chat_tool_call_is_chosen_or_refused_by_tool_choice(client):
    tools = CHAT_TOOLS + [{"type": "function", "function": {"name": "noop"}}]
    forced = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools,
                                            tool_choice={"type": "function", "function": {"name": "noop"}})
    assert forced.choices[0].message.tool_calls[0].function.name == "noop"
    assert forced.choices[0].message.tool_calls[0].function.arguments == "{}"
    none = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools, tool_choice="none")
    assert none.choices[0].message.content == ANSWER and none.choices[0].message.tool_calls is None


def test_a_streamed_chat_tool_call_through_the_helper(client):
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES,
                                        tools=[openai.pydantic_function_tool(GetWeather)]) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) > 1
    (done,) = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert done.name == "GetWeather" and isinstance(done.parsed_arguments, GetWeather)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.parsed_arguments == done.parsed_arguments


def test_a_raw_chat_stream_splits_the_arguments(client):
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=CHAT_TOOLS, stream=True))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.tool_calls[0].id and first.tool_calls[0].function.name == "get_weather"
    pieces = [c.choices[0].delta.tool_calls[0].function.arguments for c in chunks[1:-1]]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == {"city": "mock", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_after_the_tool_result_the_chat_answers_in_text(client):
    call = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=CHAT_TOOLS).choices[0].message
    messages = MESSAGES + [call.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": '{"celsius": 21}'}]
    answer = client.chat.completions.create(model="gpt-4o", messages=messages, tools=CHAT_TOOLS)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content == ANSWER


def test_json_mode_answers_a_json_object(client):
    c = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Answer in JSON."}],
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(c.choices[0].message.content), dict)


def test_structured_outputs_parse_into_the_pydantic_model(client):
    c = client.chat.completions.parse(model="gpt-4o", messages=[{"role": "user", "content": "Describe someone."}],
                                      response_format=Person)
    person = c.choices[0].message.parsed
    assert isinstance(person, Person), c.choices[0].message.content
    assert person.unit is Unit.celsius and person.tags and person.home.street


def test_structured_outputs_stream_through_the_helper(client):
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "Describe someone."}],
                                        response_format=Person) as stream:
        pieces = [e for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(pieces) > 1
    assert isinstance(final.choices[0].message.parsed, Person)


# --- the Node SDK -------------------------------------------------------------


def test_the_node_sdk_helpers(mock_gateway):
    """tests/sdk/node/mock.test.mjs: the Node SDK's Responses stream helper, tool
    calls and NotFoundError against the mock."""
    require_node_sdk()
    key = mock_gateway.create_key("node-mock")["value"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGATE_", "OPENAI_", "NODE_OPTIONS"))}
    env.update(KEYGATE_URL=mock_gateway.url, KEYGATE_TEST_KEY=key, NO_COLOR="1")
    p = subprocess.run(["node", "--test", "--test-reporter=spec", "mock.test.mjs"], cwd=NODE_DIR, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    output = f"{p.stdout}\n{p.stderr}"
    assert p.returncode == 0, f"node --test exited with {p.returncode}:\n{output}"
    assert "\u2139 pass 4" in output or "# pass 4" in output, output
