"""The PyTorch side of `qkv bench translation`: torch.nn.Transformer at qkv's `small` preset (3+3 post-LN layers,
256 wide, 4 heads, ReLU feed-forward 1024, dropout 0.1), one embedding matrix shared by source, target and the
output projection (scaled by √256) with sinusoidal positions, label-smoothed cross-entropy (0.1), gradient
clipping at 1 and Adam (0.9, 0.98, 1e-9) on the same Multi30k-shaped batches: 200 pairs, 14 source and 15 target
tokens."""

import argparse
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import median, report

VOCAB, BATCH, SOURCE, TARGET = 8000, 200, 14, 15
# The fastest optimiser setup a PyTorch user has: fused Adam kernels (CPU-capable in this torch; faster than
# foreach on the shared 2-core VM, as for train_gpt.py) and a foreach gradient-norm clip. --impl foreach keeps
# the multi-tensor kernels instead. Same update as the default loop. (Adam, not AdamW: the recipe has no weight
# decay, where the two are the same update.)
IMPLS = {"foreach": {"foreach": True}, "fused": {"fused": True}}
IMPL = "fused"
D_MODEL = 256


def sinusoids(length, width):
    position = torch.arange(length).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


class Translator(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, D_MODEL)
        nn.init.normal_(self.embedding.weight, std=D_MODEL ** -0.5)
        self.register_buffer("positions", sinusoids(64, D_MODEL))
        self.dropout = nn.Dropout(0.1)
        self.transformer = nn.Transformer(D_MODEL, 4, 3, 3, 1024, dropout=0.1, batch_first=True)

    def embed(self, ids):
        x = self.embedding(ids) * math.sqrt(D_MODEL) + self.positions[: ids.shape[1]]
        return self.dropout(x)

    def forward(self, src, tgt):
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        padding = torch.zeros(src.shape, dtype=torch.bool)  # no padding, but the mask path is exercised
        h = self.transformer(self.embed(src), self.embed(tgt), tgt_mask=causal, src_key_padding_mask=padding,
                             memory_key_padding_mask=padding, tgt_is_causal=True)
        return h @ self.embedding.weight.T


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--impl", choices=IMPLS, default=IMPL, help="Adam and clipping kernels (see IMPL)")
    args = parser.parse_args()
    torch.manual_seed(1)
    model = Translator().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9, **IMPLS[args.impl])
    warmup, times = 2, []
    for step in range(warmup + args.steps):
        src = torch.randint(4, VOCAB, (BATCH, SOURCE))
        tgt = torch.randint(4, VOCAB, (BATCH, TARGET + 1))
        start = time.perf_counter()
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    tokens = BATCH * TARGET
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    report("translation", [
        {"name": "translation step small", "unit": "ms", "median": median(times) * 1e3, "best": times[0] * 1e3,
         "higher_is_better": False},
        {"name": "translation target tokens/s small", "unit": "tokens/s", "median": tokens / median(times),
         "best": tokens / times[0], "higher_is_better": True},
        {"name": "peak RSS translation small", "unit": "MiB", "median": peak, "best": peak, "higher_is_better": False},
    ])


if __name__ == "__main__":
    main()
