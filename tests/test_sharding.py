"""--sharding fsdp (sharding.py, FSDP2): 2 CPU processes (gloo) train as one process does,
for SFT and full-parameter RL; a run stopped and resumed from its sharded checkpoint ends with the
same weights; tools/consolidate.py makes an HF-layout model that model.load and transformers open;
rollouts gather the weights once per batch, not once per token."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import model as M
import rl
import sft
from test_rl import blank_policy, make_toy
from test_sft import write_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(ROOT, script), *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def assert_same_weights(a, b, atol=1e-5):
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=atol, rtol=0, msg=k)


def losses(out):
    return [json.loads(line)["loss"] for line in open(os.path.join(out, "log.jsonl")) if "loss" in json.loads(line)]


# ----------------------------------------------------------------------------- SFT


def sft_args(data, out, *extra):
    # the llama fixture ties lm_head to the embeddings: the tie must survive sharding
    return ["--model", os.path.join(FIX, "llama"), "--data", data, "--out", str(out), "--batch-size", "4",
            "--micro-batch-size", "1", "--lr", "1e-2", "--sample-every", "0", "--max-doc-tokens", "12",
            "--lora-rank", "0", "--epochs", "2", "--save-every", "2", "--dtype", "float32", *extra]


@pytest.fixture(scope="module")
def sft_one(tmp_path_factory):
    """One process, full fine-tuning, 4 steps: the reference (step-00004/ and final/ in HF layout)."""
    d = tmp_path_factory.mktemp("sft")
    data = write_records(d / "r.jsonl", n=8)
    sft.main(sft_args(data, d / "one"))
    return {"data": data, "out": d / "one"}


def test_fsdp_sft_on_two_processes_matches_one_process(sft_one, tmp_path):
    out = torchrun("sft.py", *sft_args(sft_one["data"], tmp_path / "two", "--sharding", "fsdp"))
    assert '"world_size": 2' in out and '"sharding": "fsdp"' in out
    assert losses(tmp_path / "two") == pytest.approx(losses(sft_one["out"]), abs=1e-5)
    assert_same_weights(weights(sft_one["out"] / "final"), weights(tmp_path / "two" / "final"))
    step = tmp_path / "two" / "step-00002"  # sharded: no model.safetensors, every process's shards
    assert sorted(os.listdir(step / "sharded")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not os.path.exists(step / "model.safetensors")


def test_fsdp_sft_stopped_and_resumed_ends_with_the_same_weights(sft_one, tmp_path):
    out = tmp_path / "resumed"
    torchrun("sft.py", *sft_args(sft_one["data"], out, "--sharding", "fsdp", "--max-steps", "3"))
    assert not os.path.exists(out / "final") and json.load(open(out / "last" / "train_info.json"))["step"] == 3
    state = torch.load(out / "last" / "train_state.pt", weights_only=False)
    assert len(state["rng_by_rank"]) == 2 and "optimizer" not in state  # the optimizer is in sharded/
    stdout = torchrun("sft.py", *sft_args(sft_one["data"], out, "--sharding", "fsdp", "--resume"))
    assert "resumed from" in stdout and "at step 3" in stdout
    assert_same_weights(weights(sft_one["out"] / "final"), weights(out / "final"))
    assert losses(out) == pytest.approx(losses(sft_one["out"]), abs=1e-5)

    # the sharded step-00004/ consolidates to the one-process run's step-00004/ (HF layout there)
    hf = tmp_path / "step4-hf"
    from tools import consolidate
    assert consolidate.main([str(out / "step-00004"), "--out", str(hf)]) == 0
    assert_same_weights(weights(sft_one["out"] / "step-00004"), weights(hf))
    model, tok = M.load(str(hf), device="cpu", dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert json.load(open(hf / "train_info.json"))["step"] == 4
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("copy files to a directory")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_consolidate_names_a_checkpoint_that_is_not_sharded(sft_one, capsys):
    from tools import consolidate
    assert consolidate.main([str(sft_one["out"] / "final"), "--out", "unused"]) == 2
    assert "sharded: missing" in capsys.readouterr().err


def test_fsdp_is_for_full_parameters(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=4)
    with pytest.raises(SystemExit, match="--lora-rank 0"):
        sft.main(sft_args(data, tmp_path / "o", "--sharding", "fsdp", "--lora-rank", "4"))
    with pytest.raises(SystemExit, match="needs --sharding fsdp on CUDA"):
        sft.main(sft_args(data, tmp_path / "o", "--cpu-offload"))


# ----------------------------------------------------------------------------- RL (full parameters)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")  # the blank policy is untied: lm_head is its own unit's weight
    return {"data": make_toy(str(d / "data")), "model": blank_policy(str(d / "blank")), "cache": str(d / "bm25")}


def rl_args(toy, out, *extra):
    # 4 queries of 4 documents x 2 rollouts, 2 mini-batches of micro-batches of 2 rows: processes hold
    # different numbers of rows (zero-variance groups are dropped), so some passes carry no rows
    return ["--model", toy["model"], "--data", toy["data"], "--dev-data", toy["data"], "--bm25-cache", toy["cache"],
            "--out", str(out), "--docs-per-query", "4", "--queries-per-step", "4", "--group-size", "2",
            "--max-new-tokens", "1", "--micro-batch-size", "2", "--mini-batches", "2", "--steps", "2",
            "--lora-rank", "0", "--lr", "1e-2", "--dev-queries", "8", "--dev-top-k", "4", "--sample-every", "0",
            "--save-every", "0", "--dtype", "float32", *extra]


def rl_rows(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    for r in rows:  # wall-clock fields differ between runs
        r.pop("seconds", None), r.pop("rollouts_s", None)
    return rows


def test_fsdp_rl_on_two_processes_matches_one_process_and_resumes_exactly(toy, tmp_path):
    rl.main(rl_args(toy, tmp_path / "one", "--eval-every", "2"))
    torchrun("rl.py", *rl_args(toy, tmp_path / "two", "--sharding", "fsdp", "--eval-every", "2"))
    one, two = rl_rows(tmp_path / "one"), rl_rows(tmp_path / "two")
    assert len(one) == len(two) == 3  # the evaluation before training, two steps
    for r1, r2 in zip(one, two):
        assert r1.keys() == r2.keys()
        for k in r1:
            assert r2[k] == pytest.approx(r1[k], abs=1e-5), k
    assert sum(r["groups"] - r["zero_var"] for r in one[1:]) > 0, "no group carried a gradient"
    start = weights(toy["model"])
    assert any(not torch.equal(start[k], weights(tmp_path / "one" / "final")[k]) for k in start)
    assert_same_weights(weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final"))

    out = tmp_path / "resumed"
    torchrun("rl.py", *rl_args(toy, out, "--sharding", "fsdp", "--max-steps", "1"))
    torchrun("rl.py", *rl_args(toy, out, "--sharding", "fsdp", "--resume"))
    assert_same_weights(weights(tmp_path / "one" / "final"), weights(out / "final"))


# ----------------------------------------------------------------------------- rollouts: one gather a batch


def test_rollouts_gather_the_weights_once_per_batch_not_per_token():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_sharding.py"), "--part", "rollouts",
                           "--model", os.path.join(FIX, "llama"), "--rows", "4", "--new-tokens", "6",
                           "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in done.stdout.splitlines()
             if line.startswith("| ") and line.split("|")[2].strip().isdigit()}
    # 2 blocks + the root: 3 FSDP units. Per token: the root once (it stays gathered after a
    # forward), each block in every forward: prefill (shared prefix, then the rest) + 5 decode steps
    assert table["sharding.gathered, once for the batch"] == 3
    assert table["gathered by each forward (per token)"] == 1 + 2 * (2 + 5)


def test_completion_logprobs_without_the_shared_prefix_are_the_same():
    model, tok = M.load(os.path.join(FIX, "llama"), device="cpu", dtype=torch.float32)
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 11], [5, 6, 7, 8, 9]]  # a shared prefix and a repeated prompt
    comps = [[12, 13], [14], [15, 16, 17]]
    a, mask_a = M.completion_logprobs(model, prompts, comps)
    b, mask_b = M.completion_logprobs(model, prompts, comps, shared_prefix=False)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
