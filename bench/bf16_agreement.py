"""How far bf16 rankings are from fp32 ones: one process scores the same BM25 candidates with the
model in fp32 and in bf16 and compares the answers and the rankings.

    python bench/bf16_agreement.py --data data/beir/faqs --split dev --top-k 20 --max-doc-tokens 96
    python bench/bf16_agreement.py --model runs/sft/final --limit 20

Variants, each against fp32 (rerank.py's fast mode, the model's weights in that dtype):
  - bf16: as rerank.py runs it, the answer tokens' logits computed in fp32 (Reranker.answer_logits);
  - bf16, bf16 logits: every logit as the bf16 lm_head rounds it (rerank.py before that change).
Per variant: pairs whose answer differs, the largest and mean difference of the final score s*P(s)
and of the expected score, nDCG@10 (eval.py's implementation, rankings made as eval.py makes them)
and the queries whose first document or top 10 changes.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import rerank as R  # noqa: E402
from data.beir import load_corpus, load_qrels, load_queries  # noqa: E402
from data.bm25 import BM25  # noqa: E402
from eval import ndcg_at_k  # noqa: E402


def ranking(records, score):
    """Doc ids best first, as eval.py ranks a cached query (rerank.final_score, rerank.sort_records)."""
    recs = [dict(r, position=i) for i, r in enumerate(records)]
    for r in recs:
        r["score"] = R.final_score(r, score)
    return [r["id"] for r in R.sort_records(recs)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: the built-in reranker)")
    ap.add_argument("--data", default="data/beir/faqs", help="BEIR-format dataset directory")
    ap.add_argument("--split", default="dev", help="qrels split")
    ap.add_argument("--limit", type=int, help="the first N judged queries by id (default: all)")
    ap.add_argument("--top-k", type=int, default=20, help="BM25 candidates per query")
    ap.add_argument("--max-doc-tokens", type=int, default=96, help="document truncation budget")
    ap.add_argument("--score", default="answer", choices=["answer", "expected"], help="final score for the rankings")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    qrels = load_qrels(args.data, args.split)
    queries, corpus = load_queries(args.data), load_corpus(args.data)
    qids = sorted(qrels)[:args.limit] if args.limit else sorted(qrels)
    bm25 = BM25.from_dir(args.data)
    cands = {q: [d for d, _ in bm25.search(queries[q], args.top_k)] for q in qids}
    path = R.resolve_model(args.model)

    def score_all(dtype, fp32_answer_logits=True):
        rr = R.Reranker(path, device="cpu", dtype=dtype, max_doc_tokens=args.max_doc_tokens, verbose=False)
        if not fp32_answer_logits:
            rr.answer_logits = lambda h: rr.model.lm_head(h).float()
        out, t = {}, time.perf_counter()
        for q in qids:
            docs = [{"id": d, "text": corpus[d]["text"], "title": corpus[d].get("title", "")} for d in cands[q]]
            out[q] = sorted(rr.rerank(queries[q], docs), key=lambda r: r["position"])
        return out, time.perf_counter() - t

    ref, t_ref = score_all(torch.float32)
    variants = [("bf16", score_all(torch.bfloat16)), ("bf16, bf16 logits", score_all(torch.bfloat16, False))]
    n_pairs = sum(len(v) for v in ref.values())
    ndcg_ref = sum(ndcg_at_k(ranking(ref[q], args.score), qrels[q]) for q in qids) / len(qids)
    print(f"{os.path.basename(os.path.normpath(args.data))} / {args.split}: {len(qids)} queries, {n_pairs} pairs "
          f"(BM25 top {args.top_k}, documents cut at {args.max_doc_tokens} tokens), --score {args.score}; "
          f"fp32: nDCG@10 {ndcg_ref:.4f}, {t_ref:.0f}s")
    print("\n| variant | pairs with another answer | score diff max / mean | expected diff max / mean "
          "| nDCG@10 (diff) | queries, other first document | queries, other top 10 | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (got, secs) in variants:
        pairs = [(a, b) for q in qids for a, b in zip(ref[q], got[q]) if not a.get("empty")]
        flips = sum(a["answer"] != b["answer"] for a, b in pairs)
        ds = [abs(R.final_score(a) - R.final_score(b)) for a, b in pairs]
        de = [abs(a["expected"] - b["expected"]) for a, b in pairs]
        ndcg = sum(ndcg_at_k(ranking(got[q], args.score), qrels[q]) for q in qids) / len(qids)
        first = sum(ranking(ref[q], args.score)[0] != ranking(got[q], args.score)[0] for q in qids)
        top10 = sum(ranking(ref[q], args.score)[:10] != ranking(got[q], args.score)[:10] for q in qids)
        print(f"| {name} | {flips}/{len(pairs)} | {max(ds):.3f} / {sum(ds) / len(ds):.4f} | "
              f"{max(de):.3f} / {sum(de) / len(de):.4f} | {ndcg:.4f} ({ndcg - ndcg_ref:+.4f}) | "
              f"{first}/{len(qids)} | {top10}/{len(qids)} | {secs:.0f} |")


if __name__ == "__main__":
    main()
