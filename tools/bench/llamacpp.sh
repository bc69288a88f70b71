#!/usr/bin/env bash
# Builds llama.cpp once, for CPU, from the llama-cpp-python sdist on PyPI (the binding vendors llama.cpp with its
# convert_hf_to_gguf.py and gguf-py), caches the wheel under ~/.cache/qkv/llama-cpp/VERSION/, installs it into
# VENV if it is not there yet, and prints the vendored llama.cpp source directory (for the converter).
#
#   tools/bench/llamacpp.sh VENV
#
# GGML_NATIVE: the build is tuned for this machine's CPU, as a llama.cpp user would build it; delete the cache
# directory to rebuild on another machine.
set -euo pipefail
venv="$1"
version=0.3.36
cache="${QKV_CACHE:-$HOME/.cache/qkv}/llama-cpp/$version"
sdist="$cache/llama_cpp_python-$version.tar.gz"
src="$cache/llama_cpp_python-$version"
mkdir -p "$cache/wheels"
if [ ! -f "$sdist" ]; then
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$cache" "llama-cpp-python==$version" >&2
fi
[ -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ] || tar xzf "$sdist" -C "$cache"
wheel="$(ls "$cache"/wheels/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
    echo "llamacpp.sh: building llama-cpp-python $version (CPU, -march=native); this takes a while" >&2
    start=$(date +%s)
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
        python3 -m pip wheel --quiet --no-deps --wheel-dir "$cache/wheels" "$sdist" >&2
    echo "llamacpp.sh: built in $(( $(date +%s) - start )) s" >&2
    wheel="$(ls "$cache"/wheels/llama_cpp_python-"$version"-*.whl | head -1)"
fi
if ! "$venv/bin/python" -c "import llama_cpp; assert llama_cpp.__version__ == '$version'" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --no-deps --force-reinstall "$wheel" >&2
fi
echo "$src/vendor/llama.cpp"
