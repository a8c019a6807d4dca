"""What the server's batching across requests buys: serve.py under 1, 4 and 16 concurrent clients
against the same Reranker called one request at a time, in one process, on loopback.

    python bench/bench_serve.py                              # built-in reranker, pyfaq requests
    python bench/bench_serve.py --requests 16 --time-limit 60 --docs 10 --max-doc-tokens 128

Each request is one pyfaq test query with its BM25 top --docs documents (the first --requests
queries by id, documents cut to 200 words, then to --max-doc-tokens tokens). First the sequential
baseline: rr.rerank(query, docs) for each request in turn. Then the server (serve.RerankServer,
in this process, with the same Reranker object) on 127.0.0.1, and for each level of concurrency
C clients that each send their share of the same requests over http.client, one after the
other. Reported per row: requests/s and pairs/s over the row's wall time, p50 and p95 of the
request latencies, and the pairs/s ratio to the sequential baseline (what batching buys, minus
what HTTP costs). Bounded: at most --requests requests per row, and a row stops issuing new
requests after --time-limit seconds. The baseline runs again at the end; the ratio uses the
mean of its two runs, and both are printed, so a machine whose load changed shows it.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
import rerank as R  # noqa: E402
import serve as S  # noqa: E402
from bench_rerank import pairs_from_pyfaq  # noqa: E402  (bench/ is the script's directory)


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")  # nan: every request failed


def row(name, latencies, pairs, seconds, baseline, failed=0):
    n = len(latencies)
    count = f"{n}" + (f" ({failed} failed)" if failed else "")
    return (f"| {name} | {count} | {n / seconds:.2f} | {pairs / seconds:.1f} | {percentile(latencies, 0.5):.2f} | "
            f"{percentile(latencies, 0.95):.2f} | {pairs / seconds / baseline:.2f}× |")


def sequential(rr, requests, time_limit):
    latencies, pairs, t0 = [], 0, time.perf_counter()
    for query, docs in requests:
        if time.perf_counter() - t0 > time_limit:
            break
        t = time.perf_counter()
        rr.rerank(query, docs)
        latencies.append(time.perf_counter() - t)
        pairs += len(docs)
    return latencies, pairs, time.perf_counter() - t0


def post(port, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/rerank", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {out[:200]!r}")
    return json.loads(out)


def concurrent(port, requests, clients, time_limit):
    """`clients` threads, each sending requests one after another from a shared list. A failed
    request is counted and reported, not retried."""
    bodies = [json.dumps({"query": q, "documents": d}).encode() for q, d in requests]
    latencies, pairs, failed, lock, it = [], [0], [], threading.Lock(), iter(range(len(bodies)))
    t0 = time.perf_counter()

    def client():
        while time.perf_counter() - t0 <= time_limit:
            with lock:
                i = next(it, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                out = post(port, bodies[i])
            except (OSError, RuntimeError) as e:
                with lock:
                    failed.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                pairs[0] += len(out["results"])

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    if failed:
        print(f"{clients} clients: {len(failed)} request(s) failed, the first: {failed[0]}", file=sys.stderr)
    return latencies, pairs[0], time.perf_counter() - t0, len(failed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: the built-in reranker)")
    ap.add_argument("--requests", type=R.positive_int, default=32, help="requests per row (pyfaq test queries)")
    ap.add_argument("--docs", type=R.positive_int, default=10, help="documents per request (BM25 top)")
    ap.add_argument("--max-doc-tokens", type=R.positive_int, default=128, help="document truncation budget")
    ap.add_argument("--clients", type=R.positive_int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds after which a row issues no new request")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="the server's --batch-wait-ms")
    ap.add_argument("--dtype", default="auto", help="as rerank.py's --dtype")
    args = ap.parse_args()
    requests = pairs_from_pyfaq(args.requests, args.docs)
    rr = R.Reranker(args.model, dtype=args.dtype, max_doc_tokens=args.max_doc_tokens)
    rr.verbose = False
    S.warm_up(rr)
    import torch

    print(f"{len(requests)} requests x {args.docs} documents (pyfaq test, BM25 top {args.docs}, "
          f"{args.max_doc_tokens} tokens), {str(next(rr.model.parameters()).dtype).replace('torch.', '')}, "
          f"torch threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", file=sys.stderr)

    before = sequential(rr, requests, args.time_limit)
    server = S.RerankServer(("127.0.0.1", 0), S.Limits(max_pending=1024), quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.attach(rr, "bench", rr.batch_tokens, args.batch_wait_ms / 1000)
    served = {}
    try:
        for c in args.clients:
            served[c] = concurrent(server.server_address[1], requests, c, args.time_limit)
            print(f"{c} clients done", file=sys.stderr)
    finally:
        server.close()
    after = sequential(rr, requests, args.time_limit)

    base = (before[1] / before[2] + after[1] / after[2]) / 2
    print("\n| clients | requests | requests/s | pairs/s | p50 latency (s) | p95 latency (s) | pairs/s vs sequential |")
    print("|---|---|---|---|---|---|---|")
    print(row("Reranker.rerank, sequential, in process (before)", *before, base))
    for c, (lat, pairs, seconds, failed) in served.items():
        print(row(f"serve.py, {c} client{'s' if c > 1 else ''}", lat, pairs, seconds, base, failed))
    print(row("Reranker.rerank, sequential, in process (after)", *after, base))
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
