#!/usr/bin/env bash
# Runs qkv and its PyTorch reference on the same workloads, one after the other, and prints a markdown table of
# medians and ratios per workload.
#
#   tools/bench/run.sh [WORKLOAD ...]      workloads: gemm train-small train-large translation embed generate
#                                          (default: all)
#
# Threads: both sides use THREADS (default: all cores). PyTorch comes from the fixtures venv (created if missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
threads="${THREADS:-$(nproc)}"
workloads=("$@")
[ ${#workloads[@]} -eq 0 ] && workloads=(gemm train-small train-large translation embed generate)

venv="$(tools/fixtures/setup.sh)"
cargo build --release --quiet --bin qkv
out="$(mktemp -d)"
echo "# qkv vs PyTorch — $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $threads threads each"
echo "# torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), qkv $(git rev-parse --short HEAD)"
for workload in "${workloads[@]}"; do
    case "$workload" in
        gemm) qkv_args=(gemm); py_args=(gemm.py) ;;
        train-small) qkv_args=(train --config small); py_args=(train_gpt.py --config small) ;;
        train-large) qkv_args=(train --config large); py_args=(train_gpt.py --config large) ;;
        translation) qkv_args=(translation); py_args=(train_translation.py) ;;
        embed)
            minilm="$(tools/models/fetch_minilm.sh)"
            qkv_args=(embed --model "$minilm" --pairs "$root/../shared/data/stsb/dev.csv")
            py_args=(embed.py --model "$minilm" --pairs "$root/../shared/data/stsb/dev.csv") ;;
        generate)
            gpt2="${XDG_CACHE_HOME:-$HOME/.cache}/qkv/gpt2-small-random"
            [ -f "$gpt2/model.safetensors" ] || "$venv/bin/python" tools/bench/make_gpt2_small.py "$gpt2"
            qkv_args=(generate --model "$gpt2")
            py_args=(generate.py --model "$gpt2") ;;
        *) echo "unknown workload $workload" >&2; exit 2 ;;
    esac
    ./target/release/qkv --threads "$threads" bench "${qkv_args[@]}" > "$out/qkv.json"
    (cd tools/bench && OMP_NUM_THREADS="$threads" "$venv/bin/python" "${py_args[@]}" > "$out/torch.json")
    "$venv/bin/python" tools/bench/table.py "$out/qkv.json" "$out/torch.json"
done
