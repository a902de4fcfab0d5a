"""The official openai client against a Locara daemon: one streamed chat and
one whole one. Usage: openai_client.py BASE_URL MODEL TOKEN. Prints "stream ok"
and "whole ok", or fails with the reason. A third argument is the bearer
token (the daemon's admin token or an app's)."""

import sys

from openai import OpenAI

base_url, model, token = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=300)
messages = [{"role": "user", "content": "What is the capital of France?"}]

pieces = []
finish = None
usage = None
stream = client.chat.completions.create(
    model=model,
    messages=messages,
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        usage = chunk.usage
streamed = "".join(pieces)
assert streamed.strip(), "empty streamed answer"
assert finish in ("stop", "length"), finish
assert usage is not None and usage.completion_tokens >= 1, usage
print("stream ok:", repr(streamed), finish, usage.completion_tokens)

whole = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, temperature=0
)
text = whole.choices[0].message.content
assert text == streamed, (text, streamed)
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
print("whole ok:", repr(text), whole.choices[0].finish_reason)
