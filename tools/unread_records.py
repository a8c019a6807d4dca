"""The records an SFT run never read, so that a run continuing from it sees only new ones.

    python tools/unread_records.py runs/r5/graded.jsonl --steps 1500 --out runs/r6/rest-soft.jsonl

sft.py reads its records in a seeded shuffle (sft.epoch_batches); a run of --steps N with
--batch-size B and --seed S read the first N batches of that shuffle, N * B records when N is
within one epoch. The others, in file order, are written out: the next run (sft.py
--init-adapter, a new LoRA on the finished one) trains on records its starting model never saw.
Only runs that shuffled records one by one (no --length-grouping, no --group-by-query).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from data.beir import DataFormatError, read_jsonl  # noqa: E402
from files import write_atomic  # noqa: E402
from sft import epoch_batches  # noqa: E402


def unread(n_records: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the records a run of `steps` steps did not read, in file order."""
    batches = epoch_batches([0] * n_records, batch_size, seed, epoch=0)
    if steps > len(batches):
        raise SystemExit(f"error: {steps} steps of {batch_size} is more than one epoch of "
                         f"{n_records} records: the run read every record")
    read = {i for batch in batches[:steps] for i in batch}
    return [i for i in range(n_records) if i not in read]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("records", help="the finished run's --data (JSONL)")
    ap.add_argument("--steps", type=int, required=True, help="the steps the run took")
    ap.add_argument("--batch-size", type=int, default=8, help="the run's --batch-size")
    ap.add_argument("--seed", type=int, default=0, help="the run's --seed")
    ap.add_argument("--out", required=True, help="the unread records (JSONL)")
    args = ap.parse_args(argv)
    records = [r for _, r in read_jsonl(args.records, ("query", "doc"), expected="SFT records from data/make_sft.py")]
    rest = unread(len(records), args.steps, args.batch_size, args.seed)
    write_atomic(args.out, "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in rest))
    print(f"wrote {len(rest)} of {len(records)} records to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
