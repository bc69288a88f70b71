"""Load on `qkv serve`'s /v1/embeddings from N concurrent clients, one sentence per request, keep-alive
connections: throughput and latency percentiles. Loopback only; bounded by --requests.

    python tools/bench/serve_load.py --port 8080 --model minilm --pairs ../shared/data/stsb/dev.csv \
        --concurrency 1 8 32 --requests 1024
"""
import argparse
import csv
import http.client
import json
import statistics
import threading
import time


def sentences(path, n):
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            out.extend(row[-2:] if len(row) >= 3 else row[:1])
            if len(out) >= n:
                break
    return [s for s in out if s.strip()][:n]


def run(port, model, texts, concurrency):
    latencies, lock, next_index, refused = [], threading.Lock(), [0], [0]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(texts):
                break
            body = json.dumps({"model": model, "input": texts[i]})
            start = time.perf_counter()
            conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            with lock:
                if response.status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    refused[0] += 1  # 503 when more clients wait than --queue allows
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    served = len(latencies)
    pct = lambda p: 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]
    return {
        "concurrency": concurrency,
        "sentences_per_s": served / elapsed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "refused": refused[0],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=1024)
    args = parser.parse_args()
    texts = sentences(args.pairs, args.requests)
    run(args.port, args.model, texts[:64], 4)  # warm-up
    for c in args.concurrency:
        print(json.dumps(run(args.port, args.model, texts, c)))
