"""The erank package: the Python API from a program in another directory (docs/serving.md)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

PROGRAM = """
import json, sys
import model, data                      # the program's own modules, named like the repository's
import erank
from erank import Reranker

rr = Reranker(sys.argv[1], verbose=False)
one = rr.rerank("list files", ["ls lists directory contents", "Paris is in France", "cp copies files"])
many = rr.rerank_many([{"query": "list files", "documents": ["ls lists directory contents", "Paris is in France",
                                                               "cp copies files"]},
                       {"query": "copy", "documents": ["cp copies files"]}])
import erank.eval
assert model.MINE and data.MINE and sys.modules["model"] is model  # untouched by erank
assert "rerank" not in sys.modules and "eval" not in sys.modules  # the repository's files live under erank.*
print(json.dumps({"one": [r["id"] for r in one], "many": [[r["id"] for r in q] for q in many],
                  "ndcg": erank.eval.ndcg_at_k(["a", "b"], {"b": 1})}))
"""


def test_erank_package_works_from_another_directory_beside_modules_of_the_same_names(tmp_path):
    """What `pip install -e /path/to/clone` gives a program: the name erank and nothing else on its
    path (here a directory holding only a link to the clone's erank/), run from a directory that
    has its own model.py and data/ package."""
    site = tmp_path / "site"
    site.mkdir()
    os.symlink(os.path.join(ROOT, "erank"), site / "erank")
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    (app / "model.py").write_text("MINE = True\n")
    (app / "data" / "__init__.py").write_text("MINE = True\n")
    (app / "program.py").write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "program.py", os.path.join(FIX, "llama")], cwd=app, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)

    import rerank as R

    rr = R.Reranker(os.path.join(FIX, "llama"), verbose=False)
    docs = ["ls lists directory contents", "Paris is in France", "cp copies files"]
    assert got["one"] == [r["id"] for r in rr.rerank("list files", docs)]
    assert got["many"][0] == got["one"] and got["many"][1] == ["0"]
    assert got["ndcg"] > 0


def test_pyproject_installs_the_name_erank_only():
    import tomllib

    meta = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    assert meta["tool"]["setuptools"]["packages"] == ["erank"]
    assert meta["project"]["name"] == "erank"
