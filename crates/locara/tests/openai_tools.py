"""The official openai client against a Locara daemon: tool calling. A forced
call (a named function, whole) whose arguments validate with the jsonschema
package against the function's schema; a required call streamed as OpenAI's
tool_calls deltas and put back together; a round trip in which the call and
its result go back into the conversation and the model answers in text; an
auto choice that gives text or a well-formed call; and the 400 for a schema
keyword Locara cannot enforce in a function's parameters.
Usage: openai_tools.py BASE_URL MODEL TOKEN.
Prints one "... ok" line per part, or fails with the reason."""

import json
import sys

import jsonschema
from openai import BadRequestError, OpenAI

base_url, model, token = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=300)

weather = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
clock = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
schemas = {"get_weather": weather, "get_time": clock}
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": weather,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a time zone.",
            "parameters": clock,
        },
    },
]
question = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def ask(messages, **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 120)
    return client.chat.completions.create(
        model=model, messages=messages, tools=tools, **kwargs
    )


# A named function: always a well-formed call whose arguments validate.
r = ask(question, tool_choice={"type": "function", "function": {"name": "get_weather"}})
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", r
assert choice.message.content is None, r
(call,) = choice.message.tool_calls
assert call.type == "function" and call.id.startswith("call_"), call
assert call.function.name == "get_weather", call
arguments = json.loads(call.function.arguments)
jsonschema.validate(arguments, weather)
print("forced call ok:", call.function.arguments)

# required, streamed, one call: deltas put back together as OpenAI's
# clients do (index, id and name first, then argument fragments).
stream = ask(question, tool_choice="required", parallel_tool_calls=False, stream=True)
calls, finish, content = {}, None, ""
for chunk in stream:
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    content += delta.content or ""
    for d in delta.tool_calls or []:
        entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
        if d.id:
            assert entry["id"] is None, "the id came twice"
            entry["id"] = d.id
        if d.function and d.function.name:
            entry["name"] = d.function.name
        if d.function and d.function.arguments:
            assert entry["name"], "arguments before the name"
            entry["arguments"] += d.function.arguments
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls", finish
assert content == "", content
assert list(calls) == [0], calls
streamed = calls[0]
assert streamed["id"].startswith("call_"), streamed
jsonschema.validate(json.loads(streamed["arguments"]), schemas[streamed["name"]])
print("streamed call ok:", streamed["name"], streamed["arguments"])

# A round trip: the call and its result go back, the model answers in text.
result = {"city": arguments["city"], "temperature": 21, "unit": "celsius", "sky": "sunny"}
conversation = question + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
]
r2 = ask(conversation, tool_choice="none", max_tokens=60)
alone = ask(question, tool_choice="none", max_tokens=1)
answer = r2.choices[0]
assert answer.message.tool_calls is None, answer
assert answer.message.content, answer
assert answer.finish_reason in ("stop", "length"), answer
# The call and its result were in the prompt (about 50 tokens of them).
assert r2.usage.prompt_tokens > alone.usage.prompt_tokens + 30, (r2.usage, alone.usage)
print("round trip ok:", json.dumps(answer.message.content))

# auto, after the result: text or a well-formed call, whichever the model
# chooses.
r3 = ask(conversation, max_tokens=60).choices[0]
if r3.message.tool_calls:
    assert r3.finish_reason in ("tool_calls", "length"), r3
    if r3.finish_reason == "tool_calls":
        for c in r3.message.tool_calls:
            jsonschema.validate(json.loads(c.function.arguments), schemas[c.function.name])
    print("auto ok: a call", r3.message.tool_calls[0].function.name)
else:
    assert r3.message.content, r3
    assert not r3.message.content.startswith("<tool_call>"), r3
    print("auto ok: text", json.dumps(r3.message.content))

# A keyword Locara cannot enforce in a function's parameters: a 400 naming it.
bad = [
    {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"day": {"type": "string", "format": "date"}},
            },
        },
    }
]
try:
    client.chat.completions.create(model=model, messages=question, tools=bad)
    raise AssertionError("a format keyword was accepted")
except BadRequestError as e:
    assert e.status_code == 400, e
    body = e.body if isinstance(e.body, dict) else {}
    assert body.get("param") == "tools[0].function.parameters.properties.day", e.body
    print("refusal ok:", body.get("message"))
