#!/usr/bin/env bash
# Exposure bias on `qkv demo`'s number task (English number words → German), where a long number is one long
# word of many subword tokens and a wrong early token can derail the rest: teacher forcing against scheduled
# sampling, the word oracle and the sentence oracle (a fine-tune of the teacher-forcing model), 3 seeds each,
# scored by exact match on the 500 held-out numbers, by the length of the German reference.
#
#   examples/exposure_bias/numbers.sh [OUT]        (default runs/exposure-bias-numbers)
#
# About 20 minutes on 2 cores. Every run is the demo's own (same data, same options: `qkv demo --seed S`), with
# only the decoder's input changed; results (translations, logs) go to examples/exposure_bias/results/numbers/
# and runs whose results are there are skipped. Environment: QKV (default target/release/qkv), SEEDS (default
# "1 2 3"), MIX (scheduled sampling's mix, default argmax), RESULTS.
set -euo pipefail
out=${1:-runs/exposure-bias-numbers}
qkv=${QKV:-target/release/qkv}
seeds=${SEEDS:-1 2 3}
mix=${MIX:-argmax}
here=$(cd "$(dirname "$0")" && pwd)
results=${RESULTS:-$here/results/numbers}
[ -x "$qkv" ] || cargo build --release -p qkv-cli
mkdir -p "$out" "$results"

# The demo's training options (qkv-cli/src/demo.rs): 2+2 layers, 128 wide, 4 heads, BPE 160, 3000-token
# batches, 400 warm-up steps, 6 epochs, exact match as the selection metric. p of the gold token decays over the
# 6 epochs by Zhang et al.'s schedule with μ = 3 (0.95 → 0.54).
demo_options=(--preset small --layers 2 --d-model 128 --heads 4 --d-ff 512 --vocab-size 160 --max-tokens 3000
              --warmup 400 --lr-factor 1.0 --max-len 64 --exact-match --save-total-limit 2)
schedule=(--sampling-schedule zhang --sampling-k 3 --sampling-unit epoch)

# run NAME SEED ARGS...: trains NAME on seed SEED's data unless its results are in, then translates the test set.
run() {
    local name=$1 seed=$2; shift 2
    local data=$out/data-s$seed/data dir=$out/$name
    [ -f "$results/$name.de" ] && return
    if [ -f "$dir/training.json" ]; then
        "$qkv" train translation --out "$dir" --resume
    else
        "$qkv" train translation --out "$dir" --train-source "$data/train.en" --train-target "$data/train.de" \
            --valid-source "$data/valid.en" --valid-target "$data/valid.de" --seed "$seed" "$@"
    fi
    "$qkv" translate --model "$dir/best" --beam 1 --input "$data/test.en" > "$dir/test.de.tmp"
    cp "$dir/log.jsonl" "$results/$name.log.jsonl"
    mv "$dir/test.de.tmp" "$results/$name.de"
}

for seed in $seeds; do
    # The demo writes seed S's data (train, valid, test) before it trains; one epoch is enough for the data.
    if [ ! -f "$out/data-s$seed/data/test.de" ]; then
        "$qkv" demo --out "$out/data-s$seed" --seed "$seed" --epochs 1 > /dev/null
    fi
    cp "$out/data-s$seed/data/test.de" "$results/test-s$seed.ref.de"
    run "tf-s$seed" "$seed" "${demo_options[@]}" --num-train-epochs 6
    run "ss-s$seed" "$seed" "${demo_options[@]}" --num-train-epochs 6 --sampling scheduled --sampling-mix "$mix" \
        "${schedule[@]}"
    run "wo-s$seed" "$seed" "${demo_options[@]}" --num-train-epochs 6 --sampling word-oracle "${schedule[@]}"
    # The sentence oracle and its control: 2 more epochs from the teacher-forcing model.
    for method in tf so; do
        sampling=(); [ "$method" = so ] && sampling=(--sampling sentence-oracle "${schedule[@]}")
        run "$method-ft-s$seed" "$seed" --max-tokens 3000 --warmup 400 --lr-factor 1.0 --max-len 64 --exact-match \
            --save-total-limit 2 --init-from "$out/tf-s$seed/best" --num-train-epochs 2 "${sampling[@]}"
    done
done
python3 "$here/numbers_report.py" "$results" --qkv "$qkv" --seeds $seeds | tee "$results/results.md"
