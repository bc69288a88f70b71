"""The matrix-product ceiling in PyTorch: the same shapes and layouts as `qkv bench gemm`."""

import argparse

import torch

from common import median, report, timed

SHAPES = [(768, 768, 768), (768, 768, 3072), (4096, 4096, 4096)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    results = []
    for m, k, n in SHAPES:
        a = torch.randn(m, k)
        b = torch.randn(k, n)
        b_t = torch.randn(n, k)  # (N, K) used transposed, like a Linear weight
        flop = 2.0 * m * k * n
        for label, rhs in (("", b), (" Bᵀ", b_t.t())):
            times = timed(lambda: torch.mm(a, rhs), 3, args.reps)
            results.append({
                "name": f"gemm {m}×{k}×{n}{label}", "unit": "GFLOP/s",
                "median": flop / median(times) / 1e9, "best": flop / times[0] / 1e9, "higher_is_better": True,
            })
    report("gemm", results)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
