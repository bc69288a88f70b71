#!/usr/bin/env bash
# `qkv serve` under load, against the same model offline, in one run (loopback only, bounded in requests):
#   embeddings (MiniLM, one STS-B sentence per request) at 1, 8, 32 and 128 clients vs `qkv bench embed`;
#   completions (a random GPT-2 small, greedy, 64 tokens after a 16-token prompt) at 1, 4 and 16 streams vs
#   `qkv bench generate`'s single-stream tokens/s.
#
#   tools/bench/serve.sh [embeddings] [completions]     (default: both)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(embeddings completions)
cargo build --release --quiet --bin qkv
qkv="$root/target/release/qkv"
port="${PORT:-8093}"
echo "# qkv serve load — $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), qkv $(git rev-parse --short HEAD)"

serve() { # NAME=DIR: starts the server and waits until it answers
    "$qkv" serve --model "$1" --port "$port" --queue 512 >/tmp/qkv-serve-bench.log 2>&1 &
    server=$!
    for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return; sleep 0.5; done
    echo "the server did not start: $(cat /tmp/qkv-serve-bench.log)" >&2; exit 1
}
stop() { kill "$server"; wait "$server" 2>/dev/null || true; }

for part in "${parts[@]}"; do
    case "$part" in
        embeddings)
            minilm="$(tools/models/fetch_minilm.sh)"
            pairs="$root/../shared/data/stsb/dev.csv"
            echo "## offline: qkv bench embed"
            "$qkv" bench embed --model "$minilm" --pairs "$pairs"
            serve "minilm=$minilm"
            echo "## server: qkv bench load --endpoint embeddings"
            "$qkv" bench load --address "127.0.0.1:$port" --endpoint embeddings --model minilm --texts "$pairs" \
                --concurrency 1 8 32 128 --requests 1024
            stop ;;
        completions)
            gpt2="${XDG_CACHE_HOME:-$HOME/.cache}/qkv/gpt2-small-random"
            if [ ! -f "$gpt2/model.safetensors" ]; then
                venv="$(tools/fixtures/setup.sh)"
                "$venv/bin/python" tools/bench/make_gpt2_small.py "$gpt2"
            fi
            echo "## offline: qkv bench generate (one stream)"
            "$qkv" bench generate --model "$gpt2" --new-tokens 64 --positions 16
            ids="$(python3 -c "print(','.join(str(i * 7 % 50257) for i in range(16)))")" # bench generate's prompt
            serve "gpt=$gpt2"
            echo "## server: qkv bench load --endpoint completions"
            "$qkv" bench load --address "127.0.0.1:$port" --endpoint completions --model gpt --prompt-ids "$ids" \
                --max-tokens 64 --concurrency 1 4 16 --requests 32
            stop ;;
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done
