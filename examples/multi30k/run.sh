#!/usr/bin/env bash
# Multi30k en→de on a 2-core CPU: train for a fixed time whose last minutes fade the learning rate to 0, average
# the last 10 epoch checkpoints, translate test_2016_flickr with beam 5 and score it.
#
#   examples/multi30k/run.sh tok [OUT]   # lowercased Moses-tokenized view; BLEU over its tokens (as the papers do)
#   examples/multi30k/run.sh raw [OUT]   # raw cased text; sacreBLEU (13a) on the detokenized output
#
# Environment: MULTI30K (data directory, default ../shared/data/multi30k), MINUTES (training time limit,
# default 60), DECAY_MINUTES (the last minutes of it over which the learning rate fades linearly to 0, default
# 30% of MINUTES; 0 for none), QKV (binary, default target/release/qkv), QKV_THREADS, LR_FACTOR (default 1.25;
# the 2026-11-22 BLEU runs used 2.5, see below), SEED (default 1), MAX_STEPS and DECAY_STEPS (a budget of steps
# instead, whose last DECAY_STEPS fade the rate; it replaces DECAY_MINUTES), TRAIN_ARGS (more flags for `qkv
# train translation`, e.g. "--eval-epochs 5"), MODEL_CONFIG (default tiny.json).
set -euo pipefail
view=${1:?usage: run.sh tok|raw [OUT]}
out=${2:-runs/multi30k-$view}
data=${MULTI30K:-../shared/data/multi30k}
qkv=${QKV:-target/release/qkv}
minutes=${MINUTES:-60}
lr_factor=${LR_FACTOR:-1.25}
seed=${SEED:-1}
# A fade in minutes ends the run annealed however fast the host is; a step budget fits one host's speed only.
if [ -n "${MAX_STEPS:-}" ]; then
  budget=(--max-steps "$MAX_STEPS" --num-decay-steps "${DECAY_STEPS:-0}")
else
  decay_minutes=${DECAY_MINUTES:-$(awk "BEGIN { print 0.3 * $minutes }")}
  budget=(--decay-minutes "$decay_minutes")
  [ "$decay_minutes" = 0 ] && budget=()
fi
here=$(dirname "$0")
case $view in
  tok) dir=$data/tok; suffix=.lc.norm.tok; tokenize=none ;;
  raw) dir=$data; suffix=; tokenize=13a ;;
  *) echo "run.sh: view must be tok or raw, not '$view'" >&2; exit 2 ;;
esac
[ -x "$qkv" ] || cargo build --release -p qkv-cli

start=$(date +%s)
# The recipe of Wu et al. (ACL 2021) for a 4-layer, 128-wide Transformer: joint BPE, shared embeddings,
# dropout 0.3, label smoothing 0.1, 4096-token batches (8192 an update on their two GPUs), Adam after 2000
# warm-up steps; here stopped by the clock instead of by patience. Their peak lr (factor 2.5, ≈ 0.0049) left
# three of five runs stuck at validation BLEU ≈ 12; half of it (1.25) did not stick (BENCHMARKS.md, "the peak
# learning rate decides").
"$qkv" train translation --out "$out/run" \
  --train-src "$dir/train$suffix.en" --train-tgt "$dir/train$suffix.de" \
  --valid-src "$dir/val$suffix.en" --valid-tgt "$dir/val$suffix.de" \
  --model-config "${MODEL_CONFIG:-$here/tiny.json}" --vocab-size 8000 --max-tokens 4096 \
  --lr-factor "$lr_factor" --warmup 2000 --epochs 1000 --time-limit "$minutes" --keep-last 10 --seed "$seed" "${budget[@]}" ${TRAIN_ARGS:-}
"$qkv" average --run "$out/run" --last 10 --out "$out/averaged"
trained=$(date +%s)

test_src=$dir/test_2016_flickr$suffix.en
test_ref=$dir/test_2016_flickr$suffix.de
for model in best averaged; do
  path=$out/$model; [ "$model" = best ] && path=$out/run/best
  for beam in 1 5; do
    hyp=$out/test.$model.beam$beam.de
    t0=$(date +%s.%N)
    "$qkv" translate --model "$path" --beam "$beam" --input "$test_src" > "$hyp"
    t1=$(date +%s.%N)
    printf '%-8s beam %s (%.1f s): ' "$model" "$beam" "$(awk "BEGIN { print $t1 - $t0 }")"
    "$qkv" bleu --hyp "$hyp" --ref "$test_ref" --tokenize "$tokenize"
  done
done
echo "training + averaging: $(( (trained - start) / 60 )) min $(( (trained - start) % 60 )) s"
