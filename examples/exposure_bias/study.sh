#!/usr/bin/env bash
# Exposure bias on Multi30k en→de (tok view), issue 15's study: teacher forcing against scheduled sampling, the
# word oracle and the sentence oracle, 3 seeds each at the same budget of optimizer steps, scored on
# test_2016_flickr (beam 5) with paired bootstrap against teacher forcing and BLEU by reference length.
#
#   examples/exposure_bias/study.sh [OUT]        (default runs/exposure-bias)
#
# Long (hours on 2 cores): every run checkpoints every SAVE_STEPS, and the script can be killed and started again
# at any time: finished runs are skipped, interrupted ones resumed bit for bit. Environment: MULTI30K (default
# ../shared/data/multi30k), QKV (default target/release/qkv), STEPS (training budget per run, default 3000),
# FINE_TUNE_STEPS (default 1000), SCREEN_STEPS (default 1000), SEEDS (default "1 2 3").
#
# Stages:
#  0. screen scheduled sampling's four mixes (argmax, softmax, top-k, sample) for SCREEN_STEPS on seed 1 and keep
#     the one with the best validation BLEU;
#  1. per seed: teacher forcing, scheduled sampling (that mix), word oracle — STEPS each from scratch;
#  2. per seed: the sentence oracle as a FINE_TUNE_STEPS fine-tune of that seed's teacher-forcing model, and, as its
#     control, teacher forcing fine-tuned for the same steps;
#  3. translate test_2016_flickr with every model (beam 5), score, paired bootstrap, BLEU by length.
set -euo pipefail
out=${1:-runs/exposure-bias}
data=${MULTI30K:-../shared/data/multi30k}/tok
qkv=${QKV:-target/release/qkv}
steps=${STEPS:-3000}
fine_tune_steps=${FINE_TUNE_STEPS:-1000}
screen_steps=${SCREEN_STEPS:-1000}
seeds=${SEEDS:-1 2 3}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$qkv" ] || cargo build --release -p qkv-cli
mkdir -p "$out"
suffix=.lc.norm.tok

# Multi30k's recipe (examples/multi30k/run.sh): Wu et al.'s tiny model, joint BPE 8000, 4096-token batches.
common=(--train-source "$data/train$suffix.en" --train-target "$data/train$suffix.de"
        --valid-source "$data/val$suffix.en" --valid-target "$data/val$suffix.de"
        --model-config "$here/../multi30k/tiny.json" --vocab-size 8000 --max-tokens 4096
        --lr-factor 1.25 --warmup 2000 --save-steps 250 --save-total-limit 2)
# p of feeding the gold token: Zhang et al.'s μ/(μ + exp(e/μ)) over epochs with μ = 12 (≈ 126 steps an epoch here:
# p goes 0.92 → 0.62 over 3000 steps), for every method that mixes.
schedule=(--sampling-schedule zhang --sampling-k 12 --sampling-unit epoch)

# train NAME ARGS...: trains runs NAME unless done; resumes it when interrupted.
train() {
    local name=$1; shift
    local dir=$out/$name
    if [ -f "$dir/done" ]; then return; fi
    if [ -f "$dir/training.json" ]; then
        echo "== resuming $name"; "$qkv" train translation --out "$dir" --resume
    else
        echo "== training $name"; "$qkv" train translation --out "$dir" "$@"
    fi
    touch "$dir/done"
}

# best validation BLEU of run NAME, from its log
val_bleu() { python3 - "$out/$1/log.jsonl" <<'PY'
import json, sys
best = max((r["val_bleu"] for r in map(json.loads, open(sys.argv[1])) if "val_bleu" in r), default=float("nan"))
print(best)
PY
}

# Stage 0
for mix in argmax softmax top-k sample; do
    train "screen-$mix" "${common[@]}" --seed 1 --max-steps "$screen_steps" --sampling scheduled \
        --sampling-mix "$mix" "${schedule[@]}"
done
mix=$(for m in argmax softmax top-k sample; do echo "$(val_bleu "screen-$m") $m"; done | sort -gr | head -1 | cut -d' ' -f2)
echo "scheduled sampling mix: $mix (best validation BLEU after $screen_steps steps)" | tee "$out/screen.txt"

# Stages 1 and 2
for seed in $seeds; do
    train "tf-s$seed" "${common[@]}" --seed "$seed" --max-steps "$steps"
    train "ss-s$seed" "${common[@]}" --seed "$seed" --max-steps "$steps" --sampling scheduled --sampling-mix "$mix" \
        "${schedule[@]}"
    train "wo-s$seed" "${common[@]}" --seed "$seed" --max-steps "$steps" --sampling word-oracle "${schedule[@]}"
    for method in tf so; do
        sampling=(); [ "$method" = so ] && sampling=(--sampling sentence-oracle "${schedule[@]}")
        train "$method-ft-s$seed" --train-source "$data/train$suffix.en" --train-target "$data/train$suffix.de" \
            --valid-source "$data/val$suffix.en" --valid-target "$data/val$suffix.de" --max-tokens 4096 \
            --lr-factor 1.25 --warmup 2000 --save-steps 250 --save-total-limit 2 \
            --init-from "$out/tf-s$seed/best" --seed "$seed" --max-steps "$fine_tune_steps" "${sampling[@]}"
    done
done

# Stage 3
test_src=$data/test_2016_flickr$suffix.en
test_ref=$data/test_2016_flickr$suffix.de
for run in "$out"/*/; do
    name=$(basename "$run")
    [ -f "$run/done" ] && [ ! -f "$out/$name.beam5.de" ] || continue
    "$qkv" translate --model "$run/best" --beam 5 --input "$test_src" > "$out/$name.beam5.de"
done
{
    echo "# Exposure bias on Multi30k (test_2016_flickr, beam 5, BLEU over tokens) — $(date -u +%Y-%m-%d), qkv $(git rev-parse --short HEAD)"
    for seed in $seeds; do
        echo "## seed $seed: paired bootstrap against teacher forcing"
        "$qkv" bleu --tokenize none --ref "$test_ref" --paired-bs \
            --hyp "$out/tf-s$seed.beam5.de" "$out/ss-s$seed.beam5.de" "$out/wo-s$seed.beam5.de" || true
        echo "## seed $seed: sentence oracle against teacher forcing, both fine-tuned for $fine_tune_steps steps"
        "$qkv" bleu --tokenize none --ref "$test_ref" --paired-bs \
            --hyp "$out/tf-ft-s$seed.beam5.de" "$out/so-ft-s$seed.beam5.de" || true
        echo "## seed $seed: BLEU by reference length"
        "$qkv" bleu --tokenize none --ref "$test_ref" --by-length \
            --hyp "$out/tf-s$seed.beam5.de" "$out/ss-s$seed.beam5.de" "$out/wo-s$seed.beam5.de" \
            "$out/tf-ft-s$seed.beam5.de" "$out/so-ft-s$seed.beam5.de" || true
    done
} | tee "$out/results.md"
