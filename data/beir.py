"""Read and write retrieval data: BEIR-format datasets, TREC qrels and TREC runs; read_jsonl
also checks the JSONL inputs of sft.py and tools/label.py.

A BEIR-format dataset is a directory with

    corpus.jsonl       one {"_id", "title", "text"} per line
    queries.jsonl      one {"_id", "text"} per line
    qrels/<split>.tsv  header "query-id<TAB>corpus-id<TAB>score", then one judgement per line

TREC qrels lines are `qid 0 docid grade`; TREC run lines are `qid Q0 docid rank score tag`.
Every writer goes through files.write_atomic (a temporary file and os.replace), so an interrupted
write never leaves a half-written file behind.

    from data.beir import load_corpus, load_queries, load_qrels
    corpus = load_corpus("data/beir/manpages")            # {doc_id: {"title", "text"}}
    queries = load_queries("data/beir/manpages")          # {query_id: text}
    qrels = load_qrels("data/beir/manpages", "test")      # {query_id: {doc_id: grade}}
"""
import json
import math
from pathlib import Path

from files import write_atomic


class DataFormatError(ValueError):
    """A bad record in an input file; the message names file, line and field."""


def _fail(path, line_no, what):
    raise DataFormatError(f"{path}, line {line_no}: {what}")


def _lines(path):
    """Yield (line_no, text) for each line of a UTF-8 file. Lines are decoded one at a time, so a
    byte that is not UTF-8 is reported with its line (a DataFormatError, not a UnicodeDecodeError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                _fail(path, line_no, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                     "save the file as UTF-8")


def _check_text(path, line_no, field, value):
    """JSON can spell strings that are not Unicode text ("\\ud800", a lone surrogate): refuse them
    here, where the file and line are known, not later in the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        _fail(path, line_no, f"field '{field}' is not valid Unicode text (lone surrogate "
                             f"{value[e.start]!r} at character {e.start})")


# ---------------------------------------------------------------- BEIR reading

def read_jsonl(path, required=(), optional=(), non_empty=(), expected="a JSONL file"):
    """Yield (line_no, record) for each non-blank line of a JSONL file of objects, each checked:
    the `required` fields are strings, the `optional` ones strings or null where present, the
    `non_empty` ones hold more than whitespace, and none holds a lone surrogate. Other fields pass
    through unchecked. A bad line raises DataFormatError naming the file, the line and the field;
    a missing file raises FileNotFoundError saying what was `expected`. Used by the BEIR loaders
    below, sft.py (training records) and tools/label.py (pairs to label), so all three report a
    bad line the same way."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected {expected})")
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(path, line_no, f"not valid JSON ({e.msg} at column {e.colno})")
        if not isinstance(rec, dict):
            fields = ", ".join(f"'{f}'" for f in required)
            _fail(path, line_no, f"expected a JSON object with fields {fields}, got {_json_type(rec)}")
        for field in (*required, *optional):
            if field not in rec and field in required:
                _fail(path, line_no, f"field '{field}' is missing")
            value = rec.get(field)
            if value is None and field in optional:
                continue
            if not isinstance(value, str):
                _fail(path, line_no, f"field '{field}' should be a string, got {_json_type(value)}")
            if field in non_empty and not value.strip():
                _fail(path, line_no, f"field '{field}' is empty")
            _check_text(path, line_no, field, value)
        yield line_no, rec


def _json_type(value):
    """The JSON name of a decoded value's type, for messages about the file."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}[type(value)]


def load_corpus(data_dir):
    """{doc_id: {"title": str, "text": str}} from <data_dir>/corpus.jsonl (a missing title is "")."""
    path = Path(data_dir) / "corpus.jsonl"
    corpus = {}
    for line_no, rec in read_jsonl(path, ("_id", "text"), optional=("title",), non_empty=("_id",),
                                   expected="a BEIR corpus, one {\"_id\", \"title\", \"text\"} a line"):
        if rec["_id"] in corpus:
            _fail(path, line_no, f"field '_id': duplicate document id {rec['_id']!r}")
        corpus[rec["_id"]] = {"title": rec.get("title") or "", "text": rec["text"]}
    return corpus


def load_queries(data_dir):
    """{query_id: text} from <data_dir>/queries.jsonl."""
    path = Path(data_dir) / "queries.jsonl"
    queries = {}
    for line_no, rec in read_jsonl(path, ("_id", "text"), non_empty=("_id",),
                                   expected="BEIR queries, one {\"_id\", \"text\"} a line"):
        if rec["_id"] in queries:
            _fail(path, line_no, f"field '_id': duplicate query id {rec['_id']!r}")
        queries[rec["_id"]] = rec["text"]
    return queries


def load_qrels(data_dir, split):
    """{query_id: {doc_id: grade}} from <data_dir>/qrels/<split>.tsv (BEIR header required)."""
    path = Path(data_dir) / "qrels" / f"{split}.tsv"
    if not path.exists():
        have = sorted(p.stem for p in (Path(data_dir) / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{path}: file not found (splits present: {', '.join(have) or 'none'})")
    return read_beir_qrels(path)


def read_beir_qrels(path):
    qrels = {}
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if line_no == 1:
            if parts != ["query-id", "corpus-id", "score"]:
                _fail(path, 1, f"expected header 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r}")
            continue
        if len(parts) != 3:
            _fail(path, line_no, f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(parts)}")
        qid, docid, grade = parts
        qrels.setdefault(qid, {})[docid] = _parse_grade(path, line_no, "score", grade)
    return qrels


def _parse_grade(path, line_no, field, value):
    try:
        return int(value)
    except ValueError:
        _fail(path, line_no, f"field '{field}' should be an integer grade, got {value!r}")


# ---------------------------------------------------------------- BEIR writing

def _jsonl(records):
    # ensure_ascii=False keeps the files readable; the field order is fixed by the caller
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_corpus(path, corpus):
    """corpus: {doc_id: {"title", "text"}}; written sorted by id."""
    write_atomic(path, _jsonl({"_id": d, "title": corpus[d]["title"], "text": corpus[d]["text"]}
                              for d in sorted(corpus)))


def write_queries(path, queries):
    write_atomic(path, _jsonl({"_id": q, "text": queries[q]} for q in sorted(queries)))


def write_beir_qrels(path, qrels):
    """qrels: {qid: {docid: grade}}; sorted by query, then grade descending, then doc id."""
    lines = ["query-id\tcorpus-id\tscore\n"]
    for q in sorted(qrels):
        for d, g in sorted(qrels[q].items(), key=lambda x: (-x[1], x[0])):
            lines.append(f"{q}\t{d}\t{g}\n")
    write_atomic(path, "".join(lines))


# ---------------------------------------------------------------- TREC formats

def read_trec_qrels(path):
    """{qid: {docid: grade}} from a TREC qrels file (`qid 0 docid grade`, whitespace-separated)."""
    qrels = {}
    for line_no, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            _fail(path, line_no, f"expected 4 fields 'qid 0 docid grade', got {len(parts)}")
        qid, _, docid, grade = parts
        qrels.setdefault(qid, {})[docid] = _parse_grade(path, line_no, "grade", grade)
    return qrels


def write_trec_qrels(path, qrels):
    lines = [f"{q} 0 {d} {g}\n" for q in sorted(qrels) for d, g in sorted(qrels[q].items())]
    write_atomic(path, "".join(lines))


def read_trec_run(path):
    """{qid: {docid: score}} from a TREC run file (`qid Q0 docid rank score tag`).

    The rank column is ignored, as trec_eval ignores it: the order comes from the scores.
    """
    run = {}
    for line_no, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            _fail(path, line_no, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}")
        qid, _, docid, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            _fail(path, line_no, f"field 'score' (5th column) should be a number, got {score!r}")
        if not math.isfinite(value):
            _fail(path, line_no, f"field 'score' (5th column) should be a finite number, got {score!r}")
        if docid in run.setdefault(qid, {}):
            _fail(path, line_no, f"field 'docid': document {docid!r} appears twice for query {qid!r}")
        run[qid][docid] = value
    return run


def write_trec_run(path, run, tag="run"):
    """run: {qid: {docid: score}}; each query written in descending score order, ranks from 1.

    Scores are written with 6 decimals; within a query, equal scores are ordered by doc id
    descending, which is the order trec_eval uses, so the written ranks match the evaluated ones.
    """
    lines = []
    for q in sorted(run):
        ranked = sorted(run[q].items(), key=lambda x: (-x[1], _Desc(x[0])))
        for rank, (d, s) in enumerate(ranked, 1):
            lines.append(f"{q} Q0 {d} {rank} {s:.6f} {tag}\n")
    write_atomic(path, "".join(lines))


class _Desc(str):
    """A string that sorts in reverse order (for descending tie-breaks inside an ascending sort)."""
    def __lt__(self, other):
        return str.__gt__(self, other)
