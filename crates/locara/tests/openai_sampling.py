"""The official openai client against a Locara daemon: structured output
(json_schema, validated with the jsonschema package; json_object; a Pydantic
model through the client's own parse()), log-probabilities (chat, streamed
and whole, and the legacy completions shape), the frequency and presence
penalties changing a greedy answer, and the refusal of a schema keyword
Locara cannot enforce. Usage: openai_sampling.py BASE_URL MODEL TOKEN.
Prints one "... ok" line per part, or fails with the reason."""

import json
import sys

import jsonschema
import pydantic
from openai import BadRequestError, OpenAI

base_url, model, token = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=300)


def ask(text, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs
    )


# json_schema: the answer parses and validates.
schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer"},
        "pets": {
            "type": "array",
            "items": {"type": "string", "maxLength": 16},
            "maxItems": 3,
        },
        "mood": {"enum": ["happy", "sad", "calm"]},
        "nickname": {"type": ["string", "null"], "maxLength": 16},
    },
    "required": ["name", "age", "pets", "mood", "nickname"],
    "additionalProperties": False,
}
r = ask(
    "Describe Ann, a 31 year old woman with a cat, as JSON.",
    max_tokens=200,
    response_format={
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": schema},
    },
)
assert r.choices[0].finish_reason == "stop", r
answer = json.loads(r.choices[0].message.content)
jsonschema.validate(answer, schema)
print("json_schema ok:", json.dumps(answer))

# json_object, streamed.
stream = ask(
    "List three colours.",
    max_tokens=120,
    stream=True,
    response_format={"type": "json_object"},
)
pieces, finish = [], None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
assert finish == "stop", finish
streamed = json.loads("".join(pieces))
assert isinstance(streamed, dict), streamed
print("json_object ok:", json.dumps(streamed))


# The client's own structured output: a Pydantic model, nested (a $ref).
class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int
    address: Address


parsed = client.chat.completions.parse(
    model=model,
    messages=[{"role": "user", "content": "Bob is 40 and lives in Paris, France."}],
    response_format=Person,
    temperature=0,
    max_tokens=200,
)
person = parsed.choices[0].message.parsed
assert isinstance(person, Person) and isinstance(person.address, Address), parsed
print("parse ok:", person.model_dump_json())

# Log-probabilities, whole.
r = ask("What is the capital of France?", max_tokens=8, logprobs=True, top_logprobs=3)
text = r.choices[0].message.content
entries = r.choices[0].logprobs.content
assert entries, r
assert b"".join(bytes(e.bytes) for e in entries).decode() == text, (entries, text)
for e in entries:
    assert e.logprob <= 0, e
    assert len(e.top_logprobs) == 3, e
    tops = [t.logprob for t in e.top_logprobs]
    assert tops == sorted(tops, reverse=True), e
    # Greedy draws the most likely token.
    assert e.top_logprobs[0].token == e.token, e
print("logprobs ok:", [(e.token, round(e.logprob, 3)) for e in entries])

# Streamed: each chunk's logprobs are its own text's tokens.
stream = ask(
    "What is the capital of France?",
    max_tokens=8,
    logprobs=True,
    top_logprobs=1,
    stream=True,
)
streamed_entries = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].logprobs:
        streamed_entries.extend(chunk.choices[0].logprobs.content)
assert [e.token for e in streamed_entries] == [e.token for e in entries]
print("streamed logprobs ok")

# The legacy completions shape.
r = client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2
)
lp = r.choices[0].logprobs
assert "".join(lp.tokens) == r.choices[0].text, (lp.tokens, r.choices[0].text)
assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0, lp
assert all(len(top) >= 2 for top in lp.top_logprobs), lp
print("legacy logprobs ok:", lp.tokens)

# Penalties change the greedy answer and repeat it less.
prompt = "Write the word apple ten times, separated by spaces."
plain = ask(prompt, max_tokens=24).choices[0].message.content
for kwargs in ({"frequency_penalty": 1.5}, {"presence_penalty": 1.5}):
    penalised = ask(prompt, max_tokens=24, **kwargs).choices[0].message.content
    assert penalised != plain, (kwargs, plain)
    assert penalised.count("apple") < plain.count("apple"), (kwargs, penalised, plain)
print("penalties ok:", repr(plain), "->", repr(penalised))

# A schema keyword Locara cannot enforce is a 400 that names it.
try:
    ask(
        "Hi",
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "s",
                "schema": {"type": "string", "pattern": "^[a-z]+$"},
            },
        },
    )
    raise AssertionError("a pattern was accepted")
except BadRequestError as e:
    assert e.status_code == 400 and "pattern" in e.message, e
print("refusal ok")
