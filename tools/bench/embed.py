"""The sentence-transformers side of `qkv bench embed`: all-MiniLM-L6-v2 on the first 1 024 STS-B dev sentences
at batch 32 (sentences/s), and one sentence at a time (ms)."""

import argparse
import csv
import resource

from sentence_transformers import SentenceTransformer

from common import median, report, timed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default="../../../shared/data/stsb/dev.csv")
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with open(args.pairs, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    sentences = [s for row in rows for s in row[:2]][: args.sentences]
    encoder = SentenceTransformer(args.model, device="cpu")
    batched = timed(lambda: encoder.encode(sentences, batch_size=args.batch_size), 1, args.reps)
    single = timed(lambda: encoder.encode(sentences[:1], batch_size=1), 5, 50)
    n = len(sentences)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    report("embed", [
        {"name": f"embed sentences/s batch {args.batch_size}", "unit": "sentences/s", "median": n / median(batched),
         "best": n / batched[0], "higher_is_better": True},
        {"name": "embed one sentence", "unit": "ms", "median": median(single) * 1e3, "best": single[0] * 1e3,
         "higher_is_better": False},
        {"name": "peak RSS embed", "unit": "MiB", "median": peak, "best": peak, "higher_is_better": False},
    ])


if __name__ == "__main__":
    main()
