"""The sentence-transformers side of `qkv sts`: Spearman and Pearson (×100) of the cosine similarity of
all-MiniLM-L6-v2 embeddings against the gold scores of an STS-B-style CSV (sentence1,sentence2,score)."""

import argparse
import csv
import json

from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True)
    args = parser.parse_args()
    with open(args.pairs, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f)]
    encoder = SentenceTransformer(args.model, device="cpu")
    a = encoder.encode([r[0] for r in rows], batch_size=32, normalize_embeddings=True)
    b = encoder.encode([r[1] for r in rows], batch_size=32, normalize_embeddings=True)
    cosines = (a * b).sum(axis=1)
    gold = [float(r[2]) for r in rows]
    print(json.dumps({"spearman": 100 * spearmanr(cosines, gold)[0], "pearson": 100 * pearsonr(cosines, gold)[0],
                      "pairs": len(rows)}))


if __name__ == "__main__":
    main()
