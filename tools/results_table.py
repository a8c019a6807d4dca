"""The README's results table from evaluation tables: one row per system, one column per set, nDCG@10.

    python tools/results_table.py runs/results/*.json --out runs/results/table.md

Reads the --json files of eval.py and bench/compare_minilm.py (a list of rows, each with "system",
"dataset", "split", "ndcg@10" and, where known, "queries" and "top_k"; eval.py's row 0 is BM25 on the
same candidates). A
system measured on a set in two files (BM25 is in every eval.py table of that set) must have the
same nDCG@10 in both, else the tables were made on different candidates and the error says which.
Rows keep the order systems first appear in; a set a system was not measured on reads "–".
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from files import write_atomic  # noqa: E402


def read_rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
            raise SystemExit(f"error: {path}: not a readable JSON table ({e})")
        if not isinstance(table, list):
            raise SystemExit(f"error: {path}: expected a list of rows (eval.py --json), got {type(table).__name__}")
        for i, row in enumerate(table):
            for field in ("system", "dataset", "split", "ndcg@10"):
                if not isinstance(row, dict) or field not in row:
                    raise SystemExit(f"error: {path}: row {i} has no field {field!r}")
                value = row[field]
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if field == "ndcg@10"
                      else isinstance(value, str))
                if not ok:
                    want = "a number" if field == "ndcg@10" else "a string"
                    raise SystemExit(f"error: {path}: row {i}: field {field!r} should be {want}, got {value!r}")
            rows.append({**row, "file": path})
    return rows


def results_table(rows: list[dict]) -> str:
    """A markdown table, systems down, sets across; a set is 'dataset (split, N queries, top k)'."""
    sets, systems, cell = [], [], {}
    for row in rows:
        top = f", top {row['top_k']}" if "top_k" in row else ""
        column = f"{row['dataset']} ({row['split']}, {row.get('queries', '?')} queries{top})"
        if column not in sets:
            sets.append(column)
        if row["system"] not in systems:
            systems.append(row["system"])
        key = (row["system"], column)
        if key in cell and abs(cell[key][0] - row["ndcg@10"]) > 1e-9:
            raise SystemExit(f"error: {row['system']} on {column}: nDCG@10 {cell[key][0]:.4f} in {cell[key][1]} but "
                             f"{row['ndcg@10']:.4f} in {row['file']} (different candidates or settings)")
        cell[key] = (row["ndcg@10"], row["file"])
    lines = ["| system | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for system in systems:
        values = [f"{cell[system, s][0]:.4f}" if (system, s) in cell else "–" for s in sets]
        lines.append(f"| {system} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("tables", nargs="+", help="eval.py / bench/compare_minilm.py --json files")
    ap.add_argument("--out", help="write the table here (markdown) instead of printing it")
    args = ap.parse_args(argv)
    table = results_table(read_rows(args.tables))
    if args.out:
        write_atomic(args.out, table)
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
