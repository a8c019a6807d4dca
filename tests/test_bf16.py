"""bf16 on CPU: training and inference agree with fp32 within stated tolerances.

sft.py / rl.py run matrix products under torch.autocast(bf16) with fp32 weights, LoRA, optimizer
state, loss and log-probs; rerank.py / eval.py load the weights in bf16 (`--dtype auto`: where the
CPU multiplies bf16 natively). bf16 keeps 8 bits of mantissa (relative rounding ~0.4 % per
product), so the tolerances below are a few percent."""
import json
import os

import pytest
import torch

import model as M
import model_fast as MF
import rerank as R
import sft
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
QUERY = "list directory contents"
DOCS = ["list directory contents of a tree", "copy files to a directory", "remove a link",
        "print the shell", "archive files", "search the tree for files"]


def test_sft_losses_in_bf16_follow_fp32(tmp_path):
    data = tmp_path / "r.jsonl"
    with open(data, "w") as f:
        for i, d in enumerate(DOCS * 2):
            f.write(json.dumps({"query": QUERY, "doc": d, "score": 10 if i % 3 == 0 else 0}) + "\n")
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        sft.main(["--model", os.path.join(FIX, "llama"), "--data", str(data), "--out", str(out), "--device", "cpu",
                  "--dtype", dtype, "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-2", "--warmup", "0",
                  "--steps", "4", "--sample-every", "0", "--save-every", "0", "--max-doc-tokens", "12"])
        losses[dtype] = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    for a, b in zip(losses["float32"], losses["bfloat16"]):
        assert abs(a - b) <= 0.03 * a, (losses["float32"], losses["bfloat16"])
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]  # and it learns


def test_lora_update_survives_bf16_autocast():
    """A LoRA update far below bf16's resolution of the base output still changes the output:
    LoRALinear adds it in fp32."""
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    lora = training.LoRALinear(base, rank=2, alpha=2.0)
    with torch.no_grad():
        lora.lora_B.fill_(1e-4)  # an update of ~1e-4 against outputs of ~0.5: below bf16's step there
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lora(x)
    with torch.no_grad():
        lora.lora_B.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a new region: autocast caches its bf16 weights
        y0 = lora(x)
    assert y.dtype == torch.float32
    assert (y - y0).abs().min() > 0, "the LoRA update was rounded away"


def test_fast_mode_scores_and_ranking_in_bf16_match_fp32():
    scores, ranks = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = M.load(os.path.join(FIX, "qwen3_tied"), device="cpu", dtype=dtype)
        recs = R.Reranker((model, tok), score="expected", verbose=False).rerank(QUERY, DOCS)
        scores[dtype] = {r["id"]: r["score"] for r in recs}
        ranks[dtype] = [r["id"] for r in recs]
    diff = max(abs(scores[torch.float32][k] - scores[torch.bfloat16][k]) for k in scores[torch.float32])
    assert diff < 0.05, scores  # expected scores on the 0..10 scale
    # the ranking agrees wherever fp32's scores are further apart than the tolerance
    fp = scores[torch.float32]
    for i, a in enumerate(ranks[torch.bfloat16]):
        for b in ranks[torch.bfloat16][i + 1:]:
            if abs(fp[a] - fp[b]) > 0.1:
                assert fp[a] > fp[b], (ranks, scores)


# ----------------------------------------------------------------------------- dtype auto


@pytest.mark.parametrize("flags,want,why", [
    ({"avx512f", "avx512_bf16"}, torch.bfloat16, "AVX512-BF16"),
    ({"avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16, "AMX-BF16"),
    ({"avx512f", "avx2"}, torch.float32, "no native bf16"),  # AVX512 alone: bf16 products are emulated
    (set(), torch.float32, "no native bf16"),
])
def test_auto_dtype_is_bf16_where_the_cpu_multiplies_bf16_natively(monkeypatch, capsys, flags, want, why):
    monkeypatch.setattr(M, "cpu_flags", lambda: flags)
    assert M.pick_device("cpu", "auto") == (torch.device("cpu"), want)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"dtype {str(want)[6:]} (auto: " in err and why in err, err
    # dtype None stays fp32 on CPU, and an explicit dtype is used as given
    assert M.pick_device("cpu", None, verbose=False)[1] == torch.float32
    assert M.pick_device("cpu", "float32", verbose=False)[1] == torch.float32


def test_cpu_flags_come_from_proc_cpuinfo_where_torch_does_not_say(monkeypatch, tmp_path):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: "AVX512")  # a version without the dict
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert M.cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert M.cpu_flags(str(tmp_path / "missing")) == set()


def test_rerank_cli_runs_in_the_auto_dtype_and_says_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"query": QUERY, "documents": DOCS}))
    loaded = []
    load = M.load
    monkeypatch.setattr(M, "load", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    for flags, args, want in [({"avx512_bf16"}, [], torch.bfloat16), (set(), [], torch.float32),
                              ({"avx512_bf16"}, ["--dtype", "float32"], torch.float32)]:
        monkeypatch.setattr(M, "cpu_flags", lambda: flags)
        assert R.main([str(path), "--model", os.path.join(FIX, "llama"), "--device", "cpu", "--quiet"] + args) == 0
        assert next(loaded[-1][0].parameters()).dtype == want
        line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("device ")]
        assert len(line) == 1 and f"dtype {str(want)[6:]} (" in line[0], line


def test_eval_cache_key_names_the_dtype_auto_chose():
    import argparse

    import eval as E

    args = dict(thinking=False, max_new_tokens=8, max_query_tokens=8, max_doc_tokens=8, instruction=None,
                top_k=5, device=None)
    path = os.path.join(FIX, "llama")
    auto = E.model_key(argparse.Namespace(dtype="auto", **args), path, "bfloat16")
    assert auto == E.model_key(argparse.Namespace(dtype="bfloat16", **args), path)
    assert auto != E.model_key(argparse.Namespace(dtype="auto", **args), path, "float32")


# ----------------------------------------------------------------------------- bf16 speed paths, fp32 answers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_in_halves_gives_apply_ropes_values(dtype):
    torch.manual_seed(0)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])  # the second row left-padded
    cos, sin = M.rope_cos_sin(positions, 16, 1e4)
    contiguous = (torch.randn(2, 3, 6, 16) * 3).to(dtype)  # (B, H, T, D)
    transposed = (torch.randn(2, 6, 3, 16) * 3).to(dtype).transpose(1, 2)  # as Attention has it: a view
    for x in (contiguous, transposed):
        assert torch.equal(MF.rope_in_halves(x, cos, sin), M.apply_rope(x, cos, sin))


@pytest.mark.parametrize("name", ["qwen3_untied", "llama"])
def test_fast_paths_in_bf16_follow_the_plain_model(name):
    plain, _ = M.load(os.path.join(FIX, name), device="cpu", dtype=torch.bfloat16)
    fast, _ = M.load(os.path.join(FIX, name), device="cpu", dtype=torch.bfloat16)
    MF.enable_fast_paths(fast, inference_layout=True)
    prompts = [[5, 17, 42, 99, 7], [300, 1, 2], [8] * 11 + [120], [64]]
    ids, mask = M._left_pad(prompts, pad_id=0, device="cpu")
    with torch.no_grad():
        a, b = plain(ids, mask, last_only=True).float(), fast(ids, mask, last_only=True).float()
        assert (a - b).abs().max() <= 0.02 * a.abs().max(), (a - b).abs().max()  # bf16: 8 bits of mantissa
        cache_a, la = M.prefill(plain, prompts, extra=2)
        cache_b, lb = M.prefill(fast, prompts, extra=2)
        nxt = la.argmax(-1)
        da, db = M.decode_one_token(plain, cache_a, nxt).float(), M.decode_one_token(fast, cache_b, nxt).float()
        assert (da - db).abs().max() <= 0.02 * da.abs().max(), (da - db).abs().max()


def test_answer_logits_are_fp32_at_the_answer_tokens():
    model, tok = M.load(os.path.join(FIX, "qwen3_tied"), device="cpu", dtype=torch.bfloat16)
    rr = R.Reranker((model, tok), verbose=False)
    h = torch.randn(3, model.config.hidden_size).to(torch.bfloat16) * 4
    got = rr.answer_logits(h)
    assert got.dtype == torch.float32
    ids = sorted(set(rr.digit_ids) | set(rr.ten_ids))
    exact = h.double() @ model.lm_head.weight.double().T  # bf16 inputs: their products are exact
    torch.testing.assert_close(got[:, ids].double(), exact[:, ids], atol=1e-4, rtol=1e-5)
    others = [i for i in range(model.config.vocab_size) if i not in ids]
    assert torch.equal(got[:, others], model.lm_head(h).float()[:, others])  # only the normaliser's terms
