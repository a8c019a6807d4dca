"""Build SFT records (query, document, integer score 0..10) from the built-in datasets.

    python data/make_sft.py                                   # -> runs/sft/train.jsonl
    python data/make_sft.py --mapping graded --max-queries 500 --out runs/sft/small.jsonl
    python data/make_sft.py --datasets faqs manpages:300 foldoc:300     # a mix with stated proportions

For every TRAIN query of the chosen datasets (manpages, foldoc, faqs; pyfaq and debian-faq are
held-out test sets and are refused), candidates are mined as in ERank (data/bm25.mine_candidates):
every judged positive plus negatives sampled from BM25 ranks 1-10 ("hard"), 11-100 ("medium") and
101-1000 ("easy"). Grades become integer scores through --mapping:

    binary   grade >= 1 -> 10, negative -> 0
    graded   grade 2 -> 10, grade 1 -> 5, negative -> 0                       (default)
    soft     grade 2 -> 10, grade 1 -> 6, hard negative -> 1, other negative -> 0
             (BM25's top-10 non-positives often share the topic: a small, non-zero score)

Grade 2 is the page itself, grade 1 a page from its SEE ALSO / cross-references.
Default mix per query: all its positives (--max-positives caps them, highest grade first) and
3 negatives: 2 hard + 1 medium, so positives are not drowned by negatives.

Where this deviates from the paper (ERank, arXiv 2509.00520): the paper uses 1 positive + 19
negatives per query labelled by a teacher LLM (QwQ-32B reasoning + score, see tools/label.py);
here the labels come from the datasets' graded judgements, without reasoning, and the mix keeps
more positives because the 135M model and the CPU budget only allow a few thousand records.

--datasets takes `name` or `name:N`: N caps the train queries sampled from that dataset (the
default cap is --max-queries, 0 = all), so a mix states its proportions.

Clean labels: a sampled negative whose text is a near-duplicate of one of the query's positives
(identical, or word 5-gram Jaccard >= --near-dup; e.g. two man pages sharing one text) is really a
positive; it is dropped and replaced from the same BM25 bucket (data/bm25.mine_candidates). The
counts are printed per dataset and bucket.

Lengths: in the built-in datasets an answer is usually shorter than the other sections of its
manual (faqs train: 16 % of positives under 40 words, 3 % of negatives), so a model can learn
"short means relevant" instead of reading. --match-length cuts each negative's text to its
leading sentences, nearest in words to the text of the query's first positive
(leading_sentences; titles stay whole), so within a query length no longer tells them apart.

Deterministic: queries are sampled (--max-queries) and negatives drawn with seeded generators.
Output: JSONL records {"query", "doc", "score", "dataset", "qid", "docid", "label"} written
atomically; sft.py reads query, doc and score (and ignores the rest).
"""
import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from data.beir import load_corpus, load_qrels, load_queries  # noqa: E402
from data.bm25 import BM25, mine_candidates  # noqa: E402
from files import write_atomic  # noqa: E402

MAPPINGS = {
    # (grade 2, grade 1, hard negative, medium negative, easy negative)
    "binary": (10, 10, 0, 0, 0),
    "graded": (10, 5, 0, 0, 0),
    "soft": (10, 6, 1, 0, 0),
}


def score_for(mapping: str, grade: int | None = None, bucket: str | None = None) -> int:
    g2, g1, hard, medium, easy = MAPPINGS[mapping]
    if grade is not None:
        return g2 if grade >= 2 else g1
    return {"hard": hard, "medium": medium, "easy": easy}.get(bucket, 0)  # "other", "offtopic": 0


def doc_text(d: dict) -> str:
    """As rerank.py shows a document: title, newline, text (title omitted when empty)."""
    return (d["title"] + "\n" + d["text"]) if d.get("title") else d["text"]


def leading_sentences(text: str, words: int) -> str:
    """The leading sentences of `text` whose length is nearest `words` words (at least one; the
    whole text if it is no longer than that), cut from `text` itself at a sentence end: '.', '!'
    or '?' before white space. A text without one is left whole."""
    if len(text.split()) <= words:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text)]
    if not ends:
        return text
    return text[:min(ends, key=lambda e: abs(len(text[:e].split()) - words))]


def parse_dataset_spec(spec: str, default_cap: int) -> tuple[str, int]:
    """'faqs' -> ('faqs', default_cap); 'manpages:300' -> ('manpages', 300)."""
    name, sep, cap = spec.partition(":")
    if not sep:
        return name, default_cap
    if not name or not cap.isdigit():
        raise SystemExit(f"--datasets {spec!r}: expected NAME or NAME:N with N a whole number of queries")
    return name, int(cap)


BUILT_IN = ("manpages", "foldoc", "pyfaq", "faqs", "faqs-more", "faqs-extra", "faqs-wide")  # data/build_datasets.py --only NAME


def check_built(root: str, name: str):
    """A dataset that is not there stops with one line; a built-in one says how to build it."""
    d = os.path.join(root, name)
    if all(os.path.isfile(os.path.join(d, f)) for f in ("corpus.jsonl", "queries.jsonl")):
        return
    what = "no such directory" if not os.path.isdir(d) else "corpus.jsonl or queries.jsonl is missing"
    if name in BUILT_IN:
        raise SystemExit(f"error: {d}: {what}; it is a built-in dataset, build it first with: "
                         f"python data/build_datasets.py --only {name}")
    raise SystemExit(f"error: {d}: {what} (expected a BEIR-format dataset under --root {root})")


def draw_length(qid: str, seed: int, shortest: int, longest: int) -> int:
    """A query's shared length in words, log-uniform in [shortest, longest] (seeded by the query):
    as many one-sentence documents as documents of a few hundred words."""
    u = random.Random(f"{seed}:{qid}:length").random()
    return round(shortest * (longest / shortest) ** u)


def sample_long(rng, pool, n, words, at_least):
    """n items of pool (seeded), drawn among those of at least `at_least` words (words[item]) when
    there are n of them, so that cutting them to a query's length leaves them as long as its positive."""
    pool = list(pool)
    long_enough = [x for x in pool if words[x] >= at_least]
    return rng.sample(long_enough if len(long_enough) >= n else pool, min(n, len(pool)))


def make_records(data_dir, split="train", mapping="graded", max_queries=0, max_positives=0,
                 n_hard=2, n_medium=1, n_easy=0, seed=0, progress=True, near_dup=0.5, max_negatives=0,
                 match_length=False, shared_length=None, n_other=0, n_offtopic=0, offtopic_texts=(),
                 page_negatives=False):
    """-> (records, dropped): dropped counts the near-duplicate negatives removed, per bucket.
    match_length: each negative's text is cut to its leading sentences, nearest in words to the
    text of the query's first positive (see --match-length); titles are not cut.
    shared_length (shortest, longest): every document of a query, positive included, is cut to one
    length drawn for the query (draw_length; see --shared-length). n_other: negatives that are the
    positives of other queries of the same dataset (answers to other questions); n_offtopic:
    negatives drawn from offtopic_texts (documents of the other datasets). Both are cut like the
    rest, so at a short drawn length they are one or two off-topic sentences.
    page_negatives: where every document id is PAGE#SECTION (the answers of one FAQ page), the hard
    negatives and the other answers come from the positive's own page when it has enough of them:
    the neighbouring answers a reranker of that FAQ must tell apart."""
    name = Path(data_dir).resolve().name
    if split == "test" or name == "pyfaq" or name.startswith("debian-"):
        raise SystemExit(f"{data_dir} --split {split}: test splits, pyfaq and debian-* are held out for "
                         "testing; records are never made from them")
    if split == "train" and name.startswith("faqs-heldout"):
        raise SystemExit(f"{data_dir}: {name} is held out for evaluation; never train on it")
    corpus, queries, qrels = load_corpus(data_dir), load_queries(data_dir), load_qrels(data_dir, split)
    qids = sorted(q for q in qrels if q in queries)
    if max_queries and len(qids) > max_queries:
        qids = sorted(random.Random(f"{seed}:{name}").sample(qids, max_queries))
    qrels = {q: qrels[q] for q in qids}
    texts = {d: doc_text(corpus[d]) for d in corpus} if near_dup > 0 else None
    paged = page_negatives and all("#" in d for d in corpus)
    page = {d: d.split("#")[0] for d in corpus} if paged else None
    mined = mine_candidates(BM25.from_dir(data_dir), queries, qrels, n_hard=n_hard, n_medium=n_medium,
                            n_easy=n_easy, seed=seed, progress=progress, texts=texts, near_dup=near_dup, page=page)
    dropped = {}
    for m in mined:
        for bucket, n in m["dropped"].items():
            dropped[bucket] = dropped.get(bucket, 0) + n
    answers = sorted({d for m in mined for d, _ in m["pos"]})  # the pool of answers to other questions
    answer_words = {d: len(corpus[d]["text"].split()) for d in answers}
    offtopic_words = [len(t.split()) for t in offtopic_texts]
    if n_offtopic and not offtopic_texts:
        raise SystemExit("--n-offtopic needs off-topic documents: name more than one dataset in --datasets")
    out = []
    for m in mined:
        pos = m["pos"][:max_positives] if max_positives else m["pos"]
        negs = m["neg"]
        if max_negatives and len(negs) > max_negatives:  # a seeded choice among the mined buckets
            negs = sorted(random.Random(f"{seed}:{m['qid']}").sample(negs, max_negatives), key=negs.index)
        cut = None
        if shared_length and pos:  # the positive's cut; every other document is cut to its length
            cut = leading_sentences(corpus[pos[0][0]]["text"], draw_length(m["qid"], seed, *shared_length))
        at_least = len(cut.split()) if cut else 0  # other answers and off-topic texts: long enough to cut
        rng = random.Random(f"{seed}:{m['qid']}:extra")
        mine = {d for d, _ in m["pos"]} | {d for d, _ in negs}
        others = [d for d in answers if d not in mine]
        if page is not None:  # the other answers of the positive's page, when there are enough
            neighbours = [d for d in others if page[d] == page[pos[0][0]]]
            others = neighbours if len(neighbours) >= n_other else others
        negs = negs + [(d, "other") for d in sample_long(rng, others, n_other, answer_words, at_least)]
        docs = {d: corpus[d] for d, _ in pos + negs}
        for k, i in enumerate(sample_long(rng, range(len(offtopic_texts)), n_offtopic, offtopic_words, at_least)):
            docs[f"offtopic-{k}"] = {"title": "", "text": offtopic_texts[i]}
            negs.append((f"offtopic-{k}", "offtopic"))
        target = len(corpus[pos[0][0]]["text"].split()) if match_length and pos else None
        if cut is not None:
            docs = {d: {**v, "text": cut if d == pos[0][0] else leading_sentences(v["text"], at_least)}
                    for d, v in docs.items()}
        for d, grade in pos:
            out.append({"query": m["query"], "doc": doc_text(docs[d]), "score": score_for(mapping, grade=grade),
                        "dataset": name, "qid": m["qid"], "docid": d, "label": f"grade{grade}"})
        for d, bucket in negs:
            doc = docs[d] if target is None else {**docs[d], "text": leading_sentences(docs[d]["text"], target)}
            doc = doc_text(doc)  # the title stays whole: only the text is cut
            out.append({"query": m["query"], "doc": doc, "score": score_for(mapping, bucket=bucket),
                        "dataset": name, "qid": m["qid"], "docid": d, "label": bucket})
    return out, dropped


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build ERank SFT records from the built-in BEIR datasets.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_argument_group("input")
    g.add_argument("--datasets", nargs="+", default=["manpages", "foldoc"],
                   help="dataset names under --root, each NAME or NAME:N (N caps its train queries)")
    g.add_argument("--root", default="data/beir", help="directory holding the BEIR datasets")
    g.add_argument("--split", default="train", help="qrels split to use (train; dev/test are for evaluation)")
    g.add_argument("--max-queries", type=int, default=0,
                   help="queries per dataset without a :N cap, seeded sample (0 = all)")
    g = ap.add_argument_group("labels and mix")
    g.add_argument("--mapping", default="graded", choices=sorted(MAPPINGS), help="grade -> score rule: binary (positive 10, negative 0), graded (grade 2 -> 10, grade 1 -> 5, "
                   "negative 0), soft (10 / 6, hard negative 1, others 0)")
    g.add_argument("--max-positives", type=int, default=0, help="positives per query, highest grade first (0 = all)")
    g.add_argument("--n-hard", type=int, default=2, help="negatives per query from BM25 ranks 1-10")
    g.add_argument("--n-medium", type=int, default=1, help="negatives per query from BM25 ranks 11-100")
    g.add_argument("--n-easy", type=int, default=0, help="negatives per query from BM25 ranks 101-1000")
    g.add_argument("--max-negatives", type=int, default=0, help="keep a seeded sample of N of each query's mined "
                   "negatives (0 = all): with --n-hard 1 --n-easy 1 --max-negatives 1, each query gets one "
                   "negative, hard or easy")
    g.add_argument("--near-dup", type=float, default=0.5,
                   help="drop negatives this similar to a positive (word 5-gram Jaccard; 0 = keep all)")
    g.add_argument("--match-length", action="store_true",
                   help="cut each negative's text to its leading sentences, nearest in words to the query's first "
                   "positive's text: in the built-in datasets answers are shorter than other sections, so without "
                   "this a document's length alone tells positives from negatives")
    g.add_argument("--shared-length", type=int, nargs=2, default=None, metavar=("SHORTEST", "LONGEST"),
                   help="cut every document of a query, positive included, to one length in words drawn per query "
                   "(log-uniform between the two; at a sentence end): length never tells the positive apart, and "
                   "training sees every budget from one sentence up")
    g.add_argument("--n-other", type=int, default=0, help="negatives per query that are answers to other questions "
                   "(positives of other queries of the same dataset)")
    g.add_argument("--n-offtopic", type=int, default=0, help="negatives per query drawn from the documents of the "
                   "other --datasets (off-topic; one or two sentences when the query's length is short)")
    g.add_argument("--page-negatives", action="store_true", help="in datasets whose document ids are PAGE#SECTION "
                   "(the FAQs), hard negatives and other answers come from the positive's own page: its neighbours")
    g.add_argument("--thinking-share", type=float, default=0.0,
                   help="this share of records (seeded) in the thinking format: the thinking-mode prompt, then "
                   "an empty <think></think> block and the answer, so --thinking works without a teacher")
    g.add_argument("--seed", type=int, default=0, help="seeds the query sample and negative sampling")
    g = ap.add_argument_group("output")
    g.add_argument("--out", default="runs/sft/train.jsonl", help="JSONL file to write")
    args = ap.parse_args(argv)
    if args.split != "train":
        print(f"warning: building training records from the {args.split!r} split", file=sys.stderr)
    records = []
    specs = [parse_dataset_spec(s, args.max_queries) for s in args.datasets]
    for name, _ in specs:
        check_built(args.root, name)
    for name, cap in specs:
        others = []  # off-topic documents: those of the other datasets, in a fixed order
        if args.n_offtopic:
            for other, _ in specs:
                if other != name:
                    corpus = load_corpus(os.path.join(args.root, other))
                    others += [corpus[d]["text"] for d in sorted(corpus) if len(corpus[d]["text"].split()) >= 8]
        recs, dropped = make_records(os.path.join(args.root, name), args.split, args.mapping, cap,
                                     args.max_positives, args.n_hard, args.n_medium, args.n_easy, args.seed,
                                     near_dup=args.near_dup, max_negatives=args.max_negatives,
                                     match_length=args.match_length, shared_length=args.shared_length,
                                     n_other=args.n_other, n_offtopic=args.n_offtopic, offtopic_texts=others,
                                     page_negatives=args.page_negatives)
        counts = {}
        for r in recs:
            counts[r["score"]] = counts.get(r["score"], 0) + 1
        print(f"{name}: {len({r['qid'] for r in recs})} queries, {len(recs)} records, scores "
              + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
              + " | near-duplicate negatives dropped: " + ", ".join(f"{b} {n}" for b, n in dropped.items()),
              file=sys.stderr)
        if args.page_negatives:
            page_of = {}  # qid -> the page negatives were mined from: that of its first positive record
            for r in recs:
                if r["label"].startswith("grade"):
                    page_of.setdefault(r["qid"], r["docid"].split("#")[0])
            near = [r["label"] in ("hard", "other") and r["docid"].split("#")[0] == page_of[r["qid"]] for r in recs]
            print(f"{name}: {sum(near)} hard and other negatives from the positive's page"
                  + ("" if sum(near) else " (its ids are not PAGE#SECTION, or no page has enough)"), file=sys.stderr)
        records += recs
    if args.thinking_share > 0:  # sft.py reads "reasoning" (here empty) as: thinking-format record
        rng = random.Random(f"{args.seed}:thinking")
        for r in records:
            if rng.random() < args.thinking_share:
                r["reasoning"] = ""
        print(f"thinking format: {sum('reasoning' in r for r in records)} records", file=sys.stderr)
    write_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    from data.beir import DataFormatError
    try:
        main()
    except (DataFormatError, FileNotFoundError) as e:  # a dataset not built, a bad file: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
