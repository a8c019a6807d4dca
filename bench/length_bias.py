"""How much a document's length alone tells a relevant one from the others.

    python bench/length_bias.py --records runs/q3/train.jsonl runs/q4b/train.jsonl   # SFT records
    python bench/length_bias.py --beir data/beir/pyfaq --top-k 20                     # a test set's BM25 top k

--records: for each file and dataset, the words of positives (score 10) and negatives (score 0):
median, share under 40 words, share ending in ':', and within each query how often a negative is
shorter or longer than the query's positive (made with data/make_sft.py; --match-length should
bring the last two near each other).

--beir: the same for the relevant and the other documents among BM25's top k of every judged
test query, and the nDCG@10 of ranking them by length alone, shortest first (against BM25's own):
what "short means relevant" is worth on that set.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.beir import load_corpus, load_qrels, load_queries  # noqa: E402
from data.bm25 import BM25  # noqa: E402
from data.make_sft import doc_text  # noqa: E402
from eval import dataset_problem, evaluate  # noqa: E402


def describe(words: list, ends_colon: list) -> str:
    w = np.array(words)
    return f"{len(w)} documents, median {np.median(w):.0f} words, under 40: {np.mean(w < 40):.1%}, " \
           f"ending in ':': {np.mean(ends_colon):.1%}"


def records_report(path: str):
    records = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    for name in sorted({r["dataset"] for r in records}):
        rs = [r for r in records if r["dataset"] == name]
        for score, kind in ((10, "positives"), (0, "negatives")):
            sel = [r["doc"] for r in rs if r["score"] == score]
            print(f"{path} {name} {kind}: " + describe([len(d.split()) for d in sel], [d.rstrip().endswith(":") for d in sel]))
        by_query = {}
        for r in rs:
            by_query.setdefault(r["qid"], []).append(r)
        diffs = []
        for group in by_query.values():
            pos = [len(r["doc"].split()) for r in group if r["score"] == 10]
            diffs += [len(r["doc"].split()) - pos[0] for r in group if r["score"] == 0 and pos]
        d = np.array(diffs)
        print(f"{path} {name} a negative against its query's positive: shorter {np.mean(d < 0):.1%}, "
              f"longer {np.mean(d > 0):.1%}, median difference {np.median(d):+.0f} words")


def beir_report(data_dir: str, split: str, top_k: int):
    corpus, queries, qrels = load_corpus(data_dir), load_queries(data_dir), load_qrels(data_dir, split)
    bm25 = BM25.from_dir(data_dir)
    run, by_length = {}, {}
    relevant, other = [], []
    for qid in sorted(q for q in qrels if q in queries):
        hits = bm25.search(queries[qid], top_k)
        run[qid] = dict(hits)
        by_length[qid] = {d: -len(doc_text(corpus[d]).split()) for d, _ in hits}
        for d, _ in hits:
            (relevant if qrels[qid].get(d, 0) > 0 else other).append(doc_text(corpus[d]))
    for kind, docs in (("relevant", relevant), ("other", other)):
        print(f"{data_dir} {split} BM25 top {top_k}, {kind}: "
              + describe([len(d.split()) for d in docs], [d.rstrip().endswith(":") for d in docs]))
    for name, r in (("BM25", run), ("shortest first", by_length)):
        print(f"{data_dir} {split} BM25 top {top_k} ranked by {name}: nDCG@10 {evaluate(r, qrels)['ndcg@10']:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--records", nargs="*", default=[], help="SFT record files (data/make_sft.py)")
    ap.add_argument("--beir", nargs="*", default=[], help="BEIR dataset directories")
    ap.add_argument("--split", default="test", help="qrels split of --beir")
    ap.add_argument("--top-k", type=int, default=20, help="BM25 candidates per query for --beir")
    args = ap.parse_args()
    if not args.records and not args.beir:
        ap.error("give --records and/or --beir")
    for d in args.beir:
        if problem := dataset_problem(d, "--beir"):
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    for path in args.records:
        records_report(path)
    for d in args.beir:
        beir_report(d, args.split, args.top_k)


if __name__ == "__main__":
    main()
