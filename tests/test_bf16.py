"""bf16 on CPU: training and inference agree with fp32 within stated tolerances.

sft.py / rl.py run matrix products under torch.autocast(bf16) with fp32 weights, LoRA, optimizer
state, loss and log-probs; rerank.py / eval.py load the weights in bf16. bf16 keeps 8 bits of
mantissa (relative rounding ~0.4 % per product), so the tolerances below are a few percent."""
import json
import os

import torch

import model as M
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
