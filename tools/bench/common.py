"""Shared timing and reporting for the PyTorch side of qkv's benchmarks (same JSON as `qkv bench`)."""

import json
import time

import torch


def timed(fn, warmup, reps):
    """Durations in seconds of `reps` calls after `warmup` untimed ones, sorted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)


def median(sorted_times):
    return sorted_times[len(sorted_times) // 2]


def report(workload, results, threads=None):
    """Prints the JSON `qkv bench` prints. `threads` is for references other than PyTorch (ONNX Runtime,
    llama.cpp), whose thread count torch does not know."""
    threads = torch.get_num_threads() if threads is None else threads
    print(json.dumps({"workload": workload, "threads": threads, "results": results}, indent=2))
