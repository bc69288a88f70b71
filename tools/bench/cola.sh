#!/usr/bin/env bash
# CoLA fine-tuning, qkv against transformers' Trainer with the same recipe: all-MiniLM-L6-v2, 3 epochs,
# batch 32, lr 5e-5, linear decay, no warm-up, clipping at 1, best epoch by dev MCC; one run per seed, one
# after the other on the same machine. Prints one JSON line per run.
#
#   tools/bench/cola.sh [SEED ...]     (default seeds: 42 43 44)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(42 43 44)
data="$root/../shared/data/cola"
venv="$(tools/fixtures/setup.sh)"
minilm="$(tools/models/fetch_minilm.sh)"
cargo build --release --quiet --bin qkv
out="$(mktemp -d)"
for seed in "${seeds[@]}"; do
    start=$(date +%s.%N)
    ./target/release/qkv finetune classify --model "$minilm" --train "$data/train.tsv" --dev "$data/dev.tsv" \
        --out "$out/qkv-$seed" --epochs 3 --batch-size 32 --learning-rate 5e-5 --metric mcc --seed "$seed" \
        > "$out/qkv-$seed.txt" 2> "$out/qkv-$seed.log"
    end=$(date +%s.%N)
    mcc=$(python3 -c "import json;print(max(json.loads(l)['mcc'] for l in open('$out/qkv-$seed/log.jsonl')))")
    echo "{\"side\": \"qkv\", \"seed\": $seed, \"mcc\": $mcc, \"seconds\": $(awk "BEGIN { print $end - $start }")}"
    (cd tools/bench && "$venv/bin/python" finetune_cola.py --model "$minilm" --train "$data/train.tsv" \
        --dev "$data/dev.tsv" --out "$out/hf-$seed" --seed "$seed" 2> "$out/hf-$seed.log" | tail -n 1 \
        | sed 's/^{/{"side": "transformers", /')
done
rm -rf "$out"
