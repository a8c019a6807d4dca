"""Two SFT runs on the same batches, compared step by step: which one fits records it has not read yet?

    python bench/paired_runs.py runs/r11 runs/p-lr2e-4 --ranges 1-35 36-200

Two runs started with the same --data, --seed, --batch-size, --length-grouping, --group-by-query
and process count read the same records at every step (sft.py logs each step's token count; this
checks they agree). Until the first epoch ends every record of a batch is new to both (other
records of its query may have been read), so each step's answer loss (the first answer token's
loss, as sft.py logs it) measures how well a run fits records of its training distribution it has
not read, and the difference between the two runs at the same step is a paired one: the batch's
own difficulty cancels. Steps of later epochs (records read again) are left out. Per range of steps this prints the mean difference (second run minus first), its
standard error over the steps and their ratio, each run's mean, and each run's seconds a step.
A difference of two standard errors or more is one the batches' noise does not explain; how much
two runs of one setting differ with another batch order (another --seed) it does not measure.
"""
import argparse
import json
import os
import statistics


def read_log(run_dir: str) -> dict:
    """{step: row} of run_dir/log.jsonl: sft.py's per-step rows of the first epoch (those with an
    answer loss and a token count; fast-mode-free runs have none)."""
    path = os.path.join(run_dir, "log.jsonl")
    rows = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise SystemExit(f"{path}, line {n}: not JSON ({e})")
                if isinstance(row, dict) and "answer_loss" in row and "step" in row and "tokens" in row \
                        and row.get("epoch", 0) == 0:
                    rows[row["step"]] = row
    except OSError as e:
        raise SystemExit(f"{path}: cannot read it ({e.strerror})")
    if not rows:
        raise SystemExit(f"{path}: no first-epoch step with an answer loss and a token count (a log of sft.py?)")
    return rows


def paired(a: dict, b: dict, first: int, last: int) -> dict | None:
    """Mean of b - a over the steps both logged in [first, last], its standard error, each mean."""
    steps = [k for k in sorted(set(a) & set(b)) if first <= k <= last]
    if len(steps) < 2:
        return None
    diff = [b[k]["answer_loss"] - a[k]["answer_loss"] for k in steps]
    mean, se = statistics.mean(diff), statistics.stdev(diff) / len(diff) ** 0.5
    return {"steps": len(steps), "diff": mean, "se": se,
            "a": statistics.mean(a[k]["answer_loss"] for k in steps),
            "b": statistics.mean(b[k]["answer_loss"] for k in steps),
            "a_seconds": statistics.mean(a[k].get("seconds", float("nan")) for k in steps),
            "b_seconds": statistics.mean(b[k].get("seconds", float("nan")) for k in steps)}


def parse_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIRST-LAST, two step numbers")
    return int(first), int(last)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="a run directory of sft.py (its log.jsonl is read)")
    ap.add_argument("second", help="another, started with the same data, seed and batching")
    ap.add_argument("--ranges", nargs="+", type=parse_range, default=[(1, 10**9)],
                    help="step ranges FIRST-LAST, each reported on its own (default: every step both logged)")
    args = ap.parse_args(argv)
    a, b = read_log(args.first), read_log(args.second)
    both = sorted(set(a) & set(b))
    differ = [k for k in both if a[k].get("tokens") != b[k].get("tokens")]
    if differ:
        raise SystemExit(f"{args.first} and {args.second} read different batches (token counts differ from step "
                         f"{differ[0]}): start them with the same --data, --seed, --batch-size and process count")
    print(f"{len(both)} first-epoch steps logged by both, the same batches; answer loss, {args.second} minus "
          f"{args.first}; at step {both[0]} (before any update if 1): {b[both[0]]['answer_loss'] - a[both[0]]['answer_loss']:+.4f}")
    print("| steps | n | difference ± s.e. | in s.e. | first | second | s/step first / second |")
    print("|---|---|---|---|---|---|---|")
    for first, last in args.ranges:
        r = paired(a, b, first, last)
        if r is None:
            print(f"| {first}-{last} | fewer than 2 steps logged by both | | | | | |")
            continue
        ratio = f"{r['diff'] / r['se']:+.1f}" if r["se"] > 0 else "–"  # identical runs: every difference 0
        print(f"| {first}-{last} | {r['steps']} | {r['diff']:+.4f} ± {r['se']:.4f} | {ratio} | {r['a']:.3f} | "
              f"{r['b']:.3f} | {r['a_seconds']:.1f} / {r['b_seconds']:.1f} |")


if __name__ == "__main__":
    main()
