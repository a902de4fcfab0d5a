"""The official ollama Python client against a Locara daemon: structured
output through `format` (a JSON Schema, validated with the jsonschema
package, and "json") and tool calling through `tools` (Ollama has no
tool_choice: the model chooses, and a call must be well-formed, its
arguments valid against the function's schema), then a round trip with a
call and its result in the history, in the client's own shapes. Usage: ollama_tools.py HOST MODEL TOKEN. Prints one "... ok"
line per part, or fails with the reason."""

import json
import sys

import jsonschema
import ollama

host, model, token = sys.argv[1], sys.argv[2], sys.argv[3]
client = ollama.Client(host=host, headers={"Authorization": f"Bearer {token}"}, timeout=300)
options = {"temperature": 0, "num_predict": 120, "seed": 1}

# format: a schema. The answer parses and validates, whole and streamed.
person = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 30},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ask = [{"role": "user", "content": "Describe Ann, 31, who lives in Lyon, as JSON."}]
r = client.chat(model=model, messages=ask, format=person, options=options)
assert r.done_reason == "stop", r
answer = json.loads(r.message.content)
jsonschema.validate(answer, person)
pieces = [p.message.content or "" for p in client.chat(model=model, messages=ask, format=person, options=options, stream=True)]
jsonschema.validate(json.loads("".join(pieces)), person)
print("format schema ok:", json.dumps(answer))

# format "json": any JSON object, through /api/generate.
g = client.generate(
    model=model,
    prompt='What colour is the sky? Answer as JSON: {"colour": ...}',
    format="json",
    options=options,
)
assert g.done_reason == "stop", g
assert isinstance(json.loads(g.response), dict), g.response
print("format json ok:", g.response)

weather = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": weather,
        },
    }
]

# tools: Ollama has no tool_choice, so the model chooses (the test models,
# 135M and 270M parameters, answer in text); whichever it chooses, a call
# is well-formed and its arguments valid, text is text.
question = [{"role": "user", "content": "Call get_weather for Paris, please."}]
r = client.chat(model=model, messages=question, tools=tools, options=options)
if r.message.tool_calls:
    for call in r.message.tool_calls:
        assert call.function.name == "get_weather", call
        jsonschema.validate(dict(call.function.arguments), weather)
    print("tools ok: a call", json.dumps(dict(r.message.tool_calls[0].function.arguments)))
else:
    assert r.message.content and not r.message.content.startswith("<tool_call>"), r
    print("tools ok: text", json.dumps(r.message.content[:60]))

# A call and its result in the history, as the client sends them (arguments
# an object, the result with tool_name): the model answers after them.
called = ollama.Message(
    role="assistant",
    content="",
    tool_calls=[
        ollama.Message.ToolCall(
            function=ollama.Message.ToolCall.Function(
                name="get_weather", arguments={"city": "Paris", "unit": "celsius"}
            )
        )
    ],
)
result = {"role": "tool", "tool_name": "get_weather", "content": json.dumps({"temperature": 21, "sky": "sunny"})}
alone = client.chat(model=model, messages=question, options={**options, "num_predict": 1})
final = client.chat(model=model, messages=question + [called, result], tools=tools, options=options)
assert final.done, final
assert final.message.content or final.message.tool_calls, final
# The call and the result were in the prompt.
assert final.prompt_eval_count > alone.prompt_eval_count + 30, (final.prompt_eval_count, alone.prompt_eval_count)
print("round trip ok:", json.dumps(final.message.content or "a call"))
