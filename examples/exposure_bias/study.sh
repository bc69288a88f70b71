#!/usr/bin/env bash
# Exposure bias on Multi30k en→de (tok view), issue 15's study: teacher forcing against scheduled sampling, the
# word oracle and the sentence oracle, 3 seeds each at the same budget of optimizer steps, scored on
# test_2016_flickr (beam 5) with paired bootstrap against teacher forcing and BLEU by reference length.
#
#   examples/exposure_bias/study.sh [OUT]        (default ~/.cache/qkv/exposure-bias, outside the checkout)
#
# Long (hours on 2 cores, more than one session): every run checkpoints every 250 steps under OUT, and the
# script can be killed and started again at any time: interrupted runs are resumed bit for bit. OUT lives outside
# the checkout by default because a fresh checkout of the project (a new clone, a new session) would lose it,
# and with it up to an hour and a half of an unfinished run. What a finished
# run leaves is small and lives in examples/exposure_bias/results/ (committed): NAME.log.jsonl (the training log)
# and NAME.beam5.de (test_2016_flickr translated with beam 5); a run whose results are there is skipped, so the
# study can be carried across machines by committing that directory. Environment: MULTI30K (default
# ../shared/data/multi30k), QKV (default target/release/qkv), STEPS (step cap per run, default 3000; the training's
# default of 20 epochs, 2500 steps here, ends every from-scratch run first, so that is the budget),
# FINE_TUNE_STEPS (default 1000), SCREEN_STEPS (default 500), SEEDS (default "1 2 3"), RESULTS (default
# examples/exposure_bias/results).
#
# Stages:
#  0. train the first seed's teacher-forcing model, then screen scheduled sampling's four mixes (argmax, softmax,
#     top-k, sample) as SCREEN_STEPS fine-tunes of it and keep the one with the best validation BLEU;
#  1. per seed: teacher forcing for STEPS; then, from its best checkpoint, the sentence oracle as a FINE_TUNE_STEPS
#     fine-tune and, as its control, teacher forcing fine-tuned for the same steps (next to it, so that the
#     teacher-forcing checkpoint they start from is still on disk); then scheduled sampling (that mix) and the word
#     oracle, STEPS each from scratch. Every run translates test_2016_flickr (beam 5) when it finishes;
#  2. score: BLEU per run, mean ± std per method, paired bootstrap against teacher forcing, BLEU by length
#     (examples/exposure_bias/report.py writes results.md).
set -euo pipefail
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/qkv/exposure-bias}
data=${MULTI30K:-../shared/data/multi30k}/tok
qkv=${QKV:-target/release/qkv}
steps=${STEPS:-3000}
fine_tune_steps=${FINE_TUNE_STEPS:-1000}
screen_steps=${SCREEN_STEPS:-500}
seeds=${SEEDS:-1 2 3}
here=$(cd "$(dirname "$0")" && pwd)
results=${RESULTS:-$here/results}
[ -x "$qkv" ] || cargo build --release -p qkv-cli
mkdir -p "$out" "$results"
suffix=.lc.norm.tok

# Multi30k's recipe (examples/multi30k/run.sh): Wu et al.'s tiny model, joint BPE 8000, 4096-token batches. Two
# data-parallel shards on every machine: a run's numbers depend on its shard count, not on its threads, so the
# study gives the same results on 1 thread or 16, and a run resumed elsewhere continues bit for bit.
common=(--train-source "$data/train$suffix.en" --train-target "$data/train$suffix.de"
        --valid-source "$data/val$suffix.en" --valid-target "$data/val$suffix.de"
        --model-config "$here/../multi30k/tiny.json" --vocab-size 8000 --max-tokens 4096
        --lr-factor 1.25 --warmup 2000 --save-steps 250 --save-total-limit 2 --shards 2)
# p of feeding the gold token: Zhang et al.'s μ/(μ + exp(e/μ)) over epochs with μ = 12 (≈ 126 steps an epoch here:
# p goes 0.92 → 0.62 over 3000 steps), for every method that mixes.
schedule=(--sampling-schedule zhang --sampling-k 12 --sampling-unit epoch)

test_src=$data/test_2016_flickr$suffix.en
test_ref=$data/test_2016_flickr$suffix.de

# train NAME ARGS...: trains run NAME unless its results are in; resumes it when interrupted; then translates
# the test set with its best checkpoint and keeps the log and the translation.
train() {
    local name=$1; shift
    local dir=$out/$name
    if [ -f "$results/$name.beam5.de" ]; then return; fi
    if [ -f "$dir/training.json" ]; then
        echo "== resuming $name"; "$qkv" train translation --out "$dir" --resume
    else
        echo "== training $name"; "$qkv" train translation --out "$dir" "$@"
    fi
    "$qkv" translate --model "$dir/best" --beam 5 --input "$test_src" > "$out/$name.beam5.de.tmp"
    cp "$dir/log.jsonl" "$results/$name.log.jsonl"
    mv "$out/$name.beam5.de.tmp" "$results/$name.beam5.de"
}

# best validation BLEU of run NAME, from its log
val_bleu() { python3 - "$results/$1.log.jsonl" <<'PY'
import json, sys
best = max((r["val_bleu"] for r in map(json.loads, open(sys.argv[1])) if "val_bleu" in r), default=float("nan"))
print(best)
PY
}

# fine_tune NAME SEED STEPS ARGS...: run NAME, STEPS optimizer steps from seed SEED's teacher-forcing model
fine_tune() {
    local name=$1 seed=$2 budget=$3; shift 3
    [ -f "$results/$name.beam5.de" ] && return
    # the teacher-forcing checkpoint is gone when an earlier session trained it: train it again (bit for bit)
    if [ ! -d "$out/tf-s$seed/best" ]; then rm -f "$results/tf-s$seed.beam5.de"; teacher_forcing "$seed"; fi
    train "$name" --train-source "$data/train$suffix.en" --train-target "$data/train$suffix.de" \
        --valid-source "$data/val$suffix.en" --valid-target "$data/val$suffix.de" --max-tokens 4096 \
        --lr-factor 1.25 --warmup 2000 --save-steps 250 --save-total-limit 2 --shards 2 \
        --init-from "$out/tf-s$seed/best" --seed "$seed" --max-steps "$budget" "$@"
}
teacher_forcing() { train "tf-s$1" "${common[@]}" --seed "$1" --max-steps "$steps"; }

# Stage 0: the screen fine-tunes the first seed's teacher-forcing model (from scratch, SCREEN_STEPS would end in
# the warm-up, where every variant is near BLEU 0 and the choice would be noise)
first_seed=${seeds%% *}
teacher_forcing "$first_seed"
for mix in argmax softmax top-k sample; do
    fine_tune "screen-$mix" "$first_seed" "$screen_steps" --sampling scheduled --sampling-mix "$mix" \
        "${schedule[@]}"
done
mix=$(for m in argmax softmax top-k sample; do echo "$(val_bleu "screen-$m") $m"; done | sort -gr | head -1 | cut -d' ' -f2)
echo "scheduled sampling mix: $mix (best validation BLEU of $screen_steps fine-tuning steps from tf-s$first_seed)" \
    | tee "$results/screen.txt"

# Stage 1
for seed in $seeds; do
    teacher_forcing "$seed"
    fine_tune "tf-ft-s$seed" "$seed" "$fine_tune_steps"
    fine_tune "so-ft-s$seed" "$seed" "$fine_tune_steps" --sampling sentence-oracle "${schedule[@]}"
    train "ss-s$seed" "${common[@]}" --seed "$seed" --max-steps "$steps" --sampling scheduled --sampling-mix "$mix" \
        "${schedule[@]}"
    train "wo-s$seed" "${common[@]}" --seed "$seed" --max-steps "$steps" --sampling word-oracle "${schedule[@]}"
done

# Stage 2
python3 "$here/report.py" --results "$results" --ref "$test_ref" --qkv "$qkv" --seeds $seeds | tee "$results/results.md"
