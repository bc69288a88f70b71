#!/usr/bin/env bash
# huggingface_hub and qkv sharing one cache, both ways, against a fake Hub on loopback (tools/hub/interop.py).
# Makes its own venv with huggingface_hub from PyPI; builds qkv unless QKV names a binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
venv="${HOME}/.cache/qkv/hub-venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "huggingface_hub==2.4.0"
fi
qkv="${QKV:-}"
if [[ -z "$qkv" ]]; then
    cargo build --release --quiet -p qkv-cli
    qkv=target/release/qkv
fi
fixture=qkv/tests/fixtures/pytorch/sentence-transformers
"$venv/bin/python" tools/hub/interop.py "$qkv" "$fixture" "$fixture/sentences.txt"
