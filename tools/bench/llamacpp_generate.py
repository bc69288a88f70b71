"""llama.cpp as a second reference for `qkv bench generate` (run.sh's optional workload llamacpp-generate).

The benchmark's random GPT-2 small is converted once to GGUF f32 and q8_0 with the convert_hf_to_gguf.py vendored
in the llama-cpp-python sdist (--outtype f32 / q8_0), cached under ~/.cache/qkv/gguf/. Timing goes through the
llama-cpp-python binding built from that same sdist (tools/bench/llamacpp.sh): `Llama.eval` on the prompt of ids
0, 7, 14, … modulo the vocabulary (16 tokens), then greedy decoding by argmax over the last logits, one `eval` per
token, for 128 new tokens — one prompt pass and 127 single-token passes, the shape `qkv bench generate` and
generate.py time. EOS is never checked (the model is random), so every run makes all 128 tokens. The rows are
generate.py's cached ones, with ", q8_0" / " (q8_0)" in the q8_0 rows' names. Models load with use_extra_bufts
off (see without_extra_buffer_types), so q8_0 runs llama.cpp's plain CPU kernels, not the AMX/repacked ones.

The checkpoint has no tokenizer, which the converter needs: a stand-in byte-level BPE of the same size (256 bytes,
50 000 merges of byte pairs, <|endoftext|>) is written next to symlinks of its weights, and the converter's
pre-tokenizer detection (a hash of a known tokenizer's output) is told "gpt-2". Decoding from ids never uses it.
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from common import median, report, timed

CACHE = Path(os.environ.get("QKV_CACHE", Path.home() / ".cache" / "qkv")) / "gguf"


def byte_symbols():
    """GPT-2's printable stand-ins for the 256 bytes (bytes_to_unicode), the base of any byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for b in range(256):
        if b in printable:
            codes.append(b)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_stand_in_tokenizer(directory, vocab_size):
    """vocab.json + merges.txt of `vocab_size` tokens: bytes, then byte pairs, then <|endoftext|> last."""
    base = byte_symbols()
    pairs = [(a, b) for a in base for b in base][: vocab_size - len(base) - 1]
    tokens = base + [a + b for a, b in pairs] + ["<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs),
                                          encoding="utf-8")


def staging_dir(model_dir, work):
    """The checkpoint's weights (symlinked), its config with the `n_ctx` the converter reads (recent transformers
    save only n_positions, its twin), and the stand-in tokenizer, in a directory the converter can read."""
    work.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(model_dir):
        link = work / name
        if name != "config.json" and not link.exists():
            link.symlink_to(Path(model_dir).resolve() / name)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config.setdefault("n_ctx", config["n_positions"])
    (work / "config.json").write_text(json.dumps(config, indent=2))
    if not (work / "merges.txt").exists():
        write_stand_in_tokenizer(work, config["vocab_size"])
    return work


def convert(llama_cpp, staged, outfile, outtype):
    """Runs the vendored convert_hf_to_gguf.py in-process, with the pre-tokenizer detection answered "gpt-2"."""
    sys.path.insert(0, str(llama_cpp))
    import convert_hf_to_gguf
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    tmp = outfile.with_suffix(".tmp.gguf")
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(staged), "--outfile", str(tmp), "--outtype", outtype]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON report
            convert_hf_to_gguf.main()
    finally:
        sys.argv = argv
    os.replace(tmp, outfile)


def cached_gguf(model_dir, llama_cpp, outtype):
    """The GGUF of `model_dir` at `outtype`, converted on first use."""
    stem = Path(model_dir).name
    outfile = CACHE / f"{stem}-{outtype}.gguf"
    if not outfile.exists():
        print(f"llamacpp_generate: converting {outfile}", file=sys.stderr)
        convert(llama_cpp, staging_dir(model_dir, CACHE / f"{stem}-hf"), outfile, outtype)
    return outfile


def without_extra_buffer_types():
    """Loads models with use_extra_bufts off (no CPU weight repacking, no AMX buffers). With them on, the q8_0
    prompt pass segfaulted in llama_decode on the AMX-capable (amx_int8) VM this was written on; f32 is unaffected.
    `Llama` has no argument for it, so the default model parameters it starts from are patched."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params


def load(path, threads, context):
    """A llama.cpp context of `context` positions with `threads` threads for decoding and for the prompt."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=threads, n_threads_batch=threads,
                 logits_all=False, verbose=False)


def last_logits(llm):
    """The last position's logits, read from llama.cpp itself: with logits_all off, `Llama.eval` no longer copies
    them into `Llama.scores` (sampling moved into llama.cpp's sampler)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def greedy(llm, prompt, new_tokens):
    """Greedy decoding from an empty cache: the prompt pass gives the first token, each further token one pass."""
    llm.reset()
    llm.eval(prompt)
    tokens = []
    while True:
        tokens.append(int(np.argmax(last_logits(llm))))
        if len(tokens) == new_tokens:
            return tokens
        llm.eval(tokens[-1:])


def prefill(llm, prompt):
    llm.reset()
    llm.eval(prompt)


def measure(llm, prompt, new_tokens, reps, tag, paren):
    """generate.py's cached rows for one model file; `tag` / `paren` tell the q8_0 rows apart."""
    def run():
        assert len(greedy(llm, prompt, new_tokens)) == new_tokens

    cached = timed(run, 1, reps)
    prompt_times = timed(lambda: prefill(llm, prompt), 2, max(reps, 5))
    decode_ms = (median(cached) - median(prompt_times)) * 1e3 / max(new_tokens - 1, 1)
    return [
        {"name": f"generate tokens/s cached ({new_tokens} new{tag})", "unit": "tokens/s",
         "median": new_tokens / median(cached), "best": new_tokens / cached[0], "higher_is_better": True},
        {"name": f"prompt forward ({len(prompt)} tokens{tag})", "unit": "ms", "median": median(prompt_times) * 1e3,
         "best": prompt_times[0] * 1e3, "higher_is_better": False},
        {"name": f"decode step cached, mean over the run{paren}", "unit": "ms", "median": decode_ms,
         "best": decode_ms, "higher_is_better": False},
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="GPT-2 directory (make_gpt2_small.py)")
    parser.add_argument("--llama-cpp", required=True, help="llama.cpp source directory (llamacpp.sh prints it)")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    without_extra_buffer_types()
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    prompt = [i * 7 % vocab for i in range(args.prompt_tokens)]
    context = args.prompt_tokens + args.new_tokens
    results = []
    for outtype, tag, paren in (("f32", "", ""), ("q8_0", ", q8_0", " (q8_0)")):
        llm = load(cached_gguf(args.model, args.llama_cpp, outtype), args.threads, context)
        results += measure(llm, prompt, args.new_tokens, args.reps, tag, paren)
        llm.close()
    report("generate", results, threads=args.threads)


if __name__ == "__main__":
    main()
