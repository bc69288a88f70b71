"""The PyTorch side of `qkv bench train`: the same character-level GPT (pre-LN blocks, causal self-attention,
exact GELU, no Linear biases, LayerNorm with bias, tied LM head), the same batches and optimiser settings, timed
phase by phase. Attention uses F.scaled_dot_product_attention, PyTorch's fastest path."""

import argparse
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import median, report

VOCAB = 65
# The fastest optimiser setup a PyTorch user has: fused AdamW kernels (CPU-capable in this torch; on the shared
# 2-core VM the clip+optimizer phase of train-small took ≈9 ms fused against ≈17 ms foreach) and a foreach
# gradient-norm clip. --impl foreach keeps the multi-tensor kernels instead. Same update as the default loop.
IMPLS = {"foreach": {"foreach": True}, "fused": {"fused": True}}
IMPL = "fused"
SIZES = {
    "small": dict(layers=4, heads=4, width=128, block=64, batch=12, warmup=5, steps=50),
    "large": dict(layers=6, heads=6, width=384, block=256, batch=12, warmup=2, steps=10),
}


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.fc_out = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, layers, heads, width, block):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, width)
        self.wpe = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=SIZES, default="small")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--impl", choices=IMPLS, default=IMPL, help="AdamW and clipping kernels (see IMPL)")
    args = parser.parse_args()
    s = SIZES[args.config]
    steps = args.steps or s["steps"]
    torch.manual_seed(1337)
    model = Gpt(s["layers"], s["heads"], s["width"], s["block"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99), eps=1e-8, **IMPLS[args.impl],
    )
    phases = []
    for step in range(s["warmup"] + steps):
        ids = torch.randint(0, VOCAB, (s["batch"], s["block"] + 1))
        inputs, targets = ids[:, :-1], ids[:, 1:].reshape(-1)
        start = time.perf_counter()
        loss = F.cross_entropy(model(inputs).view(-1, VOCAB), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        done = time.perf_counter()
        if step >= s["warmup"]:
            phases.append((backward - start, done - backward))
    label = args.config
    tokens = s["batch"] * s["block"]
    totals = sorted(sum(p) for p in phases)
    results = [
        {"name": f"train step {label}", "unit": "ms", "median": median(totals) * 1e3, "best": totals[0] * 1e3,
         "higher_is_better": False},
        {"name": f"train tokens/s {label}", "unit": "tokens/s", "median": tokens / median(totals),
         "best": tokens / totals[0], "higher_is_better": True},
    ]
    for i, phase in enumerate(["forward+backward", "clip+optimizer"]):
        times = sorted(p[i] for p in phases)
        results.append({"name": f"train {phase} {label}", "unit": "ms", "median": median(times) * 1e3,
                        "best": times[0] * 1e3, "higher_is_better": False})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    results.append({"name": f"peak RSS {label}", "unit": "MiB", "median": peak, "best": peak, "higher_is_better": False})
    report("train", results)


if __name__ == "__main__":
    main()
