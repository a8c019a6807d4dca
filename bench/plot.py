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
    tables = [json.load(open(t)) for t in args.tables]
    if tables:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / max(len(t) for t in tables)
        for j, table in enumerate(tables):
            for i, row in enumerate(table):
                bar = ax.bar(j + i * width, row["ndcg@10"], width, label=row["system"] if j == 0 else None,
                             color=f"C{i}")
                ax.bar_label(bar, fmt="%.3f", fontsize=7)
        ax.set_xticks([j + width * (len(t) - 1) / 2 for j, t in enumerate(tables)],
                      [f"{t[0]['dataset']} {t[0]['split']}" for t in tables])
        ax.set(ylabel="nDCG@10", title="BM25 top-20 reranked")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "results.png"), dpi=120)
    print(f"plots written to {args.out}/")


if __name__ == "__main__":
    main()
