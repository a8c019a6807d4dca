"""Plots for the README, from training logs and evaluation tables (matplotlib, plotting only).

    pip install matplotlib
    python bench/plot.py --sft runs/sft --rl runs/rl-rr runs/rl-ndcg --tables runs/results/*.json

Writes docs/sft_loss.png (SFT loss per step), docs/rl_reward.png (mean RL reward per step, one
line per run) and docs/results.png (nDCG@10 of every system in the evaluation tables).
"""
import argparse
import json
import os


def read_log(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    return [json.loads(line) for line in open(path) if line.strip()] if os.path.exists(path) else []


def smooth(xs, k=5):
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def prior_loss(records_path, checkpoint):
    """Token-mean SFT loss of the best model that ignores the inputs: it answers with the label
    frequencies, so each record costs the entropy of the score distribution, while the rest of the
    completion ("</answer>", the end token, the "0" of "10") is free. None if the files are missing."""
    if not (os.path.exists(records_path) and os.path.isdir(checkpoint)):
        return None
    import math
    import sys
    from collections import Counter

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from model import Tokenizer
    from rerank import completion_text

    records = [json.loads(line) for line in open(records_path) if line.strip()]
    if any(r.get("reasoning") for r in records):
        return None  # reasoning tokens are not free: no simple floor
    counts = Counter(r["score"] for r in records)
    n, tok = sum(counts.values()), Tokenizer(checkpoint)
    entropy = -sum(c * math.log(c / n) for c in counts.values())  # summed over records
    tokens = sum(c * (len(tok.encode(completion_text(s))) + 1) for s, c in counts.items())  # +1: end token
    return entropy / tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", default="runs/sft", help="sft.py output directory")
    ap.add_argument("--rl", nargs="*", default=["runs/rl-rr", "runs/rl-ndcg"], help="rl.py output directories")
    ap.add_argument("--tables", nargs="*", default=[], help="eval.py --json tables (one bar group per dataset)")
    ap.add_argument("--out", default="docs", help="where the PNG files go")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    rows = [r for r in read_log(args.sft) if "loss" in r]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], alpha=0.4, label="per step")
        ax.plot([r["step"] for r in rows], smooth([r["loss"] for r in rows]), label="mean of 5")
        floor = prior_loss(os.path.join(args.sft, "train.jsonl"), os.path.join(args.sft, "final"))
        if floor is not None:  # what a model that ignores the query and document can reach
            ax.axhline(floor, color="k", ls="--", lw=1, label=f"label prior ({floor:.3f})")
        ax.set(xlabel="step", ylabel="loss (token mean)", title="SFT loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "sft_loss.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for run in args.rl:
        rows = [r for r in read_log(run) if "reward" in r]
        if rows:
            ax.plot([r["step"] for r in rows], smooth([r["reward"] for r in rows]), label=os.path.basename(run))
            drawn = True
    if drawn:
        ax.set(xlabel="step", ylabel="mean reward (mean of 5 steps)", title="RL reward")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "rl_reward.png"), dpi=120)
    # eval.py writes one table (BM25 + one system) per run: merge those of one dataset/split
    groups = {}
    for t in args.tables:
        for row in json.load(open(t)):
            key = f"{row['dataset']} {row['split']} ({row['queries']} q, top-{row['top_k']})"
            groups.setdefault(key, {}).setdefault(row["system"], row["ndcg@10"])
    if groups:
        systems = list(dict.fromkeys(name for g in groups.values() for name in g))
        fig, ax = plt.subplots(figsize=(8, 4))
        width, labelled = 0.8 / len(systems), set()
        for j, (key, g) in enumerate(groups.items()):
            for i, name in enumerate(systems):
                if name in g:
                    bar = ax.bar(j + i * width, g[name], width, color=f"C{i}",
                                 label=None if name in labelled else name)
                    ax.bar_label(bar, fmt="%.2f", fontsize=6)
                    labelled.add(name)
        ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(groups))], list(groups))
        ax.set(ylabel="nDCG@10", title="BM25 candidates reranked")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "results.png"), dpi=120)
    print(f"plots written to {args.out}/")


if __name__ == "__main__":
    main()
