"""Joins qkv's and a reference's JSON reports of one workload into a markdown table with ratios.

    table.py QKV_JSON REF_JSON [LABEL [OURS=THEIRS]]
                                            LABEL names the reference's columns (default PyTorch; run.sh's optional
                                            workloads pass "ONNX Runtime" and "llama.cpp"); OURS=THEIRS pairs qkv's
                                            rows named with OURS (int8) with the reference's named with THEIRS
                                            (q8_0), each side's own 8-bit format
Reference rows that qkv lacks (the int8 / q8_0 variants) are listed after qkv's, with no ratio."""

import json
import sys


def main(qkv_path, ref_path, label="PyTorch", alias=""):
    qkv = json.load(open(qkv_path))
    ref = json.load(open(ref_path))
    by_name = {r["name"]: r for r in ref["results"]}
    if alias:
        ours_tag, theirs_tag = alias.split("=")
        for r in ref["results"]:
            if theirs_tag in r["name"]:
                by_name[r["name"].replace(theirs_tag, ours_tag)] = r
    print(f"\n### {qkv['workload']} (qkv {qkv['threads']} threads, {label} {ref['threads']} threads)\n")
    print(f"| measurement | unit | qkv median | {label} median | qkv / {label} | qkv best | {label} best |")
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
    ours = {r["name"] for r in qkv["results"]}
    joined = {id(by_name[n]) for n in ours if n in by_name}
    for theirs in ref["results"]:
        if id(theirs) not in joined:
            print(f"| {theirs['name']} | {theirs['unit']} | – | {theirs['median']:.4g} | – | – | {theirs['best']:.4g} |")


if __name__ == "__main__":
    main(*sys.argv[1:5])
