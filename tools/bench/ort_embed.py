"""ONNX Runtime as a second reference for `qkv bench embed` (run.sh's optional workload ort-embed).

all-MiniLM-L6-v2 is exported once to ONNX (torch.onnx.export of the transformers BertModel) and quantized once to
dynamic int8 (onnxruntime.quantization.quantize_dynamic), both cached under ~/.cache/qkv/onnx/. The measurement is
embed.py's: the first 1 024 STS-B dev sentences at batch 32 (sentences/s, median of 5 passes) and one sentence
(ms, median of 50), with the MiniLM tokenizer (HF tokenizers), mean pooling and L2 normalisation done here in numpy,
so the rows join qkv's by name. The int8 rows carry "(int8)" in their names, plus the smallest cosine between the
int8 and fp32 embeddings of the 1 024 sentences. The fp32 embeddings' max |diff| against sentence-transformers goes
to stderr as a check that the exported graph is the same model.
"""

import argparse
import contextlib
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from common import median, report, timed

CACHE = Path(os.environ.get("QKV_CACHE", Path.home() / ".cache" / "qkv")) / "onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def read_sentences(pairs, count):
    """The first `count` sentences of the pairs file, sliced exactly as embed.py slices them."""
    with open(pairs, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [s for row in rows for s in row[:2]][:count]


def export_fp32(model_dir, path):
    """Exports the BERT encoder (last hidden state) with dynamic batch and sequence axes; pooling stays outside the
    graph so fp32 and int8 share the same numpy post-processing."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64),
               torch.zeros(2, 8, dtype=torch.int64))
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUTS}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON report
        torch.onnx.export(model, example, str(tmp), input_names=list(INPUTS), output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    os.replace(tmp, path)


def quantize_int8(fp32, path):
    """Dynamic int8 (weights int8, activations quantized per call): ONNX Runtime's usual CPU recipe for BERT."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".tmp.onnx")
    with contextlib.redirect_stdout(sys.stderr):
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
    os.replace(tmp, path)


def cached_models(model_dir):
    """Paths of the fp32 and int8 models, made on first use (the cache is keyed by the model directory's name)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = Path(model_dir).name
    fp32, int8 = CACHE / f"{stem}.onnx", CACHE / f"{stem}.int8.onnx"
    if not fp32.exists():
        print(f"ort_embed: exporting {fp32}", file=sys.stderr)
        export_fp32(model_dir, fp32)
    if not int8.exists():
        print(f"ort_embed: quantizing {int8}", file=sys.stderr)
        quantize_int8(fp32, int8)
    return fp32, int8


def session(path, threads):
    """A CPU session with `threads` intra-op threads and no inter-op parallelism, like the other sides' THREADS."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_tokenizer(model_dir):
    """The model's own tokenizer.json, truncating at sentence-transformers' max_seq_length and padding per batch."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    config = Path(model_dir) / "sentence_bert_config.json"
    max_length = json.loads(config.read_text())["max_seq_length"] if config.exists() else 256
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    return tokenizer


def embed_batch(sess, tokenizer, sentences):
    """Mean-pooled, L2-normalised embeddings of one batch (what sentence-transformers' MiniLM pipeline computes)."""
    encodings = tokenizer.encode_batch(sentences)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    hidden = sess.run(None, feeds)[0]
    mask = feeds["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def embed(sess, tokenizer, sentences, batch_size):
    """All embeddings in input order; sentences are sorted longest first before batching, as sentence-transformers
    and qkv's Embedder both do, so padding costs the same on every side."""
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    chunks = [embed_batch(sess, tokenizer, [sentences[i] for i in order[s:s + batch_size]])
              for s in range(0, len(order), batch_size)]
    out = np.empty((len(sentences), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


def measure(sess, tokenizer, sentences, args, suffix):
    """embed.py's two timings for one session; `suffix` tells the int8 rows apart from the fp32 ones."""
    batched = timed(lambda: embed(sess, tokenizer, sentences, args.batch_size), 1, args.reps)
    single = timed(lambda: embed(sess, tokenizer, sentences[:1], 1), 5, 50)
    n = len(sentences)
    return [
        {"name": f"embed sentences/s batch {args.batch_size}{suffix}", "unit": "sentences/s",
         "median": n / median(batched), "best": n / batched[0], "higher_is_better": True},
        {"name": f"embed one sentence{suffix}", "unit": "ms", "median": median(single) * 1e3,
         "best": single[0] * 1e3, "higher_is_better": False},
    ]


def read_pairs(path):
    """Every (sentence1, sentence2, score) row of an STS-B CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [(r[0], r[1], float(r[2])) for r in rows]


def ranks(values):
    """Ranks from 1, ties sharing their mean rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    sorted_values = np.asarray(values)[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranked[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranked


def sts_spearman(sess, tokenizer, pairs, batch_size):
    """STS-B Spearman (x 100) of the embeddings' cosine against the gold scores, over every pair."""
    a = embed(sess, tokenizer, [p[0] for p in pairs], batch_size)
    b = embed(sess, tokenizer, [p[1] for p in pairs], batch_size)
    predicted, gold = (a * b).sum(axis=1), np.array([p[2] for p in pairs])
    return 100 * float(np.corrcoef(ranks(predicted), ranks(gold))[0, 1])


def check_against_sentence_transformers(model_dir, sentences, fp32_embeddings):
    """Prints the fp32 export's max |diff| from sentence-transformers: a wrong export would make the timing moot."""
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(model_dir, device="cpu").encode(sentences, batch_size=32)
    print(f"ort_embed: fp32 ONNX vs sentence-transformers max |diff| {np.abs(fp32_embeddings - want).max():.3g}",
          file=sys.stderr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default="../../../shared/data/stsb/dev.csv")
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    sentences = read_sentences(args.pairs, args.sentences)
    fp32_path, int8_path = cached_models(args.model)
    tokenizer = load_tokenizer(args.model)
    fp32, int8 = session(fp32_path, args.threads), session(int8_path, args.threads)
    results = measure(fp32, tokenizer, sentences, args, "") + measure(int8, tokenizer, sentences, args, " (int8)")
    want, got = embed(fp32, tokenizer, sentences, args.batch_size), embed(int8, tokenizer, sentences, args.batch_size)
    cosines = (want * got).sum(axis=1)
    readings = [("int8 min cosine vs fp32", "cosine", float(cosines.min())),
                ("int8 mean 1 - cosine vs fp32", "1 - cosine", float((1 - cosines).mean()))]
    pairs = read_pairs(args.pairs)
    for name, sess in [("int8", int8), ("fp32", fp32)]:
        readings.append((f"STS-B Spearman x100 ({name})", "x100", sts_spearman(sess, tokenizer, pairs, args.batch_size)))
    results += [{"name": n, "unit": u, "median": v, "best": v, "higher_is_better": False} for n, u, v in readings]
    check_against_sentence_transformers(args.model, sentences, want)
    report("embed", results, threads=args.threads)


if __name__ == "__main__":
    main()
