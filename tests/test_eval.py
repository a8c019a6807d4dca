"""eval.py end to end: BM25 -> rerank -> table, and resuming from the scored-pair cache."""
import json
import os

import eval as E
import rerank as R

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_beir(d):
    docs = {"d1": "ls lists directory contents", "d2": "cp copies files", "d3": "tar stores files in an archive",
            "d4": "find searches a directory tree", "d5": "rm removes files", "d6": "ln makes links between files"}
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "list directory contents"}) + "\n" +
                                     json.dumps({"_id": "q2", "text": "copy files"}) + "\n")
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td4\t1\nq2\td2\t2\n")


def test_end_to_end_table_and_resume(tmp_path, monkeypatch):
    tiny_beir(tmp_path / "beir")
    argv = ["--data", str(tmp_path / "beir"), "--model", os.path.join(FIX, "llama"), "--top-k", "3",
            "--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "table.json"), "--name", "tiny"]
    E.main(E.parse_args(argv))
    table = json.load(open(tmp_path / "table.json"))
    assert [r["system"] for r in table] == ["BM25", "tiny"]
    assert table[1]["pairs"] == 5 and table[1]["unparsed"] == 0  # BM25 finds 2 candidates for q1, 3 for q2
    assert (tmp_path / "runs" / "beir-test-tiny.trec").exists()
    # an interrupted evaluation: the cache holds q1 and a torn line; only q2 is scored again
    cache = next((tmp_path / "runs" / "cache").iterdir())
    lines = cache.read_text().splitlines()
    cache.write_text(next(l for l in lines if '"q1"' in l) + "\n" + '{"qid": "q2", "resu')
    scored = []
    real = R.Reranker.rerank
    monkeypatch.setattr(R.Reranker, "rerank", lambda self, q, d, i=None: scored.append(q) or real(self, q, d, i))
    E.main(E.parse_args(argv))
    assert scored == ["copy files"]
    again = json.load(open(tmp_path / "table.json"))
    for row in again + table:
        row.pop("seconds", None)  # q2 was timed again
    assert again == table
