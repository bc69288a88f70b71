"""The transformers side of `qkv bench generate`: GPT2LMHeadModel.generate, greedy, `new_tokens` after the same
prompt (ids 0, 7, 14, … modulo the vocabulary), with use_cache True and False, the prompt's forward pass, and
one cached decoding step after 16, 256 and 1000 cached positions."""

import argparse
import resource
import time

import torch
from transformers import GPT2LMHeadModel

from common import median, report, timed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--positions", default="16,256,1000")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    model = GPT2LMHeadModel.from_pretrained(args.model).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[i * 7 % vocab for i in range(args.prompt_tokens)]])
    n = args.new_tokens

    def run(use_cache):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, use_cache=use_cache, pad_token_id=0)
        assert out.shape[1] == args.prompt_tokens + n

    def prefill():
        with torch.no_grad():
            model(ids, use_cache=True)

    cached = timed(lambda: run(True), 1, args.reps)
    uncached = timed(lambda: run(False), 1, args.reps)
    prompt = timed(prefill, 2, max(args.reps, 5))
    decode_ms = (median(cached) - median(prompt)) * 1e3 / max(n - 1, 1)
    rate = lambda name, times: {"name": name, "unit": "tokens/s", "median": n / median(times), "best": n / times[0],
                                "higher_is_better": True}
    results = [
        rate(f"generate tokens/s cached ({n} new)", cached),
        rate(f"generate tokens/s uncached ({n} new)", uncached),
        {"name": f"prompt forward ({args.prompt_tokens} tokens)", "unit": "ms", "median": median(prompt) * 1e3,
         "best": prompt[0] * 1e3, "higher_is_better": False},
        {"name": "decode step cached, mean over the run", "unit": "ms", "median": decode_ms, "best": decode_ms,
         "higher_is_better": False},
    ]
    for position in map(int, args.positions.split(",")):
        context = torch.tensor([[i * 7 % vocab for i in range(position)]])
        with torch.no_grad():
            cache = model(context, use_cache=True).past_key_values
        step_ids = torch.tensor([[1]])

        def step():
            with torch.no_grad():
                model(step_ids, past_key_values=cache, use_cache=True)

        times = timed(step, 2, 10)
        results.append({"name": f"decode step at position {position}", "unit": "ms", "median": median(times) * 1e3,
                        "best": times[0] * 1e3, "higher_is_better": False})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    results.append({"name": "peak RSS generate", "unit": "MiB", "median": peak, "best": peak,
                    "higher_is_better": False})
    report("generate", results)


if __name__ == "__main__":
    main()
