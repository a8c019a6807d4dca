"""BM25 first-stage retrieval in plain numpy, plus ERank-style training candidate mining.

    from data.bm25 import BM25
    bm25 = BM25.from_dir("data/beir/manpages")              # builds or loads the cached index
    bm25.search("list directory contents", k=10)            # [(doc_id, score), ...]
    run = bm25.batch_search({"q1": "..."}, k=100)            # {qid: {doc_id: score}}

Scoring (Robertson BM25 with Lucene's idf, Pyserini's defaults k1=0.9, b=0.4):
    idf(t)      = log(1 + (N - df + 0.5) / (df + 0.5))
    score(q, d) = sum over query tokens t of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
where dl is the document's token count and avgdl the corpus mean. A query token repeated twice
counts twice (as in Lucene's bag-of-words query). Differences from Pyserini: Lucene drops the
constant (k1 + 1) factor (ranking unchanged) and stores document lengths lossily in one byte;
the tokenizer below is ours, not Lucene's EnglishAnalyzer (no Porter stemmer).

Tokenizer (version string TOKENIZER_VERSION, part of the index cache key): lowercase, split on
anything that is not a-z or 0-9, drop Lucene's 33 English stopwords, then a light "S" stemmer
(Harman 1991): "-ies" -> "-y" (not after e/a), "-es" -> "-e" (not after a/e/o), "-s" -> "" (not
after u/s). Title and text are indexed together.

The index is a CSR-like postings layout: for term i, doc_idx[ptr[i]:ptr[i+1]] are the documents
that contain it and tf[...] the counts. It is cached as an .npz under data/cache/bm25/, keyed by
the sha256 of corpus.jsonl and the tokenizer version.
"""
import hashlib
import os
import random
import re
from pathlib import Path

import numpy as np

TOKENIZER_VERSION = "alnum-lower-lucene33stop-sstem-v1"
# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (also Pyserini's default)
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split())
_TOKEN = re.compile(r"[a-z0-9]+")
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache" / "bm25"


def stem(word):
    """Harman's S stemmer: strips plural endings only, so it rarely merges unrelated words."""
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def tokenize(text):
    """'Lists the Directories' -> ['list', 'directory'] (see the module docstring)."""
    return [stem(t) for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    def __init__(self, doc_ids, vocab, ptr, doc_idx, tf, doc_len, k1=0.9, b=0.4):
        self.doc_ids = list(doc_ids)          # index -> doc id
        self.term_index = {t: i for i, t in enumerate(vocab)}
        self.ptr, self.doc_idx, self.tf = ptr, doc_idx, tf
        self.doc_len = doc_len.astype(np.float64)
        self.k1, self.b = k1, b
        n = len(self.doc_ids)
        df = np.diff(ptr).astype(np.float64)
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avgdl = self.doc_len.mean() if n else 1.0
        # per-document length normalisation, precomputed once
        self.norm = k1 * (1.0 - b + b * self.doc_len / max(avgdl, 1e-9))

    # ---------------------------------------------------------------- building

    @classmethod
    def from_corpus(cls, corpus, **kw):
        """corpus: {doc_id: {"title", "text"}} (indexed in sorted id order)."""
        return cls(*build_postings(corpus), **kw)

    @classmethod
    def from_dir(cls, data_dir, cache_dir=DEFAULT_CACHE, **kw):
        """Index <data_dir>/corpus.jsonl, reusing a cached index when the corpus is unchanged."""
        path = Path(data_dir) / "corpus.jsonl"
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        key = hashlib.sha256(f"{h}:{TOKENIZER_VERSION}".encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{Path(data_dir).resolve().name}-{key}.npz"
        if cache.exists():
            z = np.load(cache, allow_pickle=False)
            return cls(z["doc_ids"].tolist(), z["vocab"].tolist(), z["ptr"], z["doc_idx"], z["tf"], z["doc_len"], **kw)
        from data.beir import load_corpus
        doc_ids, vocab, ptr, doc_idx, tf, doc_len = build_postings(load_corpus(data_dir))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.tmp{os.getpid()}.npz")  # np.savez wants the .npz suffix
        np.savez(tmp, doc_ids=np.array(doc_ids, dtype=str), vocab=np.array(vocab, dtype=str),
                 ptr=ptr, doc_idx=doc_idx, tf=tf, doc_len=doc_len)
        os.replace(tmp, cache)
        return cls(doc_ids, vocab, ptr, doc_idx, tf, doc_len, **kw)

    # ---------------------------------------------------------------- scoring

    def scores(self, query_text):
        """BM25 score of every document for the query (float64 array, 0 where no term matches)."""
        s = np.zeros(len(self.doc_ids))
        for t in tokenize(query_text):
            i = self.term_index.get(t)
            if i is None:
                continue
            lo, hi = self.ptr[i], self.ptr[i + 1]
            docs, tf = self.doc_idx[lo:hi], self.tf[lo:hi].astype(np.float64)
            # docs are unique within one postings list, so fancy-index += is safe
            s[docs] += self.idf[i] * tf * (self.k1 + 1.0) / (tf + self.norm[docs])
        return s

    def search(self, query_text, k=10):
        """Top k [(doc_id, score)] by score descending; ties by corpus order. Only matching docs."""
        s = self.scores(query_text)
        hit = np.flatnonzero(s > 0)
        if len(hit) > k:
            # keep every document tied with the k-th score, then cut after a stable sort
            kth = np.partition(s[hit], len(hit) - k)[len(hit) - k]
            hit = hit[s[hit] >= kth]
        order = hit[np.lexsort((hit, -s[hit]))][:k]
        return [(self.doc_ids[i], float(s[i])) for i in order]

    def batch_search(self, queries, k=100, progress=True):
        """{qid: text} -> run {qid: {doc_id: score}} with the top k per query."""
        from tqdm import tqdm
        items = sorted(queries.items())
        return {q: dict(self.search(text, k)) for q, text in tqdm(items, desc="bm25", disable=not progress)}


def build_postings(corpus):
    """(doc_ids, vocab, ptr, doc_idx, tf, doc_len) for {doc_id: {"title", "text"}}."""
    doc_ids = sorted(corpus)
    term_docs = {}                                   # term -> {doc index: tf}
    doc_len = np.zeros(len(doc_ids), dtype=np.int32)
    for j, d in enumerate(doc_ids):
        toks = tokenize(corpus[d].get("title", "") + " " + corpus[d]["text"])
        doc_len[j] = len(toks)
        for t in toks:
            counts = term_docs.setdefault(t, {})
            counts[j] = counts.get(j, 0) + 1
    vocab = sorted(term_docs)
    ptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(term_docs[t]) for t in vocab])
    doc_idx = np.empty(ptr[-1], dtype=np.int32)
    tf = np.empty(ptr[-1], dtype=np.int32)
    for i, t in enumerate(vocab):
        items = sorted(term_docs[t].items())
        doc_idx[ptr[i]:ptr[i + 1]] = [j for j, _ in items]
        tf[ptr[i]:ptr[i + 1]] = [c for _, c in items]
    return doc_ids, vocab, ptr, doc_idx, tf, doc_len


# ---------------------------------------------------------------- training candidates

BUCKETS = {"hard": (1, 10), "medium": (11, 100), "easy": (101, 1000)}  # BM25 rank ranges (ERank §4)


def shingles(text, n=5):
    """The set of word n-grams of a text (lowercased alphanumeric words; stopwords kept)."""
    toks = _TOKEN.findall(text.lower())
    return {tuple(toks[i:i + n]) for i in range(max(len(toks) - n + 1, 1))}


def near_duplicate(a, b, threshold=0.5):
    """Identical texts, or Jaccard similarity of their word 5-gram sets >= threshold (two man pages
    sharing one text, a FAQ answer repeated under two questions)."""
    if a == b:
        return True
    sa, sb = (shingles(a), shingles(b)) if isinstance(a, str) else (a, b)
    return len(sa & sb) / max(len(sa | sb), 1) >= threshold


def mine_candidates(bm25, queries, qrels, n_hard=10, n_medium=5, n_easy=4, seed=0, progress=True,
                    texts=None, near_dup=0.5, page=None):
    """ERank-style SFT/RL candidates: per query its positives and sampled BM25 negatives.

    queries: {qid: text}; qrels: {qid: {docid: grade}}. Positives are all documents with
    grade >= 1, included even when BM25 did not retrieve them. Negatives are documents that are
    not positives, sampled without replacement from BM25 ranks 1-10 ("hard"), 11-100 ("medium")
    and 101-1000 ("easy"), n_* per bucket (fewer when the bucket has fewer). Defaults give
    1 positive + 19 negatives, the paper's 20 documents. Sampling uses random.Random seeded with
    "{seed}:{qid}", so a query's candidates do not depend on the other queries.

    Clean labels: with texts ({docid: text}) given, a sampled negative that is a near-duplicate of
    one of the query's positives (near_duplicate(): identical text or word 5-gram Jaccard >=
    near_dup) is a mislabelled positive; it is dropped, counted in "dropped", and replaced by
    another document from the same bucket when one is left.
    page ({docid: page}, for documents that are sections of a page, as the answers of one FAQ): the
    "hard" negatives come from the first positive's own page, its documents in BM25's order (the
    page's ranks 1-10, or 1-n_hard), when it has at least n_hard of them among BM25's top 1000.

    Returns [{"qid", "query", "pos": [(docid, grade)], "neg": [(docid, bucket)],
    "dropped": {bucket: count}}] sorted by qid.
    """
    from tqdm import tqdm
    want = {"hard": n_hard, "medium": n_medium, "easy": n_easy}
    out = []
    for qid in tqdm(sorted(q for q in qrels if q in queries), desc="mine", disable=not progress):
        rels = qrels[qid]
        pos = sorted(((d, g) for d, g in rels.items() if g >= 1), key=lambda x: (-x[1], x[0]))
        if not pos:
            continue
        ranked = [d for d, _ in bm25.search(queries[qid], k=BUCKETS["easy"][1])]
        rng = random.Random(f"{seed}:{qid}")
        pos_shingles = [shingles(texts[d]) for d, _ in pos] if texts is not None else []

        def is_dup(d):
            if not pos_shingles:
                return False
            sd = shingles(texts[d])
            return any(near_duplicate(sd, sp, near_dup) for sp in pos_shingles)

        neg, dropped = [], {b: 0 for b in BUCKETS}
        for bucket, (lo, hi) in BUCKETS.items():
            taken = {d for d, _ in neg}  # (buckets overlap only where "hard" came from the page)
            pool = [d for d in ranked[lo - 1:hi] if rels.get(d, 0) < 1 and d not in taken]
            if bucket == "hard" and page is not None:
                same_page = [d for d in ranked if page[d] == page[pos[0][0]] and rels.get(d, 0) < 1]
                if len(same_page) >= want["hard"]:  # the page's own first ranks; else ranks 1-10 of all
                    pool = same_page[:max(hi, want["hard"])]
            picks = rng.sample(pool, min(want[bucket], len(pool)))
            spare = [d for d in pool if d not in picks]
            for d in picks:
                while d is not None and is_dup(d):
                    dropped[bucket] += 1
                    d = spare.pop(rng.randrange(len(spare))) if spare else None
                if d is not None:
                    neg.append((d, bucket))
        out.append({"qid": qid, "query": queries[qid], "pos": pos, "neg": neg, "dropped": dropped})
    return out
