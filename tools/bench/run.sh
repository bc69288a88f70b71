#!/usr/bin/env bash
# Runs qkv and its PyTorch reference on the same workloads, one after the other, and prints a markdown table of
# medians and ratios per workload.
#
#   tools/bench/run.sh [WORKLOAD ...]      workloads: gemm train-small train-large translation embed generate
#                                          (default: all)
#                                          optional, not in the default: ort-embed (embed against ONNX Runtime,
#                                          fp32 and dynamic int8; qkv in f32, int8 and bf16), llamacpp-generate
#                                          (generate against llama.cpp, GGUF f32 and q8_0; qkv in f32, int8 and
#                                          bf16)
#
# Threads: both sides use THREADS (default: all cores). PyTorch comes from the fixtures venv (created if missing);
# the optional workloads' references from tools/fixtures/.venv-anchors (requirements-anchors.txt), llama.cpp built
# once by tools/bench/llamacpp.sh. QKV=path/to/qkv uses that binary instead of building one with cargo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
qkv="${QKV:+$(realpath "$QKV")}"
cd "$root"
threads="${THREADS:-$(nproc)}"
workloads=("$@")
[ ${#workloads[@]} -eq 0 ] && workloads=(gemm train-small train-large translation embed generate)

venv="$(tools/fixtures/setup.sh)"
if [ -z "$qkv" ]; then
    cargo build --release --quiet --bin qkv
    qkv="$root/target/release/qkv"
fi
anchors() { tools/fixtures/setup.sh ../bench/requirements-anchors.txt .venv-anchors; }
out="$(mktemp -d)"
echo "# qkv vs PyTorch — $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $threads threads each"
echo "# torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), qkv ${QKV:+$qkv, this checkout }$(git rev-parse --short HEAD)"
# The host and its limits (read bandwidth, FMA peak), so that every figure below can be read against them.
tools/bench/host.sh "$qkv" "$threads"
for workload in "${workloads[@]}"; do
    ref_venv="$venv"
    label=PyTorch
    qkv_dtypes=()   # reduced-precision runs of qkv joined to the same table (their rows carry the dtype)
    alias=""        # qkv's 8-bit rows paired with the reference's (table.py's OURS=THEIRS)
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
        ort-embed)
            minilm="$(tools/models/fetch_minilm.sh)"
            ref_venv="$(anchors)"
            label="ONNX Runtime"
            qkv_args=(embed --model "$minilm" --pairs "$root/../shared/data/stsb/dev.csv")
            qkv_dtypes=(int8 bf16)
            py_args=(ort_embed.py --model "$minilm" --pairs "$root/../shared/data/stsb/dev.csv" --threads "$threads")
            echo "# onnxruntime $("$ref_venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')" ;;
        llamacpp-generate)
            gpt2="${XDG_CACHE_HOME:-$HOME/.cache}/qkv/gpt2-small-random"
            [ -f "$gpt2/model.safetensors" ] || "$venv/bin/python" tools/bench/make_gpt2_small.py "$gpt2"
            ref_venv="$(anchors)"
            label=llama.cpp
            llama_cpp="$(tools/bench/llamacpp.sh "$ref_venv")"
            qkv_args=(generate --model "$gpt2")
            qkv_dtypes=(int8 bf16)
            alias="int8=q8_0"
            py_args=(llamacpp_generate.py --model "$gpt2" --llama-cpp "$llama_cpp" --threads "$threads")
            echo "# llama-cpp-python $("$ref_venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)') (llama.cpp built from its sdist)" ;;
        *) echo "unknown workload $workload" >&2; exit 2 ;;
    esac
    "$qkv" --threads "$threads" bench "${qkv_args[@]}" > "$out/qkv.json"
    for dtype in "${qkv_dtypes[@]}"; do
        "$qkv" --threads "$threads" bench "${qkv_args[@]}" --dtype "$dtype" > "$out/qkv-$dtype.json"
        "$venv/bin/python" -c 'import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
a["results"] += b["results"]
json.dump(a, open(sys.argv[1], "w"))' "$out/qkv.json" "$out/qkv-$dtype.json"
    done
    (cd tools/bench && OMP_NUM_THREADS="$threads" "$ref_venv/bin/python" "${py_args[@]}" > "$out/ref.json")
    "$venv/bin/python" tools/bench/table.py "$out/qkv.json" "$out/ref.json" "$label" $alias
done
