#!/usr/bin/env python3
"""The Multi30k exposure-bias study's report (examples/exposure_bias/study.sh): test BLEU per run and per method
(mean ± std over seeds), each method against its baseline by paired bootstrap resampling on every seed and by a
paired t-test over seeds, BLEU by reference length, and two figures drawn with `qkv plot chart`: BLEU by length
per method, and p (the probability of feeding the gold token) over training. Standard library only; BLEU comes
from `qkv bleu --json` (sacreBLEU's numbers)."""

import argparse
import json
import math
import statistics
import subprocess
from pathlib import Path

METHODS = [
    ("tf", "teacher forcing"),
    ("ss", "scheduled sampling"),
    ("wo", "word oracle"),
    ("tf-ft", "teacher forcing, fine-tuned"),
    ("so-ft", "sentence oracle, fine-tuned"),
]
# Each method is compared with the run that had the same training budget: the from-scratch methods with teacher
# forcing, the sentence-oracle fine-tune with teacher forcing fine-tuned for as many steps from the same model.
BASELINE = {"ss": "tf", "wo": "tf", "so-ft": "tf-ft"}


def bleu_json(qkv, ref, hyps, *flags):
    args = [qkv, "bleu", "--tokenize", "none", "--json", "--ref", str(ref), "--hyp", *map(str, hyps), *flags]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def t_test_p(differences):
    """Two-sided p of a one-sample t-test that the mean difference is 0 (Student's t, n − 1 degrees of freedom;
    the CDF by Simpson's rule on the density, exact enough for a report)."""
    n = len(differences)
    if n < 2:
        return float("nan")
    sd = statistics.stdev(differences)
    if sd == 0:
        return 0.0 if statistics.mean(differences) != 0 else 1.0
    t = abs(statistics.mean(differences)) / (sd / math.sqrt(n))
    df = n - 1
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)
    steps = 2000
    h = t / steps
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return max(0.0, 1 - 2 * area * h / 3)


def mean_std(values):
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "–"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def gold_probability(log):
    points = []
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train" and record.get("gold_probability") is not None:
            points.append([record["step"], record["gold_probability"]])
    return points


def draw(qkv, chart, path):
    spec = path.with_suffix(".json")
    spec.write_text(json.dumps(chart, indent=1))
    subprocess.run([qkv, "plot", "chart", "--spec", str(spec), "--out", str(path)], check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--qkv", default="target/release/qkv")
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    args = parser.parse_args()
    hyp = lambda method, seed: args.results / f"{method}-s{seed}.beam5.de"
    runs = {(m, s): hyp(m, s) for m, _ in METHODS for s in args.seeds if hyp(m, s).exists()}
    # One system without flags comes back as sacreBLEU's flat record (bleu, chrf); the others as "systems".
    scores = {key: bleu_json(args.qkv, args.ref, [path])["bleu"]["score"] for key, path in runs.items()}

    print("# Exposure bias on Multi30k en→de (test_2016_flickr, beam 5, BLEU over the tok view's tokens)\n")
    screen = args.results / "screen.txt"
    if screen.exists():
        print(screen.read_text().strip() + "\n")
    print("| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for method, label in METHODS:
        values = [scores[(method, s)] for s in args.seeds if (method, s) in scores]
        if values:
            cells = [f"{scores[(method, s)]:.2f}" if (method, s) in scores else "–" for s in args.seeds]
            print(f"| {label} | " + " | ".join(cells) + f" | {mean_std(values)} |")

    print("\nAgainst the baseline: the BLEU difference per seed with its paired-bootstrap p-value (1000 resamples,")
    print("sacreBLEU's test), and a paired t-test of the per-seed differences:\n")
    print("| method | baseline | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean Δ | t-test p |")
    print("|---|---|" + "---|" * (len(args.seeds) + 2))
    for method, base in BASELINE.items():
        cells, differences = [], []
        for seed in args.seeds:
            if (method, seed) not in runs or (base, seed) not in runs:
                cells.append("–")
                continue
            result = bleu_json(args.qkv, args.ref, [runs[(base, seed)], runs[(method, seed)]], "--paired-bs")
            system = result["systems"][1]
            difference = scores[(method, seed)] - scores[(base, seed)]
            differences.append(difference)
            cells.append(f"{difference:+.2f} (p = {system['p_value']:.3f})")
        if differences:
            mean = f"{statistics.mean(differences):+.2f}"
            print(f"| {dict(METHODS)[method]} | {dict(METHODS)[base]} | " + " | ".join(cells)
                  + f" | {mean} | {t_test_p(differences):.3f} |")

    # BLEU by reference length, per method: mean and std over seeds per bucket.
    by_length = {}
    for (method, seed), path in runs.items():
        result = bleu_json(args.qkv, args.ref, [path], "--by-length", "--buckets", "8,12,16,20")
        by_length[(method, seed)] = result["systems"][0]["buckets"]
    names = None
    series = []
    print("\nBLEU by reference length (tokens), mean ± std over seeds:\n")
    for method, label in METHODS:
        per_seed = [by_length[(method, s)] for s in args.seeds if (method, s) in by_length]
        if not per_seed:
            continue
        if names is None:
            names = [f"{b['min']}–{b['max']}" if b.get("max") else f"{b['min']}+" for b in per_seed[0]]
            sizes = [b["sentences"] for b in per_seed[0]]
            print("| method | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
        cells, points = [], []
        for i in range(len(names)):
            values = [buckets[i]["bleu"]["score"] for buckets in per_seed]
            cells.append(mean_std(values))
            points.append([i, statistics.mean(values)] + ([statistics.stdev(values)] if len(values) > 1 else []))
        print(f"| {label} | " + " | ".join(cells) + " |")
        series.append({"name": label, "points": points, "dashed": method.endswith("-ft")})
    if names:
        print("| (sentences) | " + " | ".join(str(s) for s in sizes) + " |")
        draw(args.qkv, {
            "title": "Multi30k test_2016_flickr: BLEU by reference length",
            "note": f"beam 5; mean ± std over seeds {', '.join(args.seeds)}",
            "x_label": "reference length (tokens)", "y_label": "BLEU",
            "x_categories": names, "series": series,
        }, args.results / "bleu_by_length.png")
        print("\n![BLEU by length](bleu_by_length.png)")

    curves = []
    for method, label in METHODS[1:]:
        log = args.results / f"{method}-s{args.seeds[0]}.log.jsonl"
        if log.exists() and gold_probability(log):
            curves.append({"name": label, "points": gold_probability(log)})
    if curves:
        draw(args.qkv, {
            "title": "p, the probability of feeding the gold token",
            "note": f"Zhang et al.'s μ/(μ + exp(epoch/μ)), μ = 12, seed {args.seeds[0]}",
            "x_label": "optimizer step (the fine-tunes count from their start)", "y_label": "p",
            "series": curves,
        }, args.results / "gold_probability.png")
        print("\n![p over training](gold_probability.png)")


if __name__ == "__main__":
    main()
