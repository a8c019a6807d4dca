"""eval.py's metrics must equal trec_eval's (via pytrec_eval) to 1e-9 on awkward synthetic runs,
and hand-computed values; only the comparisons with trec_eval need pytrec_eval installed."""
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import eval as ev  # noqa: E402

try:
    import pytrec_eval
except ImportError:
    pytrec_eval = None
needs_trec_eval = pytest.mark.skipif(pytrec_eval is None, reason="pytrec_eval not installed (the reference; "
                                     "pip install -r requirements-dev.txt)")


def synthetic(seed=0, n_queries=40):
    """Graded qrels, unjudged docs, heavy score ties, a query with no relevant document,
    a judged query with no results and a run-only query."""
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        docs = [f"d{rng.randrange(300)}" for _ in range(rng.randrange(5, 150))]
        qrels[qid] = {d: rng.choice([0, 0, 1, 2, 3]) for d in rng.sample(docs, min(len(docs), rng.randrange(1, 30)))}
        # half the queries get scores from a 4-value set, so ties are everywhere
        run[qid] = {d: float(rng.randrange(4)) if q % 2 else rng.random() for d in docs}
    qrels["q_norel"] = {"d1": 0, "d2": 0}
    run["q_norel"] = {"d1": 1.0, "d2": 1.0, "d3": 0.5}
    qrels["q_noresults"] = {"d1": 2}
    run["q_runonly"] = {"d1": 1.0}
    return run, qrels


def reference(run, qrels):
    """pytrec_eval per query; MRR@10 is recip_rank on the run cut at 10 in trec_eval's order."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    top10 = {q: {d: s for d, s in docs.items() if d in ev.rank_docs(docs)[:10]} for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {q: {"ndcg@10": full[q]["ndcg_cut_10"], "recall@100": full[q]["recall_100"], "map": full[q]["map"],
                "mrr@10": rr[q]["recip_rank"]} for q in full}


@needs_trec_eval
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_query_metrics_match_trec_eval(seed):
    run, qrels = synthetic(seed)
    ref = reference(run, qrels)
    ours = ev.evaluate(run, qrels, per_query=True)["per_query"]
    assert sorted(ours) == sorted(ref), (sorted(ours), sorted(ref))
    for q in ref:
        for m in ("ndcg@10", "mrr@10", "recall@100", "map"):
            assert ours[q][m] == pytest.approx(ref[q][m], abs=1e-9), (q, m, ours[q][m], ref[q][m])


@needs_trec_eval
def test_mean_ignores_queries_without_results_unless_complete():
    run, qrels = synthetic(3)
    ref = reference(run, qrels)  # pytrec_eval evaluates only queries with results
    default = ev.evaluate(run, qrels)
    complete = ev.evaluate(run, qrels, complete=True)
    assert default["num_q"] == len(ref) and complete["num_q"] == len(qrels), (default["num_q"], complete["num_q"])
    for m in ("ndcg@10", "mrr@10", "recall@100", "map"):
        mean = sum(r[m] for r in ref.values())
        assert default[m] == pytest.approx(mean / len(ref), abs=1e-9), m
        assert complete[m] == pytest.approx(mean / len(qrels), abs=1e-9), m  # q_noresults counts 0


def test_ties_are_broken_by_doc_id_descending():
    # trec_eval ranks equal scores by doc id descending: "b" before "a"
    assert ev.rank_docs({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]
    assert ev.mrr_at_k({"a": 1.0, "b": 1.0}, {"a": 1}) == 0.5


@needs_trec_eval
def test_trec_eval_breaks_ties_the_same_way():
    ref = pytrec_eval.RelevanceEvaluator({"q": {"a": 1}}, {"recip_rank"}).evaluate({"q": {"a": 1.0, "b": 1.0}})
    assert ref["q"]["recip_rank"] == ev.mrr_at_k({"a": 1.0, "b": 1.0}, {"a": 1}) == 0.5


def test_ndcg_uses_linear_gain_and_all_judged_grades():
    # ranking [x, a]: DCG = 0 + 2/log2(3); ideal from grades {3, 2}: 3 + 2/log2(3)
    import math
    got = ev.ndcg_at_k(["x", "a"], {"a": 2, "b": 3, "x": 0}, k=10)
    assert got == pytest.approx((2 / math.log2(3)) / (3 + 2 / math.log2(3)), abs=1e-12)
    assert ev.ndcg_at_k(["a"], {"a": 0}, k=10) == 0.0  # no relevant document


def test_trec_cli_prints_table(tmp_path, capsys):
    from data.beir import write_trec_qrels, write_trec_run
    run, qrels = synthetic(4)
    write_trec_run(tmp_path / "run.trec", run)
    write_trec_qrels(tmp_path / "qrels.txt", qrels)
    ev.main(ev.parse_args(["--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "run.trec")]))
    out = capsys.readouterr().out
    expected = ev.evaluate(run, qrels)
    assert f"ndcg_cut_10           \tall\t{expected['ndcg@10']:.4f}" in out, out


@pytest.mark.parametrize("qrels,run,needle", [
    ("q1 0 d1 1\n", None, "--run {tmp}/run.trec: no such file"),
    (None, "q1 Q0 d1 1 1.0 t\n", "--qrels {tmp}/qrels.txt: no such file"),
    ("q1 0 d1 1\n", "q1 d1 1 1.0\n", "{tmp}/run.trec, line 1: expected 6 fields"),
    ("q1 0 d1 1\n", "q1 Q0 d1 1 1.0 t\nq1 Q0 d\xe9 2 0.5 t\n", "{tmp}/run.trec, line 2: not UTF-8 text (byte 0xe9"),
    ("\xff\xfeq1 0 d1 1\n", "q1 Q0 d1 1 1.0 t\n", "{tmp}/qrels.txt, line 1: not UTF-8 text (byte 0xff"),
    ("q1 0 d1 relevant\n", "q1 Q0 d1 1 1.0 t\n", "{tmp}/qrels.txt, line 1: field 'grade' should be an integer"),
    ("query-id\tcorpus-id\tscore\nq1\td1\n", "q1 Q0 d1 1 1.0 t\n", "{tmp}/qrels.txt, line 2: expected 3 tab-separated"),
])
def test_bad_qrels_or_run_gives_one_line_and_status_2(tmp_path, capsys, qrels, run, needle):
    for name, text in (("qrels.txt", qrels), ("run.trec", run)):
        if text is not None:
            (tmp_path / name).write_bytes(text.encode("latin-1"))
    args = ev.parse_args(["--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "run.trec")])
    assert ev.main(args) == 2
    err = capsys.readouterr().err
    assert needle.format(tmp=tmp_path) in err and "Traceback" not in err and err.count("\n") == 1, err


def test_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    (tmp_path / "qrels.tsv").write_bytes("\ufeffquery-id\tcorpus-id\tscore\nq1\td1\t1\n".encode("utf-8"))
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 1.0 t\n")
    assert ev.main(ev.parse_args(["--qrels", str(tmp_path / "qrels.tsv"), "--run", str(tmp_path / "run.trec")])) == 0
    assert "map                   \tall\t1.0000" in capsys.readouterr().out
