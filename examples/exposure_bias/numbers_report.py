#!/usr/bin/env python3
"""The number task's table (examples/exposure_bias/numbers.sh): exact match per method, mean ± std over seeds,
by the length of the German reference, and McNemar's exact test of each method against teacher forcing on the
same seed's held-out numbers (the two models judged on the same 500 numbers: only the numbers where they
disagree count). Standard library only."""

import argparse
import json
import math
import subprocess
import statistics
from pathlib import Path

METHODS = [
    ("tf", "teacher forcing"),
    ("ss", "scheduled sampling"),
    ("wo", "word oracle"),
    ("tf-ft", "teacher forcing, +2 epochs"),
    ("so-ft", "sentence oracle, +2 epochs"),
]
BASELINE = {"ss": "tf", "wo": "tf", "tf-ft": "tf", "so-ft": "tf-ft"}
# Upper ends of the reference-length buckets, in characters (the German number is one word).
BUCKETS = [40, 50, 56]


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def bucket(n):
    for i, end in enumerate(BUCKETS):
        if n <= end:
            return i
    return len(BUCKETS)


def bucket_names():
    starts = [1] + [end + 1 for end in BUCKETS]
    return [f"{s}–{e}" for s, e in zip(starts, BUCKETS)] + [f"{starts[-1]}+"]


def mcnemar(a, b):
    """Two-sided exact McNemar p-value of correctness lists a and b (binomial test on the discordant pairs)."""
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 1.0, only_a, only_b
    k = min(only_a, only_b)
    p = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, p), only_a, only_b


def mean_std(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    parser.add_argument("--qkv", help="the qkv binary, to draw exact_match_by_length.png with `qkv plot chart`")
    args = parser.parse_args()

    correct = {}  # (method, seed) -> [bool]
    lengths = {}  # seed -> [reference length]
    for seed in args.seeds:
        refs = lines(args.results / f"test-s{seed}.ref.de")
        lengths[seed] = [len(r) for r in refs]
        for method, _ in METHODS:
            path = args.results / f"{method}-s{seed}.de"
            if path.exists():
                hyps = lines(path)
                correct[(method, seed)] = [h == r for h, r in zip(hyps, refs)]

    print("# Exposure bias on the number task (qkv demo's English → German number words)\n")
    print(f"Seeds {', '.join(args.seeds)}; 500 held-out numbers per seed, greedy decoding; exact match in %.\n")
    names = bucket_names()
    series = []
    print("| method | exact match | " + " | ".join(f"length {n}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for method, label in METHODS:
        runs = [(seed, correct[(method, seed)]) for seed in args.seeds if (method, seed) in correct]
        if not runs:
            continue
        overall = [100 * sum(c) / len(c) for _, c in runs]
        per_bucket, points = [], []
        for b in range(len(names)):
            rates = []
            for seed, c in runs:
                picked = [x for x, n in zip(c, lengths[seed]) if bucket(n) == b]
                if picked:
                    rates.append(100 * sum(picked) / len(picked))
            per_bucket.append(mean_std(rates))
            if rates:
                spread = [statistics.stdev(rates)] if len(rates) > 1 else []
                points.append([b, statistics.mean(rates)] + spread)
        series.append({"name": label, "points": points, "dashed": method.endswith("-ft")})
        print(f"| {label} | {mean_std(overall)} | " + " | ".join(per_bucket) + " |")
    counts = [sum(bucket(n) == b for seed in args.seeds for n in lengths[seed]) for b in range(len(names))]
    print("| (numbers per bucket, all seeds) | | " + " | ".join(str(c) for c in counts) + " |")
    if args.qkv:
        chart = {
            "title": "Number task: exact match by the length of the German number",
            "note": f"greedy decoding, 500 held-out numbers per seed; mean ± std over seeds {', '.join(args.seeds)}",
            "x_label": "reference length (characters)", "y_label": "exact match (%)",
            "x_categories": names, "series": series,
        }
        spec = args.results / "exact_match_by_length.json"
        spec.write_text(json.dumps(chart, indent=1))
        png = args.results / "exact_match_by_length.png"
        subprocess.run([args.qkv, "plot", "chart", "--spec", str(spec), "--out", str(png)], check=True,
                       capture_output=True)
        print("\n![exact match by length](exact_match_by_length.png)")

    print("\nMcNemar's exact test against the baseline, per seed (numbers only the method gets right / only the")
    print("baseline gets right, two-sided p):\n")
    print("| method | baseline | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---|---|" + "---|" * len(args.seeds))
    for method, label in METHODS:
        base = BASELINE.get(method)
        if base is None:
            continue
        cells = []
        for seed in args.seeds:
            if (method, seed) in correct and (base, seed) in correct:
                p, only_method, only_base = mcnemar(correct[(method, seed)], correct[(base, seed)])
                cells.append(f"{only_method}/{only_base}, p = {p:.3g}")
            else:
                cells.append("–")
        print(f"| {label} | {dict(METHODS)[base]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
