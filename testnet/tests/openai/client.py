"""Drives a proofmesh node with the stock OpenAI Python client (testnet/tests/openai.rs runs it).

Environment: PM_BASE (node URL), PM_KEY (API key), PM_CHAT_MODEL, PM_EMBED_MODEL, PM_EXPECT (the
greedy answer). Prints one JSON object of what it saw; any failed check raises (exit status 1).
"""

import json
import os
import struct

import openai
from openai import OpenAI

base = os.environ["PM_BASE"] + "/v1"
client = OpenAI(base_url=base, api_key=os.environ["PM_KEY"], max_retries=0, timeout=300)
chat_model = os.environ["PM_CHAT_MODEL"]
embed_model = os.environ["PM_EMBED_MODEL"]
seen = {"openai": openai.__version__}

# Chat, greedy: the network's answer is the exact-mode model's.
r = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=24,
    temperature=0,
)
choice = r.choices[0]
assert r.object == "chat.completion", r
assert choice.message.role == "assistant", r
assert choice.message.content == os.environ["PM_EXPECT"], choice.message.content
assert choice.finish_reason == "stop", choice.finish_reason
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
proof = r.model_extra["proof"]
assert proof["status"] == "executed" and proof["verification"] == "reexec", proof
seen["chat"] = {"content": choice.message.content, "job_id": proof["job_id"], "fee": proof["fee"]}

# Log-probabilities with alternatives, through the client's own types.
r = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=24,
    temperature=0,
    logprobs=True,
    top_logprobs=3,
)
content = r.choices[0].logprobs.content
assert "".join(t.token for t in content) == os.environ["PM_EXPECT"], content
assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content)
assert all(t.logprob <= 0 and bytes(t.bytes).decode() == t.token for t in content)
seen["logprobs"] = len(content)

# Streaming, from the node that runs the model (PM_STREAM_BASE), with usage at the end.
streamer = OpenAI(base_url=os.environ["PM_STREAM_BASE"] + "/v1", api_key=os.environ["PM_KEY"], max_retries=0, timeout=300)
chunks = list(
    streamer.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == os.environ["PM_EXPECT"], text
finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop", finish
assert finish[0].model_extra["proof"]["status"] == "executed"
assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0, chunks[-1]
seen["stream"] = {"chunks": len(chunks), "job_id": finish[0].model_extra["proof"]["job_id"]}
# Through a node that routes the job to the inference node: streamed across the mesh.
routed = list(
    client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
)
routed_text = "".join(c.choices[0].delta.content or "" for c in routed if c.choices)
assert routed_text == os.environ["PM_EXPECT"], routed_text

# A system message given as the newer "developer" role and content as text parts.
r = client.chat.completions.create(
    model=chat_model,
    messages=[
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "Name a color."}]},
    ],
    max_completion_tokens=4,
    temperature=0.7,
    seed=3,
)
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens <= 4, r.usage
seen["parts"] = {"content": r.choices[0].message.content, "job_id": r.model_extra["proof"]["job_id"]}

# Embeddings: the client asks for base64 by default; float gives the same f32 values.
texts = ["The cat sat on the mat.", "proofmesh"]
default = client.embeddings.create(model=embed_model, input=texts)
floats = client.embeddings.create(model=embed_model, input=texts, encoding_format="float")
assert len(default.data) == 2 and [d.index for d in default.data] == [0, 1], default
for a, b in zip(default.data, floats.data):
    assert len(a.embedding) == 384 and len(b.embedding) == 384
    f32 = lambda v: struct.pack("<%df" % len(v), *v)
    assert f32(a.embedding) == f32(b.embedding), "base64 and float embeddings differ"
one = client.embeddings.create(model=embed_model, input="proofmesh", encoding_format="float")
assert one.data[0].embedding == floats.data[1].embedding
seen["embeddings"] = {"dims": len(floats.data[0].embedding), "job_id": floats.model_extra["proof"]["job_id"]}

# Models: OpenAI's list, with ours alongside.
models = client.models.list()
names = {m.model_extra["name"]: m.id for m in models.data}
assert chat_model in names and embed_model in names, names
assert client.models.retrieve(chat_model).id == names[chat_model]
seen["models"] = sorted(names)

# Errors map to the client's exception classes, with OpenAI's fields.
def expect(exc, call, code, param=None):
    try:
        call()
    except exc as e:
        assert e.code == code, (e.code, e.body)
        assert e.param == param, (e.param, e.body)
        return e.status_code
    raise AssertionError("%s: no error" % code)

errors = {}
errors["unknown model"] = expect(
    openai.NotFoundError,
    lambda: client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}]),
    "model_not_found",
    "model",
)
errors["temperature"] = expect(
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "hi"}], temperature=5),
    "invalid_request",
    "temperature",
)
errors["no messages"] = expect(
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=chat_model, messages=[]),
    "invalid_request",
    "messages",
)
errors["role"] = expect(
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=chat_model, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]),
    "invalid_request",
    "messages",
)
errors["dimensions"] = expect(
    openai.BadRequestError,
    lambda: client.embeddings.create(model=embed_model, input="x", dimensions=128),
    "invalid_request",
    "dimensions",
)
bad_key = OpenAI(base_url=base, api_key="sk-not-a-proofmesh-key", max_retries=0)
errors["bad key"] = expect(
    openai.AuthenticationError,
    lambda: bad_key.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "hi"}]),
    "invalid_api_key",
)
seen["errors"] = errors
print(json.dumps(seen))
