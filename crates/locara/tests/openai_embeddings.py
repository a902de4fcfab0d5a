"""The official openai Python client's embeddings against a Locara daemon:
a batch (the client asks for base64 by default), then floats, then the
refusal of `dimensions`. Usage: openai_embeddings.py BASE_URL MODEL TOKEN.
Prints "embeddings ok", or fails with the reason."""

import math
import sys

import openai
from openai import OpenAI

base_url, model, token = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=300)
texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell sharply today."]

batch = client.embeddings.create(model=model, input=texts)
assert [d.index for d in batch.data] == [0, 1, 2], batch.data
vectors = [d.embedding for d in batch.data]
for v in vectors:
    assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3, "not unit length"
assert batch.usage.prompt_tokens > 3 and batch.usage.total_tokens == batch.usage.prompt_tokens, batch.usage
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])

floats = client.embeddings.create(model=model, input=texts[0], encoding_format="float")
assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors[0])) < 1e-4

width = len(vectors[0])
same = client.embeddings.create(model=model, input=texts[0], dimensions=width)
assert len(same.data[0].embedding) == width
try:
    client.embeddings.create(model=model, input=texts[0], dimensions=width // 2)
    raise AssertionError("dimensions was not refused")
except openai.BadRequestError as e:
    assert e.body["param"] == "dimensions", e.body
print("embeddings ok:", width, batch.usage.prompt_tokens)
