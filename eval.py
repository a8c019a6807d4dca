"""Evaluate rankings with trec_eval semantics: nDCG@k, MRR@10, Recall@k, MAP.

Run:
    python eval.py --qrels data/beir/pyfaq/qrels/test.tsv --run runs/pyfaq-test-bm25.trec
    python eval.py --qrels qrels.txt --run run.trec --complete
    python eval.py --data data/beir/pyfaq --split test --bm25-only
    python eval.py --data data/beir/pyfaq --top-k 20 --limit 88 --model runs/sft/final [--fusion 0.2]

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

from data.beir import (DataFormatError, load_corpus, load_qrels, load_queries, read_beir_qrels, read_trec_qrels,
                       read_trec_run, write_trec_run)
from files import write_atomic


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
    with open(path, "rb") as f:
        first = f.readline().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is allowed
    return read_beir_qrels(path) if first.startswith(b"query-id\t") else read_trec_qrels(path)


# ---------------------------------------------------------------- during training

def auc(scores, labels) -> float | None:
    """Area under the ROC curve: the chance that a random relevant record scores above a random
    non-relevant one (ties count half). None when one class is missing."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def dev_ndcg(model, tok, data_dir: str, split: str = "dev", n_queries: int = 20, top_k: int = 20,
             max_doc_tokens: int = 192, max_query_tokens: int = 256, bm25_cache=None, cache=None) -> dict:
    """Training's view of dev quality (sft.py and rl.py log it): fast-mode reranking of BM25's
    top `top_k` for the first `n_queries` queries of `split` (sorted by id), mean nDCG@10 ranked
    by ERank's s * P(s) and by the expected score sum_s s * P(s) (same forward passes; the second
    moves as soon as the answer distribution carries any signal, even while every greedy answer
    is the same integer), and the AUC of the expected score against non-relevant candidates
    (pooled over the queries). `cache` (a dict owned by the caller) keeps the candidates between
    calls. -> {"dev_ndcg10", "dev_ndcg10_expected", "dev_auc"}"""
    import torch

    from data.bm25 import BM25, DEFAULT_CACHE
    from rerank import Reranker, final_score, sort_records

    cache = {} if cache is None else cache
    key = (data_dir, split, n_queries, top_k)
    if key not in cache:
        if "pyfaq" in Path(data_dir).name or Path(data_dir).name.startswith("debian-") or split == "test":
            raise ValueError(f"--dev-data {data_dir} --dev-split {split}: the held-out test set; never tune on it")
        corpus, queries, qrels = load_corpus(data_dir), load_queries(data_dir), load_qrels(data_dir, split)
        bm25 = BM25.from_dir(data_dir, cache_dir=bm25_cache or DEFAULT_CACHE)
        qids = sorted(q for q in qrels if q in queries)[:n_queries]
        cache[key] = [(queries[q], [{"id": d, "title": corpus[d].get("title", ""), "text": corpus[d]["text"]}
                                    for d, _ in bm25.search(queries[q], top_k)], qrels[q]) for q in qids]
    was_training = model.training
    model.eval()
    rr = Reranker((model, tok), thinking=False, score="expected", max_doc_tokens=max_doc_tokens,
                  max_query_tokens=max_query_tokens, batch_tokens=8192, verbose=False)
    by_answer, by_expected, scores, labels = [], [], [], []
    with torch.no_grad():
        for q, docs, rel in cache[key]:
            recs = rr.rerank(q, docs) if docs else []  # sorted by the expected score
            by_expected.append(ndcg_at_k([r["id"] for r in recs], rel) if docs else 0.0)
            scores += [r["score"] for r in recs]
            labels += [rel.get(r["id"], 0) > 0 for r in recs]
            for r in recs:
                r["score"] = final_score(r, "answer")
            by_answer.append(ndcg_at_k([r["id"] for r in sort_records(recs)], rel) if docs else 0.0)  # rerank.py's order
    model.train(was_training)
    n = max(1, len(by_answer))
    return {"dev_ndcg10": sum(by_answer) / n, "dev_ndcg10_expected": sum(by_expected) / n,
            "dev_auc": auc(scores, labels)}


# ---------------------------------------------------------------- CLI

def parse_args(argv=None):
    import rerank  # the reranker's argument types and help formatter

    class Formatter(rerank.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=Formatter)
    g = p.add_argument_group("score an existing run")
    g.add_argument("--qrels", help="qrels file: TREC (`qid 0 docid grade`) or BEIR .tsv with header")
    g.add_argument("--run", help="TREC run file (`qid Q0 docid rank score tag`)")
    g.add_argument("--complete", action="store_true",
                   help="average over all qrels queries, missing ones count 0 (trec_eval -c)")
    g = p.add_argument_group("end-to-end on a BEIR-format dataset")
    g.add_argument("--data", help="BEIR-format dataset directory, e.g. data/beir/pyfaq")
    g.add_argument("--split", default="test", help="qrels split to evaluate (qrels/<split>.tsv)")
    g.add_argument("--bm25-only", action="store_true", help="evaluate the BM25 first stage only")
    g.add_argument("--model", help="reranker: checkpoint directory or hub id (default: the built-in reranker)")
    g.add_argument("--top-k", type=rerank.positive_int, default=100, help="BM25 candidates per query (the paper: 100)")
    g.add_argument("--limit", type=rerank.positive_int, metavar="N",
                   help="evaluate only the first N judged queries of the split, in query-id (string) order "
                        "(default: all)")
    g.add_argument("--runs-dir", default="runs", help="where run files and the scored-pair cache are written")
    g = p.add_argument_group("reranker settings (as rerank.py)")
    g.add_argument("--thinking", action="store_true", help="generate reasoning before the answer (slow)")
    g.add_argument("--max-new-tokens", type=rerank.positive_int, default=1024, help="generation limit in thinking mode")
    g.add_argument("--score", default="answer", choices=["answer", "expected"],
                   help="answer: s*P(s) (ERank); expected: sum_s s*P(s) over 0..10 (fast mode only)")
    g.add_argument("--fusion", type=rerank.fusion_weight, metavar="W",
                   help="W*z(BM25 score) + (1-W)*z(rerank score), per query over the candidates (paper: 0.2; "
                        "default: off)")
    g.add_argument("--instruction", help="relevance definition (default: the paper's BEIR instruction)")
    g.add_argument("--task", choices=sorted(rerank.INSTRUCTIONS), help="use the paper's instruction for a benchmark")
    g.add_argument("--max-query-tokens", type=rerank.positive_int, default=256, help="query truncation budget")
    g.add_argument("--query-keep", default="start", choices=["start", "end"],
                   help="which end of a query over --max-query-tokens is kept")
    g.add_argument("--max-doc-tokens", type=rerank.positive_int, default=512, help="document truncation budget")
    g.add_argument("--batch-tokens", type=rerank.positive_int, default=16384, help="tokens per batch (memory bound)")
    g.add_argument("--device", help="cpu, cuda ... (default: CUDA if available)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bf16 on CUDA and on CPUs with native bf16 matrix instructions "
                   "(AVX512-BF16, AMX-BF16), else fp32")
    g.add_argument("--name", help="label of the reranker in the table and run file names (default: from --model)")
    g.add_argument("--json", help="also write the table's numbers to this JSON file")
    args = p.parse_args(argv)
    if args.data is None and (args.qrels is None or args.run is None):
        p.error("give --qrels and --run, or --data DIR")
    return args


# the built-in datasets (data/build_datasets.py): directory name -> its --only choice
BUILT_IN_DATASETS = {"manpages": "manpages", "foldoc": "foldoc", "pyfaq": "pyfaq", "faqs": "faqs",
                     "faqs-heldout": "faqs", "faqs-heldout-eq30": "faqs", "faqs-more": "faqs-more",
                     "faqs-extra": "faqs-extra", "faqs-wide": "faqs-wide", "debian-faq": "debian-faq",
                     "debian-faq-eq30": "debian-faq"}


def dataset_problem(data_dir, flag="--data") -> str | None:
    """Why `data_dir` is not a BEIR-format dataset (None when it is one), with the command that
    builds it when it names a built-in dataset (data/beir/NAME). Used by eval.py and bench/."""
    data = Path(data_dir)
    if all((data / name).is_file() for name in ("corpus.jsonl", "queries.jsonl")):
        return None
    what = "no such directory" if not data.is_dir() else "corpus.jsonl or queries.jsonl is missing"
    if data.parent.name == "beir" and data.name in BUILT_IN_DATASETS:
        here = Path(__file__).resolve().parent / "data" / "beir" / data.name
        if here.is_dir() and here != data.resolve():
            return f"{flag} {data}: {what}; the built-in dataset is at {here}"
        return (f"{flag} {data}: {what}; it is a built-in dataset, build it first with: "
                f"python data/build_datasets.py --only {BUILT_IN_DATASETS[data.name]}")
    return f"{flag} {data}: {what} (expected a BEIR-format dataset: corpus.jsonl, queries.jsonl, qrels/)"


def check_inputs(args):
    """Everything that can be checked without the index or the model, so bad input fails at once."""
    import rerank

    rerank.check_output_path("--json", args.json)
    if args.data is None:
        for flag, path in (("--qrels", args.qrels), ("--run", args.run)):
            if not Path(path).is_file():
                raise rerank.InputError(f"{flag} {path}: no such file")
        return
    data = Path(args.data)
    problem = dataset_problem(data)
    if problem:
        raise rerank.InputError(problem)
    if not (data / "qrels" / f"{args.split}.tsv").is_file():
        have = sorted(p.stem for p in (data / "qrels").glob("*.tsv"))
        raise rerank.InputError(f"--split {args.split}: {data / 'qrels' / (args.split + '.tsv')} does not exist "
                                f"(splits present: {', '.join(have) or 'none'})")
    if not args.bm25_only:
        if args.score == "expected" and args.thinking:
            raise rerank.InputError("--score expected needs fast mode (the distribution over 0..10); drop --thinking")
        rerank.check_device(args.device)
        rerank.check_model_arg(args.model)


def run_bm25(args):
    """BM25 top-k for every judged query of the split (the first --limit by id); returns (run, qrels, tag)."""
    from data.bm25 import BM25  # imported here: scoring an existing run needs no index
    data_dir = Path(args.data)
    qrels = load_qrels(data_dir, args.split)
    queries = load_queries(data_dir)
    if not qrels:
        raise DataFormatError(f"{data_dir / 'qrels' / (args.split + '.tsv')}: no judgements")
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DataFormatError(f"{data_dir / 'queries.jsonl'}: {len(missing)} judged queries have no text, "
                              f"e.g. {missing[0]!r}")
    qids = sorted(qrels)[: args.limit] if args.limit else sorted(qrels)
    bm25 = BM25.from_dir(data_dir)
    t0 = time.time()
    run = bm25.batch_search({q: queries[q] for q in qids}, k=max(args.top_k, 100))
    print(f"BM25: {len(qids)} queries, {len(bm25.doc_ids)} documents, {time.time() - t0:.1f}s")
    return run, {q: qrels[q] for q in qids}, "bm25"


# The scored-pair cache: one JSON line per query, {"qid", "seconds", "warmup", "results"}, results in
# candidate (BM25) order as {"id", "answer", "prob", "expected", "empty"?}. It keeps the answer, its
# probability and the expected score, so --score and --fusion are applied when the table is made
# and change nothing in what is cached. Version 1 kept one final score; its files are not read.
CACHE_VERSION = 2


def rerank_run(reranker, queries, corpus, first_stage, top_k, cache_path, score="answer", fusion=None):
    """Rerank each query's first-stage top_k with `reranker` (rerank.Reranker) -> (run, stats).
    Every finished query is appended to a JSONL cache of scored pairs, so an interrupted
    evaluation resumes where it stopped (a half-written last line is ignored). The final score
    (s*P(s) or expected), the optional fusion with the first-stage scores and the order come from
    rerank.py's functions, as `rerank.py --fusion` computes them."""
    import json

    import rerank
    from tqdm import tqdm

    done = {}
    if cache_path.exists():
        for line in cache_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn write from a killed run: that query is scored again
            done[rec["qid"]] = rec
    for qid in list(done):  # a cached query counts only if its candidates are today's (same BM25, same corpus)
        if qid not in first_stage or [r["id"] for r in done[qid]["results"]] != rank_docs(first_stage[qid])[:top_k]:
            del done[qid]
    todo = [q for q in sorted(first_stage) if q not in done]
    if done:
        print(f"resuming: {len(done)} queries already scored in {cache_path}")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_path, "a", encoding="utf-8") as cache:
        if cache.tell() and not cache_path.read_bytes().endswith(b"\n"):
            cache.write("\n")  # after a torn last line, start a new one
        for n, qid in enumerate(tqdm(todo, desc="rerank", unit="query")):
            cands = rank_docs(first_stage[qid])[:top_k]
            docs = [{"id": d, "text": corpus[d]["text"], "title": corpus[d].get("title", "")} for d in cands]
            t0 = time.perf_counter()
            records = sorted(reranker.rerank(queries[qid], docs), key=lambda r: r["position"])
            keep = ("id", "answer", "prob", "expected", "empty")
            rec = {"qid": qid, "seconds": time.perf_counter() - t0, "warmup": n == 0,
                   "results": [{k: r[k] for k in keep if k in r} for r in records]}
            cache.write(json.dumps(rec) + "\n")
            cache.flush()
            done[qid] = rec
    run = {}
    stats = {"pairs": 0, "unparsed": 0, "empty": 0, "seconds": 0.0, "steady_pairs": 0, "steady_seconds": 0.0}
    for qid, rec in done.items():
        if qid not in first_stage:
            continue
        records = [dict(r, position=i) for i, r in enumerate(rec["results"])]
        for r in records:
            r["score"] = rerank.final_score(r, score)
        if fusion is not None:
            rerank.fuse(records, [first_stage[qid][r["id"]] for r in records], fusion)
        rerank.sort_records(records)
        # strictly decreasing scores in the rank order rerank.py chose (its tie-break)
        run[qid] = {r["id"]: len(records) - r["rank"] + 1 for r in records}
        pairs = sum(not r.get("empty") for r in records)
        stats["pairs"] += pairs
        stats["unparsed"] += sum(r["answer"] is None and not r.get("empty") for r in records)
        stats["empty"] += len(records) - pairs
        stats["seconds"] += rec["seconds"]
        if not rec.get("warmup"):  # the first query scored by each invocation includes the warm-up
            stats["steady_pairs"] += pairs
            stats["steady_seconds"] += rec["seconds"]
    return run, stats


def pairs_per_second(st):
    """Pairs/s without the first query of each invocation (warm-up), when there are others."""
    if st["steady_pairs"] and st["steady_seconds"] > 0:
        return st["steady_pairs"] / st["steady_seconds"]
    return st["pairs"] / max(st["seconds"], 1e-9)


def model_key(args, path, dtype=None):
    """Identifies a (checkpoint, settings) pair for the scored-pair cache. --score and --fusion are
    not part of it: the cache keeps what both need. dtype: the one the model was loaded in (what
    --dtype auto chose on this machine), else --dtype as given."""
    import hashlib
    import os

    weights = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
    ident = [CACHE_VERSION, os.path.abspath(path)] + [f"{os.path.getsize(w)}:{os.path.getmtime(w)}" for w in weights]
    ident += [args.thinking, args.max_new_tokens, args.max_query_tokens, args.max_doc_tokens, args.instruction,
              args.top_k, dtype or args.dtype, args.device]
    if getattr(args, "query_keep", "start") != "start":  # only when set: the caches made before stay valid
        ident.append(f"query_keep={args.query_keep}")
    return hashlib.sha1(repr(ident).encode()).hexdigest()[:12]


def main(args):
    """Returns the exit status: 0, or 2 after one line naming the bad input."""
    import rerank

    try:
        check_inputs(args)
        if args.data is None:
            run, qrels = read_trec_run(args.run), read_qrels_file(args.qrels)
            print(format_table(evaluate(run, qrels, complete=args.complete)))
            return 0
        return evaluate_dataset(args)
    except (rerank.InputError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def evaluate_dataset(args):
    import rerank

    if args.task and not args.instruction:
        args.instruction = rerank.INSTRUCTIONS[args.task]
    run, qrels, tag = run_bm25(args)
    name = Path(args.data).resolve().name
    out = Path(args.runs_dir) / f"{name}-{args.split}-{tag}.trec"
    write_trec_run(out, run, tag=tag)
    k = args.top_k
    metrics = ("ndcg@10", "mrr@10", f"recall@{k}", "map")
    rows = [("BM25", evaluate(run, qrels, metrics=metrics, complete=True), None)]
    label = None
    if not args.bm25_only:
        path = rerank.resolve_model(args.model)
        reranker = rerank.Reranker(path, args.device, args.dtype, thinking=args.thinking,
                                   max_new_tokens=args.max_new_tokens, max_query_tokens=args.max_query_tokens,
                                   max_doc_tokens=args.max_doc_tokens, batch_tokens=args.batch_tokens,
                                   instruction=args.instruction, query_keep=args.query_keep)
        label = args.name or Path(path).name + ("-expected" if args.score == "expected" else "") + (
            f"-fusion{args.fusion:g}" if args.fusion is not None else "")
        model_dir = Path(path).resolve()
        loaded = str(next(reranker.model.parameters()).dtype).replace("torch.", "")  # what --dtype auto chose
        cache = (Path(args.runs_dir) / "cache" /
                 f"{name}-{args.split}-{model_dir.parent.name}-{model_dir.name}-{model_key(args, path, loaded)}.jsonl")
        corpus, queries = load_corpus(Path(args.data)), load_queries(Path(args.data))
        reranked, stats = rerank_run(reranker, queries, corpus, run, k, cache, args.score, args.fusion)
        rr_out = Path(args.runs_dir) / f"{name}-{args.split}-{label}.trec"
        write_trec_run(rr_out, reranked, tag=label)
        rows.append((label, evaluate(reranked, qrels, metrics=metrics, complete=True), stats))
        print(f"wrote {out} and {rr_out}")
        if stats["empty"]:
            print(f"warning: {stats['empty']} empty documents among the candidates were not scored and "
                  "ranked last", file=sys.stderr)
    judged = len(load_qrels(Path(args.data), args.split))
    first, last = min(qrels), max(qrels)
    which = (f"the first {len(qrels)} of {judged} judged queries by id ({first} ... {last})"
             if len(qrels) < judged else f"all {judged} judged queries")
    what = f"BM25 top-{k}" if label is None else f"BM25 top-{k} reranked by {label}"
    print(f"\n{name} / {args.split}: {which}; {what}\n")
    print(f"| system | nDCG@10 | MRR@10 | R@{k} | MAP | parse failures | pairs/s | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for row, res, st in rows:
        extra = "- | - | -" if st is None else (
            f"{st['unparsed']}/{st['pairs']} | {pairs_per_second(st):.1f} | {st['seconds']:.0f}")
        print(f"| {row} | {res['ndcg@10']:.4f} | {res['mrr@10']:.4f} | {res[f'recall@{k}']:.4f} | "
              f"{res['map']:.4f} | {extra} |")
    if label is not None:
        print("\npairs/s leaves out the first query scored by each invocation (it includes the warm-up)")
    if args.json:
        import json

        table = [{"system": row, "dataset": name, "split": args.split, "top_k": k, "queries": len(qrels),
                  "query_ids": [first, last], "ndcg@10": res["ndcg@10"], "mrr@10": res["mrr@10"],
                  f"recall@{k}": res[f"recall@{k}"], "map": res["map"],
                  **({} if st is None else {"unparsed": st["unparsed"], "pairs": st["pairs"],
                                            "seconds": st["seconds"], "pairs_per_s": pairs_per_second(st)})}
                 for row, res, st in rows]
        write_atomic(args.json, json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
