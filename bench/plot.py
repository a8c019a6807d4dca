"""Plots for the README, from training logs and evaluation tables (matplotlib, plotting only).

    pip install matplotlib
    python bench/plot.py --sft runs/sft --rl runs/rl-rr runs/rl-ndcg --tables runs/results/*.json

Writes docs/sft_curve.png (SFT loss, first answer token's loss, AUC and dev nDCG@10 against
examples seen), docs/rl_reward.png (mean RL reward per step and dev nDCG@10, one
line per run) and docs/results.png (nDCG@10 of every system in the evaluation tables).
`--line docs/dev_curve.json` draws the README's learning curve, docs/dev_curve.png, from the
committed points of the shipped line (each from docs/experiments.md).
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
        return None  # reasoning tokens are not free: no simple floor (an empty one is: "<think></think>")
    counts = Counter(r["score"] for r in records)
    n, tok = sum(counts.values()), Tokenizer(checkpoint)
    entropy = -sum(c * math.log(c / n) for c in counts.values())  # summed over records
    tokens = sum(len(tok.encode(completion_text(r["score"], r.get("reasoning")))) + 1 for r in records)  # +1: end
    return entropy / tokens


def label_entropy(records_path):
    """Entropy (nats) of the score distribution of the fast-mode records: the first answer token's
    loss of a model that ignores query and document. None if the file is missing."""
    if not os.path.exists(records_path):
        return None
    import math
    from collections import Counter

    counts = Counter(r["score"] for r in map(json.loads, open(records_path)) if r.get("reasoning") is None)
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def plot_sft(plt, rows, args):
    """docs/sft_curve.png: the loss, the first answer token's loss, the AUC of the expected score
    (training batches, running mean; dev candidates) and dev nDCG@10, against examples seen."""
    x = [r.get("examples", r["step"]) for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0][0]
    ax.plot(x, [r["loss"] for r in rows], alpha=0.3, label="per step")
    ax.plot(x, smooth([r["loss"] for r in rows], 25), label="mean of 25")
    floor = prior_loss(os.path.join(args.sft, "train.jsonl"), os.path.join(args.sft, "final"))
    if floor is not None:  # what a model that ignores the query and document can reach
        ax.axhline(floor, color="k", ls="--", lw=1, label=f"label prior ({floor:.3f})")
    ax.set(ylabel="loss (token mean)", title="SFT loss", ylim=(0, None))
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ans = [(xi, r["answer_loss"]) for xi, r in zip(x, rows) if "answer_loss" in r]
    if ans:
        ax.plot([a for a, _ in ans], smooth([b for _, b in ans], 25), label="mean of 25 steps")
        h = label_entropy(os.path.join(args.sft, "train.jsonl"))
        if h is not None:
            ax.axhline(h, color="k", ls="--", lw=1, label=f"label prior ({h:.3f})")
        ax.legend(fontsize=8)
    ax.set(ylabel="loss", title="first answer token's loss", ylim=(0, None))
    ax = axes[1][0]
    auc = [(xi, r["auc"]) for xi, r in zip(x, rows) if "auc" in r]
    if auc:
        ax.plot([a for a, _ in auc], [b for _, b in auc], label="training batches (running mean)")
    dev = [(xi, r["dev_auc"]) for xi, r in zip(x, rows) if r.get("dev_auc") is not None]
    if dev:
        ax.plot([a for a, _ in dev], [b for _, b in dev], "o-", label="dev: BM25 top-k candidates")
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.set(xlabel="examples seen", ylabel="AUC", title="AUC of the expected score", ylim=(0.3, 1.0))
    ax.legend(fontsize=8)
    ax = axes[1][1]
    nd = [(xi, r["dev_ndcg10"], r["dev_ndcg10_expected"]) for xi, r in zip(x, rows) if "dev_ndcg10" in r]
    if nd:
        ax.plot([a for a, _, _ in nd], [b for _, b, _ in nd], "o-", label="s x P(s)")
        ax.plot([a for a, _, _ in nd], [c for _, _, c in nd], "s-", label="expected score")
    if args.bm25_dev is not None:
        ax.axhline(args.bm25_dev, color="k", ls="--", lw=1, label=f"BM25 ({args.bm25_dev:.3f})")
    ax.set(xlabel="examples seen", ylabel="nDCG@10", title="dev nDCG@10 (BM25 top-k reranked)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sft_curve.png"), dpi=110)


def plot_line(plt, path, out):
    """docs/dev_curve.png from a file of points (docs/dev_curve.json): the shipped line's held-out AUC
    and its nDCG@10 on the development sets against SFT examples seen, the baselines as lines."""
    line = json.load(open(path))
    points, ref = line["points"], line["reference"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    runs = list(dict.fromkeys(p["run"] for p in points))
    # each run joined to the point it continued: its first point's "from" (examples seen there)
    def own(run):
        mine = [p for p in points if p["run"] == run]
        parent = [p for p in points if p["examples"] == mine[0].get("from")]
        assert parent or "from" not in mine[0], f"{run}: no point has the examples its 'from' names"
        return parent + mine
    for i, run in enumerate(runs):
        ax.plot([p["examples"] for p in own(run)], [p["auc"] for p in own(run)], "o-", ms=4, color=f"C{i}", label=run)
    ax.axhline(ref["all-MiniLM-L6-v2"]["auc"], color="k", ls=":", lw=1, label="all-MiniLM-L6-v2 (the teacher)")
    ax.set(xlabel="SFT examples seen after rung 1", ylabel="AUC against BM25-hard negatives", title="held-out AUC (faqs-heldout)")
    ax.legend(fontsize=7, ncol=2)
    for i, dataset in enumerate(("faqs-heldout", "faqs-heldout-eq30")):
        for k, run in enumerate(runs):
            have = [p for p in own(run) if dataset in p]
            ax2.plot([p["examples"] for p in have], [p[dataset] for p in have], "o-", color=f"C{i}",
                     label=f"{dataset}, the model" if k == 0 else None)
        ax2.axhline(ref["BM25"][dataset], color=f"C{i}", ls="--", lw=1, label=f"{dataset}, BM25")
        ax2.axhline(ref["all-MiniLM-L6-v2"][dataset], color=f"C{i}", ls=":", lw=1,
                    label=f"{dataset}, all-MiniLM-L6-v2")
    for p in points:
        if p.get("shipped"):  # the default model's point
            for dataset in ("faqs-heldout", "faqs-heldout-eq30"):
                ax2.plot(p["examples"], p[dataset], "*", ms=13, color="gold", mec="k", zorder=3)
            ax2.annotate("the default", (p["examples"], p["faqs-heldout"]), textcoords="offset points",
                         xytext=(-20, 10), fontsize=8)
    ax2.set(xlabel="SFT examples seen after rung 1", ylabel="nDCG@10 (s x P(s), ties by position)",
            title="BM25 top 20 reranked (512 doc tokens)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dev_curve.png"), dpi=120)


def plot_dev_curve(plt, args):
    """Held-out AUC (positive against BM25-hard negatives, one length per query) of each step's
    adapter, against the examples it had seen; a run is named by the directory above curve/."""
    import re

    runs = {}
    for path in args.dev_curve:
        for row in json.load(open(path)):
            # a step adapter (…/RUN/step-N/adapter.safetensors, a copy RUN/curve/step-N.safetensors, or a
            # merged model runs/dev/models/RUN-stepN),
            # or the starting adapter alone (…init-adapter.safetensors: 0 examples)
            m = re.search(r"([\w-]+)/(?:curve/)?step-(\d+)(?:/adapter)?\.safetensors$|models/([\w-]+)-step(\d+)$", row["model"])
            if m and "hard" in row:
                name, step = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
                runs.setdefault(name, {})[int(step) * args.batch_size] = row["hard"]
            elif row["model"].endswith("init-adapter.safetensors") and "hard" in row:
                runs.setdefault("init", {})[0] = row["hard"]
    offsets, parents = {}, {}  # RUN=[PARENT@]N: the run continued a model that had seen N examples (PARENT's end)
    for spec in args.start:
        m = re.fullmatch(r"([\w-]+)=(?:([\w-]+)@)?(\d+)", spec)
        if not m:
            raise SystemExit(f"error: --start {spec!r}: expected RUN=N or RUN=PARENT@N (N examples, e.g. r7-soft=r5-ctl@12000)")
        name, parent, n = m.group(1), m.group(2), int(m.group(3))
        for run in (name, parent) if parent else (name,):
            if run not in runs:
                raise SystemExit(f"error: --start {spec!r}: no run {run!r} among the --dev-curve points "
                                 f"(runs: {', '.join(sorted(runs))})")
        offsets[name] = n
        if parent:
            parents[name] = parent
    for name, n in offsets.items():
        runs[name] = {n + x: auc for x, auc in runs[name].items()}
    for name, parent in parents.items():
        if offsets[name] not in runs[parent]:
            raise SystemExit(f"error: --start {name}={parent}@{offsets[name]}: {parent} has no point at "
                             f"{offsets[name]} examples (its points: {sorted(runs[parent])})")
    fig, axes = plt.subplots(1, 2 if args.dev_ndcg else 1, figsize=(11 if args.dev_ndcg else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    start = runs.pop("init", {}).get(0)
    for i, (name, points) in enumerate(sorted(runs.items(), key=lambda kv: min(kv[1]))):
        xs = sorted(points)
        gap = xs[1] - xs[0] if len(xs) > 1 else xs[0]
        if name in parents:  # a continuation begins where its parent ended
            xs = [offsets[name]] + xs
            points = {offsets[name]: runs[parents[name]][offsets[name]], **points}
        elif start is not None and name not in offsets and xs[0] <= 2 * gap:
            xs = [0] + xs  # a run from the start; a fork begins where it left its parent
            points = {0: start, **points}
        ax.plot(xs, [points[x] for x in xs], "o-", color=f"C{i}", label=name)
    ax.axhline(0.5, color="gray", ls=":", label="chance")
    ax.set(xlabel="training examples seen", ylabel="AUC against BM25-hard negatives",
           title="held-out AUC (faqs-heldout records)")
    ax.legend(fontsize=8)
    if args.dev_ndcg:
        plot_dev_ndcg(axes[0][1], args)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dev_curve.png"), dpi=120)


def plot_dev_ndcg(ax, args):
    """nDCG@10 of the reranker row of eval.py --json tables (EXAMPLES=FILE: the model had seen that
    many training examples), one line per dataset, with BM25 (row 0 of the same tables) and the
    --reference systems (bench/compare_minilm.py --json) as horizontal lines of the same colour."""
    by_set = {}
    for spec in args.dev_ndcg:
        examples, path = spec.split("=", 1)
        table = json.load(open(path))
        if len(table) < 2:
            raise SystemExit(f"{path}: no reranker row (row 0 is BM25, row 1 the reranker)")
        by_set.setdefault(table[1]["dataset"], {"bm25": table[0]["ndcg@10"], "points": {}})["points"][int(examples)] = \
            table[1]["ndcg@10"]
    refs = {}
    for path in args.reference:
        for row in json.load(open(path))[1:]:
            refs.setdefault(row["dataset"], []).append((row["system"], row["ndcg@10"]))
    for i, (name, d) in enumerate(sorted(by_set.items())):
        xs = sorted(d["points"])
        ax.plot(xs, [d["points"][x] for x in xs], "o-", color=f"C{i}", label=f"{name}, s x P(s)")
        ax.axhline(d["bm25"], color=f"C{i}", ls="--", lw=1, label=f"{name}, BM25")
        for system, value in refs.get(name, []):
            ax.axhline(value, color=f"C{i}", ls=":", lw=1, label=f"{name}, {system}")
    ax.set(xlabel="training examples seen", ylabel="nDCG@10", title="BM25 top 20 reranked (512 doc tokens)")
    ax.legend(fontsize=7)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sft", default="runs/sft", help="sft.py output directory")
    ap.add_argument("--rl", nargs="*", default=["runs/rl-rr", "runs/rl-ndcg"], help="rl.py output directories")
    ap.add_argument("--tables", nargs="*", default=[], help="eval.py --json tables (one bar group per dataset)")
    ap.add_argument("--bm25-dev", type=float, help="BM25's dev nDCG@10 on the same candidates (a line in the plot)")
    ap.add_argument("--out", default="docs", help="where the PNG files go")
    ap.add_argument("--dev-curve", nargs="*", default=[], metavar="JSON",
                    help="bench/heldout_auc.py --json files whose models are step adapters (…/step-NNNNN…): "
                    "docs/dev_curve.png, held-out AUC against examples seen")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch of the --dev-curve runs")
    ap.add_argument("--start", nargs="*", default=[], metavar="RUN=[PARENT@]N",
                    help="--dev-curve runs that continued a model which had seen N examples: their curve starts "
                    "there, joined to PARENT's point at N when given")
    ap.add_argument("--dev-ndcg", nargs="*", default=[], metavar="EXAMPLES=JSON",
                    help="eval.py --json tables of models that had seen EXAMPLES training examples: a second panel "
                    "of docs/dev_curve.png, nDCG@10 against examples (with --dev-curve)")
    ap.add_argument("--line", metavar="JSON", help="docs/dev_curve.png from a file of points (docs/dev_curve.json)")
    ap.add_argument("--reference", nargs="*", default=[], metavar="JSON",
                    help="bench/compare_minilm.py --json tables: reference lines in the --dev-ndcg panel")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    rows = [r for r in read_log(args.sft) if "loss" in r]
    if rows:
        plot_sft(plt, rows, args)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    drawn = False
    for i, run in enumerate(args.rl):
        rows = read_log(run)
        steps = [r for r in rows if "reward" in r]
        if steps:
            ax.plot([r["step"] for r in steps], smooth([r["reward"] for r in steps]), color=f"C{i}",
                    label=os.path.basename(run))
            dev = [(r["step"], r["dev_ndcg10"]) for r in rows if "dev_ndcg10" in r]
            ax2.plot([d[0] for d in dev], [d[1] for d in dev], "o-", color=f"C{i}", label=os.path.basename(run))
            drawn = True
    if drawn:
        ax.set(xlabel="step", ylabel="mean reward (mean of 5 steps)", title="RL reward (each reward its own scale)")
        ax.legend(fontsize=8)
        if args.bm25_dev is not None:
            ax2.axhline(args.bm25_dev, color="gray", ls="--", label="BM25")
        ax2.set(xlabel="step", ylabel="dev nDCG@10 (s x P(s))", title="dev nDCG@10 (step 0 = the SFT model)")
        ax2.legend(fontsize=8)
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
    if args.line:
        plot_line(plt, args.line, args.out)
    elif args.dev_curve or args.dev_ndcg:
        plot_dev_curve(plt, args)
    print(f"plots written to {args.out}/")


if __name__ == "__main__":
    main()
