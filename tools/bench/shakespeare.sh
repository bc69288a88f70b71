#!/usr/bin/env bash
# Tiny Shakespeare, character level, nanoGPT's CPU configuration: `qkv train lm` with its defaults, then the
# PyTorch reference (tools/bench/shakespeare_char.py: same model, data, schedule and validation windows), one
# after the other with the same threads. Prints each side's wall time, median ms per step, final validation
# loss and a 300-character sample.
#
#   tools/bench/shakespeare.sh [OUT]     (default OUT: runs/shakespeare)
#
# Environment: TEXT (default ../shared/data/tinyshakespeare/input.txt), THREADS (default: all cores).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
text="${TEXT:-$root/../shared/data/tinyshakespeare/input.txt}"
threads="${THREADS:-$(nproc)}"
out="${1:-runs/shakespeare}"
venv="$(tools/fixtures/setup.sh)"
cargo build --release --quiet --bin qkv
rm -rf "$out"

echo "== qkv $(git rev-parse --short HEAD), $threads threads"
start=$(date +%s.%N)
./target/release/qkv --threads "$threads" train lm --text "$text" --out "$out"
end=$(date +%s.%N)
"$venv/bin/python" - "$out/log.jsonl" "$start" "$end" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
steps = sorted(r["tokens"] / r["tokens_per_s"] * 1e3 for r in records if r["kind"] == "train")
evals = [r for r in records if r["kind"] == "eval"]
print(json.dumps({"implementation": "qkv", "wall_s": float(sys.argv[3]) - float(sys.argv[2]),
                  "median_step_ms": steps[len(steps) // 2], "final_val_loss": evals[-1]["val_loss"],
                  "best_val_loss": min(r["val_loss"] for r in evals)}))
PY
echo "sample (qkv generate --seed 0 --slide, prompt: a newline):"
./target/release/qkv --threads "$threads" generate --model "$out/best" --prompt $'\n' --max-new-tokens 300 --seed 0 --ignore-eos --slide

echo "== PyTorch, $threads threads"
OMP_NUM_THREADS="$threads" "$venv/bin/python" tools/bench/shakespeare_char.py --text "$text"
