"""PyTorch reference for `qkv train lm` on Tiny Shakespeare, character level, nanoGPT's CPU configuration: the
same GPT-2 model as qkv trains (4 layers, 4 heads, 128 wide, 64 positions, biases, tanh GELU, tied LM head,
no dropout, N(0, 0.02) initialisation), the same data (characters sorted into ids, the first 90% for training),
the same schedule and optimiser (AdamW β 0.9/0.99, weight decay 0.1 on matrices, lr 1e-3 warmed up over 100
steps then cosine to 1e-4 at step 2000, clipping at 1), batches of 12 random windows, and the same validation
windows (eval_batches × batch evenly spaced over the held-out text).

Prints a line per evaluation and a JSON summary: wall time, median ms per step, final validation loss, sample.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, layers, heads, width, block):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def learning_rate(it, warmup, decay_steps, peak, minimum):
    """nanoGPT's get_lr(it)."""
    if it < warmup:
        return peak * (it + 1) / (warmup + 1)
    if it > decay_steps:
        return minimum
    ratio = (it - warmup) / (decay_steps - warmup)
    return minimum + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - minimum)


def spread_windows(length, block, n):
    last = length - block - 1
    return sorted(set(i * last // (n - 1) for i in range(n)))


@torch.no_grad()
def spread_loss(model, data, block, batch, n):
    model.eval()
    offsets = spread_windows(len(data), block, n)
    total = 0.0
    for i in range(0, len(offsets), batch):
        chunk = offsets[i:i + batch]
        x = torch.stack([data[o:o + block] for o in chunk])
        y = torch.stack([data[o + 1:o + block + 1] for o in chunk])
        total += F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() * len(chunk)
    model.train()
    return total / len(offsets)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    layers, heads, width, block, batch = 4, 4, 128, 64, 12
    torch.manual_seed(args.seed)

    text = open(args.text, encoding="utf-8").read()
    chars = sorted(set(text[:int(len(text) * 0.9)]))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(text) * 0.9)
    train, valid = data[:cut], data[cut:]

    model = Gpt(len(chars), layers, heads, width, block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    n_eval = args.eval_batches * batch
    step_times, evals = [], []
    started = time.perf_counter()
    for it in range(args.steps):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, 100, args.steps, 1e-3, 1e-4)
        starts = torch.randint(len(train) - block, (batch,))
        x = torch.stack([train[o:o + block] for o in starts])
        y = torch.stack([train[o + 1:o + block + 1] for o in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - t0)
        if (it + 1) % args.eval_interval == 0 or it + 1 == args.steps:
            val = spread_loss(model, valid, block, batch, n_eval)
            evals.append((it + 1, val))
            print(f"step {it + 1}: train loss {loss.item():.4f}  valid loss {val:.4f}", flush=True)
    wall = time.perf_counter() - started

    model.eval()
    ids = [index["\n"]]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(300):
            logits = model(torch.tensor([ids[-block:]]))[0, -1]
            ids.append(torch.multinomial(F.softmax(logits, -1), 1, generator=generator).item())
    sample = "".join(chars[i] for i in ids)
    step_times.sort()
    print(json.dumps({
        "implementation": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
        "wall_s": wall, "median_step_ms": step_times[len(step_times) // 2] * 1e3,
        "mean_step_ms": sum(step_times) / len(step_times) * 1e3,
        "final_val_loss": evals[-1][1], "best_val_loss": min(v for _, v in evals), "sample": sample,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
