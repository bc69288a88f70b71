#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 600), two at a time, seeded with the
# fixtures the target's input imitates, and prints each target's executions, coverage and CPU seconds.
#
#   fuzz/run.sh [TARGET ...]       needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)
#
# Limits: 2 GB per allocation and 4 GB resident (a bigger one is a finding: the loaders must refuse before they
# allocate), 10 s per input. Crashes land in fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${SECONDS_EACH:-600}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config safetensors shard_index tokenizer tabular pytorch forward_input)
fixtures=../qkv/tests/fixtures
stsb=../../shared/data/stsb

seed() {
    local target=$1; local dir=corpus/$target
    mkdir -p "$dir"
    case $target in
        config) cp $fixtures/bert/*/config.json "$dir/" 2>/dev/null || true
                for f in $fixtures/bert/*/config.json $fixtures/gpt2/*/config.json; do
                    cp "$f" "$dir/$(echo "$f" | tr / _)"; done ;;
        safetensors) cp $fixtures/bert/BertModel/model.safetensors "$dir/bert" ;;
        shard_index) cp $fixtures/gpt2/GPT2LMHeadModel/model.safetensors.index.json "$dir/index" ;;
        tokenizer) for f in $fixtures/bert/*/tokenizer.json $fixtures/gpt2/*/tokenizer.json; do
                       [ -f "$f" ] && cp "$f" "$dir/$(echo "$f" | tr / _)"; done ;;
        tabular) [ -f $stsb/dev.csv ] && head -20 $stsb/dev.csv > "$dir/stsb.csv"
                 printf 'label\tsentence\n1\ta fine sentence\n0\t"quoted, with a tab\t"\n' > "$dir/cola.tsv"
                 head -c 2000 ../qkv/tests/fixtures/metrics.json > "$dir/json"
                 cp $fixtures/tables/pairs.parquet $fixtures/tables/single.parquet "$dir/" ;;
        forward_input) cp $fixtures/bert/BertModel/io.safetensors "$dir/io" ;;
        pytorch) cp $fixtures/pytorch/BertModel/pytorch_model.bin "$dir/bert" ;;
    esac
}

fuzz() {
    local target=$1
    seed "$target"
    /usr/bin/time -f "$target: %U s user, %S s system" \
        cargo +nightly fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" \
        -rss_limit_mb=4096 -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        > "logs/$target.log" 2>&1 || echo "$target: stopped with a finding, see logs/$target.log"
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^stat::new_units_added" "logs/$target.log" |
        sed "s/^/$target: /" || true
    grep -E "#[0-9]+.*(DONE|cov:)" "logs/$target.log" | tail -1 | sed "s/^/$target: /" || true
    tail -1 "logs/$target.log"
}

mkdir -p logs
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    fuzz "${targets[i]}" &
    [ $((i + 1)) -lt ${#targets[@]} ] && fuzz "${targets[i + 1]}" &
    wait
done
