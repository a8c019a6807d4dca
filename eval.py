"""Evaluate rankings with trec_eval semantics: nDCG@k, MRR@10, Recall@k, MAP.

Run:
    python eval.py --qrels data/beir/pyfaq/qrels/test.tsv --run runs/pyfaq-test-bm25.trec
    python eval.py --qrels qrels.txt --run run.trec --complete
    python eval.py --data data/beir/pyfaq --split test --bm25-only

The metric functions are the single implementation used everywhere (the RL reward imports
`ndcg_at_k`), and they match trec_eval 9 (checked against pytrec_eval in tests/test_metrics.py):
- ranking order: score descending, ties broken by document id *descending* (trec_eval's order);
- nDCG@k (`ndcg_cut_k`): gain = the qrels grade (linear), discount 1/log2(rank + 1), ideal DCG
  from all judged grades of the query, 0 for a query without relevant documents;
- MRR@10: trec_eval's `recip_rank` on the ranking cut at 10 (trec_eval has no cut version);
- Recall@k (`recall_k`) and MAP (`map`): a document is relevant when its grade is >= 1;
- averaging: by default over queries that have results *and* judgements (trec_eval's default);
  `--complete` (trec_eval -c) averages over every query in the qrels, counting missing ones as 0.
"""
import argparse
import math
import sys
import time
from pathlib import Path

from data.beir import atomic_write_text, load_corpus, load_qrels, load_queries, read_beir_qrels, read_trec_qrels, read_trec_run, write_trec_run


# ---------------------------------------------------------------- ranking order

def rank_docs(run_for_query):
    """Doc ids in trec_eval order: score descending, then doc id descending.

    Accepts {docid: score} or an already ranked list/tuple of doc ids (returned as a list).
    """
    if isinstance(run_for_query, dict):
        # two stable sorts: first the tie-break (doc id descending), then score descending
        by_id = sorted(run_for_query, reverse=True)
        return sorted(by_id, key=lambda d: -run_for_query[d])
    return list(run_for_query)


# ---------------------------------------------------------------- per-query metrics

def ndcg_at_k(ranking, qrels_for_query, k=10):
    """trec_eval `ndcg_cut_k` for one query.

    ranking: {docid: score} or doc ids in rank order; qrels_for_query: {docid: grade}.
    DCG = sum over the top k of grade / log2(rank + 1); unjudged documents have gain 0.
    """
    docs = rank_docs(ranking)[:k]
    dcg = sum(qrels_for_query.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs)
              if qrels_for_query.get(d, 0) > 0)
    ideal = sorted((g for g in qrels_for_query.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking, qrels_for_query, k=10):
    """Reciprocal rank of the first relevant (grade >= 1) document in the top k, else 0."""
    for i, d in enumerate(rank_docs(ranking)[:k]):
        if qrels_for_query.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking, qrels_for_query, k=100):
    """trec_eval `recall_k`: relevant documents in the top k / all relevant documents (0 if none)."""
    num_rel = sum(1 for g in qrels_for_query.values() if g >= 1)
    if num_rel == 0:
        return 0.0
    found = sum(1 for d in rank_docs(ranking)[:k] if qrels_for_query.get(d, 0) >= 1)
    return found / num_rel


def average_precision(ranking, qrels_for_query):
    """trec_eval `map` for one query: mean of precision at each relevant document's rank,
    divided by all relevant documents (those never retrieved contribute 0)."""
    num_rel = sum(1 for g in qrels_for_query.values() if g >= 1)
    if num_rel == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(rank_docs(ranking)):
        if qrels_for_query.get(d, 0) >= 1:
            hits += 1
            total += hits / (i + 1)
    return total / num_rel


# ---------------------------------------------------------------- whole run

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")


def metric_fn(name):
    """'ndcg@10' -> a function (ranking, qrels_for_query) -> float. Names: ndcg@k, mrr@k, recall@k, map."""
    base, _, k = name.partition("@")
    if base == "map" and not k:
        return average_precision
    fns = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k}
    if base not in fns or not k.isdigit():
        raise ValueError(f"unknown metric {name!r}: expected ndcg@K, mrr@K, recall@K or map")
    return lambda ranking, rels: fns[base](ranking, rels, int(k))


def evaluate(run, qrels, metrics=DEFAULT_METRICS, complete=False, per_query=False):
    """Mean of each metric over queries, as trec_eval computes it.

    run: {qid: {docid: score}}; qrels: {qid: {docid: grade}}.
    Queries in the run but not in the qrels are ignored (as trec_eval does). Queries in the qrels
    without results are ignored too, unless complete=True (trec_eval -c), where they score 0.
    Returns {metric: mean, ..., "num_q": n}; with per_query=True also "per_query": {qid: {metric: v}}.
    """
    fns = {m: metric_fn(m) for m in metrics}
    qids = sorted(qrels) if complete else sorted(q for q in qrels if q in run and run[q])
    scores = {q: {m: fn(rank_docs(run.get(q, {})), qrels[q]) for m, fn in fns.items()} for q in qids}
    result = {m: (sum(scores[q][m] for q in qids) / len(qids) if qids else 0.0) for m in metrics}
    result["num_q"] = len(qids)
    if per_query:
        result["per_query"] = scores
    return result


# trec_eval's names for the table
TREC_NAMES = {"ndcg@10": "ndcg_cut_10", "mrr@10": "recip_rank@10", "recall@100": "recall_100", "map": "map"}


def format_table(result, metrics=DEFAULT_METRICS):
    """Lines like trec_eval's output: name, 'all', value."""
    lines = [f"{'num_q':<22}\tall\t{result['num_q']}"]
    lines += [f"{TREC_NAMES.get(m, m):<22}\tall\t{result[m]:.4f}" for m in metrics]
    return "\n".join(lines)


def read_qrels_file(path):
    """A BEIR qrels .tsv (with its header) or a TREC qrels file, told apart by the first line."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    return read_beir_qrels(path) if first.startswith("query-id\t") else read_trec_qrels(path)


# ---------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("score an existing run")
    g.add_argument("--qrels", help="qrels file: TREC (`qid 0 docid grade`) or BEIR .tsv with header")
    g.add_argument("--run", help="TREC run file (`qid Q0 docid rank score tag`)")
    g.add_argument("--complete", action="store_true",
                   help="average over all qrels queries, missing ones count 0 (trec_eval -c)")
    g = p.add_argument_group("end-to-end on a BEIR-format dataset")
    g.add_argument("--data", help="BEIR-format dataset directory, e.g. data/beir/pyfaq")
    g.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    g.add_argument("--bm25-only", action="store_true", help="evaluate the BM25 first stage only")
    g.add_argument("--model", help="reranker: checkpoint directory or hub id (default: the built-in reranker)")
    g.add_argument("--top-k", type=int, default=100, help="BM25 candidates per query (default: 100, as the paper)")
    g.add_argument("--limit", type=int, help="evaluate only the first N queries (sorted by id)")
    g.add_argument("--runs-dir", default="runs", help="where run files are written (default: runs/)")
    g = p.add_argument_group("reranker settings (see rerank.py)")
    g.add_argument("--thinking", action="store_true", help="generate reasoning before the answer (slow)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="generation limit in thinking mode")
    g.add_argument("--score", default="answer", choices=["answer", "expected"], help="s*P(s) or expected score")
    g.add_argument("--max-doc-tokens", type=int, default=512, help="document truncation budget")
    g.add_argument("--batch-tokens", type=int, default=16384, help="tokens per batch (memory bound)")
    g.add_argument("--instruction", help="relevance definition (default: the paper's BEIR instruction)")
    g.add_argument("--device", help="cpu, cuda ... (default: CUDA if available)")
    g.add_argument("--dtype", help="float32, bfloat16 ... (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--name", help="label of the reranker in the table and run file names")
    g.add_argument("--json", help="also write the table's numbers to this JSON file")
    args = p.parse_args(argv)
    if args.data is None and (args.qrels is None or args.run is None):
        p.error("give --qrels and --run, or --data DIR")
    return args


def run_bm25(args):
    """BM25 top-k for every judged query of the split; returns (run, qrels, tag)."""
    from data.bm25 import BM25  # imported here: scoring an existing run needs no index
    data_dir = Path(args.data)
    qrels = load_qrels(data_dir, args.split)
    queries = load_queries(data_dir)
    missing = sorted(set(qrels) - set(queries))
    if missing:
        sys.exit(f"{data_dir / 'queries.jsonl'}: {len(missing)} judged queries have no text, e.g. {missing[0]!r}")
    qids = sorted(qrels)[: args.limit] if args.limit else sorted(qrels)
    bm25 = BM25.from_dir(data_dir)
    t0 = time.time()
    run = bm25.batch_search({q: queries[q] for q in qids}, k=max(args.top_k, 100))
    print(f"BM25: {len(qids)} queries, {len(bm25.doc_ids)} documents, {time.time() - t0:.1f}s")
    return run, {q: qrels[q] for q in qids}, "bm25"


def rerank_run(reranker, queries, corpus, first_stage, top_k, cache_path):
    """Rerank each query's first-stage top_k with `reranker` (rerank.Reranker) -> (run, stats).
    Every finished query is appended to a JSONL cache of scored pairs, so an interrupted
    evaluation resumes where it stopped (a half-written last line is ignored)."""
    import json

    from tqdm import tqdm

    done = {}
    if cache_path.exists():
        for line in cache_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn write from a killed run: that query is scored again
            done[rec["qid"]] = rec
    todo = [q for q in sorted(first_stage) if q not in done]
    if done:
        print(f"resuming: {len(done)} queries already scored in {cache_path}")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_path, "a", encoding="utf-8") as cache:
        for qid in tqdm(todo, desc="rerank", unit="query"):
            cands = rank_docs(first_stage[qid])[:top_k]
            docs = [{"id": d, "text": corpus[d]["text"], "title": corpus[d].get("title", "")} for d in cands]
            t0 = time.perf_counter()
            records = reranker.rerank(queries[qid], docs)
            rec = {"qid": qid, "seconds": time.perf_counter() - t0,
                   "results": [[r["id"], r["score"], r["answer"]] for r in records]}
            cache.write(json.dumps(rec) + "\n")
            cache.flush()
            done[qid] = rec
    run, stats = {}, {"pairs": 0, "unparsed": 0, "seconds": 0.0}
    for qid, rec in done.items():
        if qid not in first_stage:
            continue
        n = len(rec["results"])
        # strictly decreasing scores in the rank order the reranker chose (its tie-break)
        run[qid] = {d: n - i for i, (d, _, _) in enumerate(rec["results"])}
        stats["pairs"] += n
        stats["unparsed"] += sum(a is None for _, _, a in rec["results"])
        stats["seconds"] += rec["seconds"]
    return run, stats


def model_key(args, path):
    """Identifies a (checkpoint, settings) pair for the scored-pair cache."""
    import hashlib
    import os

    weights = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
    ident = [os.path.abspath(path)] + [f"{os.path.getsize(w)}:{os.path.getmtime(w)}" for w in weights]
    ident += [args.thinking, args.max_new_tokens, args.score, args.max_doc_tokens, args.instruction, args.top_k]
    return hashlib.sha1(repr(ident).encode()).hexdigest()[:12]


def main(args):
    if args.data is None:
        run, qrels = read_trec_run(args.run), read_qrels_file(args.qrels)
        print(format_table(evaluate(run, qrels, complete=args.complete)))
        return
    run, qrels, tag = run_bm25(args)
    name = Path(args.data).resolve().name
    out = Path(args.runs_dir) / f"{name}-{args.split}-{tag}.trec"
    write_trec_run(out, run, tag=tag)
    k = args.top_k
    rows = [("BM25", evaluate(run, qrels, metrics=("ndcg@10", "mrr@10", f"recall@{k}"), complete=True), None)]
    if not args.bm25_only:
        import rerank

        path = rerank.resolve_model(args.model)
        reranker = rerank.Reranker(path, args.device, args.dtype, thinking=args.thinking,
                                   max_new_tokens=args.max_new_tokens, max_doc_tokens=args.max_doc_tokens,
                                   batch_tokens=args.batch_tokens, score=args.score,
                                   instruction=args.instruction)
        label = args.name or Path(path).name
        cache = Path(args.runs_dir) / "cache" / f"{name}-{args.split}-{label}-{model_key(args, path)}.jsonl"
        corpus, queries = load_corpus(Path(args.data)), load_queries(Path(args.data))
        reranked, stats = rerank_run(reranker, queries, corpus, run, k, cache)
        rr_out = Path(args.runs_dir) / f"{name}-{args.split}-{label}.trec"
        write_trec_run(rr_out, reranked, tag=label)
        rows.append((label, evaluate(reranked, qrels, metrics=("ndcg@10", "mrr@10", f"recall@{k}"),
                                     complete=True), stats))
        print(f"wrote {out} and {rr_out}")
    print(f"\n{name} / {args.split}: {len(qrels)} queries, BM25 top-{k} reranked\n")
    print(f"| system | nDCG@10 | MRR@10 | R@{k} | parse failures | pairs/s | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, res, st in rows:
        extra = "- | - | -" if st is None else (
            f"{st['unparsed']}/{st['pairs']} | {st['pairs'] / max(st['seconds'], 1e-9):.1f} | {st['seconds']:.0f}")
        print(f"| {label} | {res['ndcg@10']:.4f} | {res['mrr@10']:.4f} | {res[f'recall@{k}']:.4f} | {extra} |")
    if args.json:
        import json

        table = [{"system": label, "dataset": name, "split": args.split, "top_k": k, "queries": len(qrels),
                  "ndcg@10": res["ndcg@10"], "mrr@10": res["mrr@10"], f"recall@{k}": res[f"recall@{k}"],
                  **({} if st is None else {"unparsed": st["unparsed"], "pairs": st["pairs"],
                                            "seconds": st["seconds"]})} for label, res, st in rows]
        atomic_write_text(args.json, json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main(parse_args())
