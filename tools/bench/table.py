"""Joins qkv's and PyTorch's JSON reports of one workload into a markdown table with ratios."""

import json
import sys


def main(qkv_path, torch_path):
    qkv = json.load(open(qkv_path))
    ref = json.load(open(torch_path))
    by_name = {r["name"]: r for r in ref["results"]}
    print(f"\n### {qkv['workload']} (qkv {qkv['threads']} threads, PyTorch {ref['threads']} threads)\n")
    print("| measurement | unit | qkv median | PyTorch median | qkv / PyTorch | qkv best | PyTorch best |")
    print("|---|---|---|---|---|---|---|")
    for ours in qkv["results"]:
        theirs = by_name.get(ours["name"])
        if theirs is None:
            print(f"| {ours['name']} | {ours['unit']} | {ours['median']:.4g} | – | – | {ours['best']:.4g} | – |")
            continue
        ratio = ours["median"] / theirs["median"]
        print(
            f"| {ours['name']} | {ours['unit']} | {ours['median']:.4g} | {theirs['median']:.4g} | {ratio:.2f}× "
            f"| {ours['best']:.4g} | {theirs['best']:.4g} |"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
