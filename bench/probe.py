"""Diagnostic: how much relevance signal does a checkpoint carry at the answer position?

    python data/make_sft.py --split dev --mapping binary --max-queries 120 --max-positives 1 \
        --n-hard 1 --n-medium 0 --n-easy 1 --out runs/probe/dev.jsonl
    python bench/probe.py --model models/SmolLM2-135M-Instruct --data runs/probe/dev.jsonl
    python bench/probe.py --model runs/sft/final --data runs/probe/dev.jsonl

For every (query, document) record it runs the fast-mode prompt once and reports, on records of
held-out queries (the queries are split in two, seeded):
  - the AUC of the model's own expected score (sum_s s * P(s)) for relevant against non-relevant;
  - the AUC of a logistic-regression probe trained on the other queries' frozen hidden states at
    the answer position (after block --layers and the final norm): what a linear read-out of the
    same forward pass could get.
AUC 0.5 is chance. A model whose own score is near 0.5 while the probe is clearly above it has
the information but does not yet map it to its answer; both near 0.5 means the signal is not
there. Use dev records (made from the dev split), so an SFT checkpoint is not probed on pairs it
was trained on.
"""
import argparse
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    pos, neg = scores[labels], scores[~labels]
    return ((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean()).item()


def fit_probe(X, y, weight_decay: float):
    """L2-regularised logistic regression (LBFGS), features standardised on the training rows."""
    mu, sd = X.mean(0), X.std(0) + 1e-6
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        logits = ((X - mu) / sd) @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda Z: (((Z - mu) / sd) @ w).detach()


def main(argv=None):
    import model as M
    import model_fast
    import sft
    from rerank import Reranker

    ap = argparse.ArgumentParser(description="Relevance signal at the answer position: own score vs a linear probe.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the built-in base model)")
    ap.add_argument("--data", default="runs/probe/dev.jsonl", help="records from data/make_sft.py (use --split dev)")
    ap.add_argument("--max-doc-tokens", type=int, default=64, help="document truncation, as in training")
    ap.add_argument("--train-fraction", type=float, default=0.6, help="share of the queries that fit the probe")
    ap.add_argument("--layers", type=int, nargs="+", default=[10, 20], help="blocks whose output is also probed")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="L2 weight of the probe")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="seeds the query split")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        from data.convert_smollm2 import ensure_base_model
        args.model = ensure_base_model()

    model, tok = M.load(args.model, device="cpu", dtype=torch.float32)
    model_fast.enable_fast_paths(model)
    records = sft.read_records(args.data)
    queries = list(dict.fromkeys(r["query"] for r in records))
    random.Random(args.seed).shuffle(queries)
    fit_q = set(queries[:int(len(queries) * args.train_fraction)])
    encoded = sft.encode_records(tok, records, args.max_doc_tokens)
    y = torch.tensor([r["score"] > 0 for r in records])
    fit = torch.tensor([r["query"] in fit_q for r in records])

    grabbed = {}
    for n in args.layers:
        model.model.layers[n - 1].register_forward_hook(lambda m, a, out, n=n: grabbed.__setitem__(n, out[:, -1]))
    names = [f"block {n}" for n in args.layers] + ["final norm"]
    feats = {k: [] for k in names}
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(encoded), 16):
            ids, attn = M._left_pad([p for p, _ in encoded[s:s + 16]], 0, "cpu")
            h = model.hidden(ids, attn)[:, -1]  # (B, C) at the answer position
            for n in args.layers:
                feats[f"block {n}"].append(grabbed[n])
            feats["final norm"].append(h)
        rr = Reranker((model, tok), thinking=False, score="expected", verbose=False)
        own = torch.tensor([x.expected for x in rr.score_prompts([p for p, _ in encoded])])
    print(f"{args.model}: {len(records)} records of {len(queries)} queries ({int(fit.sum())} fit the probe, "
          f"{int((~fit).sum())} held out; {y.float().mean():.2f} relevant), {time.perf_counter() - t0:.0f}s")
    print(f"own expected score: held-out AUC {auc(own[~fit], y[~fit]):.3f}")
    for k in names:
        X = torch.cat(feats[k])
        probe = fit_probe(X[fit], y[fit], args.weight_decay)
        print(f"linear probe on {k:10s}: held-out AUC {auc(probe(X[~fit]), y[~fit]):.3f} "
              f"(fit AUC {auc(probe(X[fit]), y[fit]):.3f})")


if __name__ == "__main__":
    main()
