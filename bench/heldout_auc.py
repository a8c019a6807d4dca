"""Held-out AUC of a checkpoint's expected score: positives against each kind of negative.

    python data/make_sft.py --split dev --datasets manpages --max-queries 150 --mapping binary \\
        --max-positives 1 --n-hard 1 --n-medium 0 --n-easy 1 --out runs/heldout/manpages.jsonl
    python bench/heldout_auc.py --data runs/heldout/manpages.jsonl --max-doc-tokens 64 \\
        --model models/SmolLM2-135M-Instruct runs/rb-random/final

The records come from the dev split (queries never trained on). Each query's records are scored
together by rerank.py in fast mode with --score expected (sum_s s * P(s)); the AUC is the chance
that a positive scores above a negative of the given kind ("hard": BM25 ranks 1-10, "medium":
11-100, "easy": 101-1000), ties counting half: 0.5 is chance. `--model minilm` scores the same
records by all-MiniLM-L6-v2's cosine (the teacher of tools/grade_minilm.py), as a reference row.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import files  # noqa: E402
import model as M  # noqa: E402
import model_fast  # noqa: E402
import rerank as R  # noqa: E402
from eval import auc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True, help="checkpoint directories, or adapter files joined by "
                    "'+' (a.safetensors+b.safetensors: applied in order onto the built-in base model), e.g. the "
                    "step-N adapters of a run continued with --init-adapter")
    ap.add_argument("--json", default=None, help="write the AUCs of every model to this JSON file")
    ap.add_argument("--data", required=True, help="records from data/make_sft.py --split dev")
    ap.add_argument("--max-doc-tokens", type=int, default=96, help="document truncation, as in training")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="inference dtype")
    args = ap.parse_args()
    records = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    by_query = {}
    for r in records:
        by_query.setdefault(r["qid"], []).append(r)
    rows = []
    for path in args.model:
        if path == "minilm":
            rows.append(report(path, minilm_scores(records), args.json, rows))
            continue
        if path.endswith(".safetensors"):
            from data.convert_smollm2 import ensure_base_model
            model, tok = M.load(ensure_base_model(), dtype=torch.float32)
            for adapter in path.split("+"):
                files.apply_adapter(model, adapter)
            model = model.to(getattr(torch, args.dtype))
        else:
            model, tok = M.load(path, dtype=getattr(torch, args.dtype))
        model_fast.enable_fast_paths(model)
        rr = R.Reranker((model, tok), score="expected", max_doc_tokens=args.max_doc_tokens, verbose=False)
        scored = []  # (expected score, label)
        for recs in by_query.values():
            out = sorted(rr.rerank(recs[0]["query"], [r["doc"] for r in recs]), key=lambda o: o["position"])
            scored += [(o["score"], r["label"]) for o, r in zip(out, recs)]
        rows.append(report(path, scored, args.json, rows))


def report(name, scored, json_path, rows) -> dict:
    """Print and return one model's AUCs from its (score, label) pairs; rewrite json_path with the
    rows so far (a killed run keeps the models scored before it)."""
    pos = [s for s, label in scored if label.startswith("grade")]
    line, row = [], {"model": name, "positives": len(pos)}
    for kind in ("hard", "medium", "easy", "other", "offtopic"):
        neg = [s for s, label in scored if label == kind]
        if neg:
            row[kind] = auc(pos + neg, [True] * len(pos) + [False] * len(neg))
            line.append(f"{kind} {row[kind]:.3f} ({len(neg)})")
    print(f"{name}: {len(pos)} positives; AUC against " + ", ".join(line), flush=True)
    if json_path:
        files.write_atomic(json_path, json.dumps(rows + [row], indent=1) + "\n")
    return row


def minilm_scores(records) -> list:
    """(cosine of all-MiniLM-L6-v2, label) of every record, in file order."""
    from transformers import AutoModel, AutoTokenizer

    from bench.compare_minilm import embed, model_dir
    path = model_dir()
    tok, teacher = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    queries = sorted({r["query"] for r in records})
    q = dict(zip(queries, embed(teacher, tok, queries)))
    docs = embed(teacher, tok, [r["doc"] for r in records])
    return [(float(d @ q[r["query"]]), r["label"]) for d, r in zip(docs, records)]


if __name__ == "__main__":
    main()
