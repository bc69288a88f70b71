"""The official `openai` Python client against a running `qkv serve` of the test fixtures: models, embeddings
(floats and base64), a greedy completion with logprobs, the same streamed, and an error body.

    python3 -m venv /tmp/oai && /tmp/oai/bin/pip install openai
    qkv serve --model emb=qkv/tests/fixtures/bert/BertModel --model gpt=qkv/tests/fixtures/gpt2/qkv-trained --port 8095 &
    /tmp/oai/bin/python tools/serve/openai_client.py

Checked 2026-12-02 with openai 3.57.0.
"""
from openai import OpenAI
c = OpenAI(base_url="http://127.0.0.1:8095/v1", api_key="unused")
print("models:", [m.id for m in c.models.list().data])
e = c.embeddings.create(model="emb", input=["a cat", "a dog"])
print("embeddings:", len(e.data), len(e.data[0].embedding), e.usage.prompt_tokens)
b = c.embeddings.create(model="emb", input="a cat", encoding_format="base64")
print("base64 embedding dims:", len(b.data[0].embedding))
r = c.completions.create(model="gpt", prompt="First Citizen:", max_tokens=12, temperature=0, logprobs=2)
print("completion:", repr(r.choices[0].text), r.choices[0].finish_reason, r.usage.completion_tokens, len(r.choices[0].logprobs.tokens))
text = "".join(ch.choices[0].text for ch in c.completions.create(model="gpt", prompt="First Citizen:", max_tokens=12, temperature=0, stream=True))
print("streamed equals:", text == r.choices[0].text)
try:
    c.completions.create(model="nope", prompt="x")
except Exception as err:
    print("error:", type(err).__name__, getattr(err, "status_code", None), err.body if hasattr(err, "body") else err)
