#!/usr/bin/env bash
# Prints the host a benchmark ran on, as markdown lines: CPU vendor, model name, family and model, the vector
# and matrix extensions that decide which kernels run (avx2, fma, avx512f, avx512_bf16, amx), cores, and the
# machine's measured limits (`qkv bench machine`: read bandwidth and f32 FMA peak), so every figure can be read
# against its host.
#
#   tools/bench/host.sh QKV_BINARY THREADS
set -euo pipefail
qkv=$1
threads=$2
vendor=$(grep -m1 '^vendor_id' /proc/cpuinfo | cut -d: -f2 | xargs)
model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | xargs)
# Family and model tell the generation where the model name does not ("AMD EPYC": family 25 model 17 is Zen 4,
# whose 512-bit FMA issues once a cycle; family 26 is Zen 5).
family=$(grep -m1 '^cpu family' /proc/cpuinfo | cut -d: -f2 | xargs)
number=$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | xargs)
flags=$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)
present=()
for flag in avx2 fma avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_int8; do
    [[ " $flags " == *" $flag "* ]] && present+=("$flag")
done
echo "# host: $vendor, $model (family $family, model $number), $(nproc) cores; flags: ${present[*]:-none of avx2/avx512/amx}"
"$qkv" --threads "$threads" bench machine 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)["results"]
print("# limits: " + "; ".join("%s %.1f %s (median %.1f)" % (r["name"], r["best"], r["unit"], r["median"]) for r in rows))
'
