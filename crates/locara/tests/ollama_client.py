"""The official ollama Python client against a Locara daemon's Ollama API.
Usage: ollama_client.py HOST MODEL TOKEN [MISSING]. HOST is the daemon's
URL; TOKEN its admin token; MISSING a catalog name whose pull must fail
(the daemon's catalog points it at a file that does not exist). Prints one
"... ok" line per route, or fails with the reason."""

import math
import sys

import ollama

host, model, token = sys.argv[1], sys.argv[2], sys.argv[3]
missing = sys.argv[4] if len(sys.argv) > 4 else None
client = ollama.Client(host=host, headers={"Authorization": f"Bearer {token}"}, timeout=300)
messages = [{"role": "user", "content": "What is the capital of France?"}]
options = {"temperature": 0, "num_predict": 16, "seed": 1}

# chat, streamed (Ollama's default) and whole: the same greedy answer.
pieces, last = [], None
for part in client.chat(model=model, messages=messages, options=options, stream=True):
    pieces.append(part.message.content or "")
    last = part
streamed = "".join(pieces)
assert streamed.strip(), "empty streamed answer"
assert last.done and last.done_reason in ("stop", "length"), last
assert last.eval_count and last.eval_count >= 1, last
assert last.prompt_eval_count and last.prompt_eval_count >= 1, last
assert last.total_duration and last.total_duration > 0, last
print("chat stream ok:", repr(streamed), last.done_reason, last.eval_count)

whole = client.chat(model=model, messages=messages, options=options)
assert whole.message.role == "assistant", whole
assert whole.message.content == streamed, (whole.message.content, streamed)
assert whole.done, whole
print("chat whole ok:", repr(whole.message.content))

gen = client.generate(model=model, prompt="What is the capital of France?", options=options)
assert gen.response.strip() and gen.done, gen
assert gen.response == streamed, (gen.response, streamed)
raw = client.generate(model=model, prompt="The capital of France is", raw=True, options=options)
assert raw.response.strip(), raw
print("generate ok:", repr(gen.response), repr(raw.response))

emb = client.embed(model=model, input=["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell sharply today."])
vectors = emb.embeddings
assert len(vectors) == 3, len(vectors)
for v in vectors:
    assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3, "not unit length"
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
near, far = dot(vectors[0], vectors[1]), dot(vectors[0], vectors[2])
assert near > far, (near, far)
one = client.embed(model=model, input="The cat sat on the mat.")
assert max(abs(a - b) for a, b in zip(one.embeddings[0], vectors[0])) < 1e-4, "batch and single differ"
assert emb.prompt_eval_count and emb.prompt_eval_count > 3, emb
print("embed ok:", len(vectors[0]), round(near, 4), round(far, 4))

names = [m.model for m in client.list().models]
assert model in names, names
print("tags ok:", names)

loaded = [m.model for m in client.ps().models]
assert model in loaded, loaded
print("ps ok:", loaded)

shown = client.show(model)
assert shown.modelinfo and shown.modelinfo.get("general.architecture"), shown
assert shown.details and shown.details.format == "gguf", shown
assert shown.template, "no template"
print("show ok:", shown.modelinfo["general.architecture"], shown.details.quantization_level)

statuses = [p.status for p in client.pull(model, stream=True)]
assert statuses[-1] == "success", statuses
assert client.pull(model).status == "success"
print("pull ok:", statuses)

try:
    client.pull("no-such-model:1")
    raise AssertionError("pulling an unknown model succeeded")
except ollama.ResponseError as e:
    assert e.status_code == 404 and "catalog" in e.error, (e.status_code, e.error)
if missing:
    try:
        for p in client.pull(missing, stream=True):
            pass
        raise AssertionError("pulling a model whose file is missing succeeded")
    except ollama.ResponseError as e:
        assert "missing.gguf" in e.error, e.error
    assert missing not in [m.model for m in client.list().models], "a failed pull left a model"
print("pull failure ok")
