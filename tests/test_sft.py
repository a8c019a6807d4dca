"""sft.py, tools/label.py: masking, LoRA, records, schedule, resume, two processes, labelling."""
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import eval as E
import files
import model as M
import rerank as R
import sft
import training
from data.beir import DataFormatError, load_corpus, load_qrels, load_queries
from data.bm25 import BM25
from tools import label as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
BEIR = os.path.join(FIX, "beir_tiny")  # 8 man-page documents, 3 dev queries with graded qrels
WORDS = "list directory contents copy files archive search tree remove link shell print".split()


def load(name="llama"):
    return M.load(os.path.join(FIX, name), device="cpu", dtype=torch.float32)


def write_records(path, n=8, seed=0, words=6):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"query": " ".join(rng.choice(WORDS) for _ in range(2)),
                                "doc": " ".join(rng.choice(WORDS) for _ in range(words + i % 4)),
                                "score": rng.choice([0, 3, 5, 10])}) + "\n")
    return str(path)


def train_args(data, out, *extra):
    return ["--model", os.path.join(FIX, "llama"), "--data", data, "--out", str(out), "--batch-size", "4",
            "--micro-batch-size", "2", "--lr", "1e-2", "--sample-every", "0", "--save-every", "0",
            "--max-doc-tokens", "12", "--dtype", "float32", *extra]  # exact comparisons: fp32


def final_weights(out):
    return load_file(os.path.join(out, "final", "model.safetensors"))


# ----------------------------------------------------------------------------- masking


def test_completion_logprobs_match_full_forward_on_padded_batch():
    model, tok = load()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (5, 9, 3)]
    comps = [[rng.randrange(3, 300) for _ in range(n)] + [tok.im_end] for n in (1, 3, 0)]
    logps, mask = M.completion_logprobs(model, prompts, comps)
    assert logps.dtype == torch.float32 and logps.shape == mask.shape == (3, 4)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    for i, (p, c) in enumerate(zip(prompts, comps)):
        logits = model(torch.tensor([p + c]))[0]  # (T, V): one row, no padding
        ref = torch.log_softmax(logits.float(), -1)
        want = torch.stack([ref[len(p) + j - 1, t] for j, t in enumerate(c)])
        torch.testing.assert_close(logps[i, :len(c)], want, atol=1e-5, rtol=1e-5)
        assert (logps[i, len(c):] == 0).all(), "padding must carry no log-prob"


def answer_batch(tok):
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (6, 4, 8)]
    comps = [tok.encode(R.completion_text(s, None)) + [tok.im_end] for s in (10, 0, 7)]
    return prompts, comps, [tok.token_id(str(d)) for d in range(10)]


def test_answer_logprobs_without_targets_are_the_completion_logprobs():
    model, tok = load()
    prompts, comps, digits = answer_batch(tok)
    logps, mask, first = sft.answer_logprobs(model, prompts, comps, digits, [None] * 3)
    want, want_mask = M.completion_logprobs(model, prompts, comps)
    assert mask.equal(want_mask)
    torch.testing.assert_close(logps, want)
    torch.testing.assert_close(first[:, 0], logps[1, 0] * 0 + first[:, 0])  # shape (3, 10)
    torch.testing.assert_close(first[1, 0], logps[1, 0])  # "0" is record 1's first token
    torch.testing.assert_close(first[0, 1], logps[0, 0])  # "1" starts record 0's "10"


def test_soft_target_mixes_the_first_answer_token_only():
    model, tok = load()
    prompts, comps, digits = answer_batch(tok)
    hard, _, first = sft.answer_logprobs(model, prompts, comps, digits, [None] * 3)
    targets = [sft.first_token_target(0.25, "soft"), sft.first_token_target(1.0, "soft"), None]
    soft, _, _ = sft.answer_logprobs(model, prompts, comps, digits, targets)
    torch.testing.assert_close(soft[0, 0], 0.25 * first[0, 1] + 0.75 * first[0, 0])
    torch.testing.assert_close(soft[1, 0], first[1, 1])  # target 1: all the weight on "1" (of "10")
    assert soft[1, 0] != hard[1, 0], "record 1's own first token is '0': the target must change its term"
    torch.testing.assert_close(soft[:, 1:], hard[:, 1:])  # format tokens keep the record's completion
    torch.testing.assert_close(soft[2], hard[2])  # no target: unchanged


def test_soft_target_gradient_moves_p10_towards_the_target():
    model, tok = load()
    prompts, comps, digits = answer_batch(tok)
    params = [p for p in model.parameters()]
    for t in (0.0, 1.0):
        model.zero_grad()
        logps, _, first = sft.answer_logprobs(model, prompts[:1], comps[:1], digits, [sft.first_token_target(t, "soft")])
        (-logps[0, 0]).backward()
        with torch.no_grad():
            for p in params:
                p -= 1e-3 * p.grad
            _, _, after = sft.answer_logprobs(model, prompts[:1], comps[:1], digits, [None])
            for p in params:
                p += 1e-3 * p.grad
        gap = lambda f: float((f[0, 1] - f[0, 0]).detach())  # log P("1") - log P("0")
        assert (gap(after) > gap(first)) == (t == 1.0), (t, gap(first), gap(after))


@pytest.mark.parametrize("t", [0.0, 0.03, 0.1, 0.15, 0.2, 0.37, 0.5, 0.55, 0.9, 0.93, 1.0])
def test_scale_target_keeps_the_teachers_score_on_the_two_nearest_answers(t):
    w = sft.first_token_target(t, "scale")
    score = sft.FIRST_TOKEN_SCORE
    assert sum(w) == pytest.approx(1) and min(w) >= 0
    assert sum(wd * s for wd, s in zip(w, score)) == pytest.approx(10 * t)  # its mean is the teacher's score
    used = sorted(s for wd, s in zip(w, score) if wd > 0)
    below = max(s for s in sft.SCALE if s <= 10 * t + 1e-9)  # the nearest answers either side of 10 t
    above = min(s for s in sft.SCALE if s >= 10 * t - 1e-9)
    assert set(used) <= {below, above} and used
    assert (w[1] > 0) == (t > 0.9)  # "1" (of "10") only above 9: no answer of 1


def test_scale_target_weighs_the_first_answer_token_by_its_digits():
    model, tok = load()
    prompts, comps, digits = answer_batch(tok)
    hard, _, first = sft.answer_logprobs(model, prompts, comps, digits, [None] * 3)
    targets = [sft.first_token_target(0.55, "scale"), sft.first_token_target(0.15, "scale"), None]
    scaled, _, _ = sft.answer_logprobs(model, prompts, comps, digits, targets)
    torch.testing.assert_close(scaled[0, 0], 0.5 * first[0, 5] + 0.5 * first[0, 6])
    torch.testing.assert_close(scaled[1, 0], 0.25 * first[1, 0] + 0.75 * first[1, 2])
    torch.testing.assert_close(scaled[:, 1:], hard[:, 1:])
    torch.testing.assert_close(scaled[2], hard[2])


def test_soft_and_scale_losses_train_on_the_teachers_targets(tmp_path):
    data = write_records(tmp_path / "r.jsonl")
    rows = [json.loads(line) for line in open(data)]
    with open(tmp_path / "t.jsonl", "w") as f:  # a teacher's target on all records but the last
        for i, r in enumerate(rows):
            f.write(json.dumps({**r, **({"target": i / 8} if i < len(rows) - 1 else {})}) + "\n")
    losses = {}
    for loss in ("hard", "soft", "scale"):
        sft.main(train_args(str(tmp_path / "t.jsonl"), tmp_path / loss, "--loss", loss, "--steps", "2"))
        log = [json.loads(line) for line in open(tmp_path / loss / "log.jsonl")]
        losses[loss] = [row["answer_loss"] for row in log]
    assert losses["soft"][0] != losses["hard"][0] and losses["scale"][0] not in (losses["hard"][0], losses["soft"][0])
    with pytest.raises(SystemExit, match="no 'target' fields"):
        sft.main(train_args(data, tmp_path / "none", "--loss", "scale", "--steps", "1"))


def test_scale_completions_spell_the_answer_the_target_weighs_most(tmp_path, capsys):
    assert [sft.top_answer(t) for t in (0.0, 0.1, 0.15, 0.55, 0.95, 0.96)] == [0, 0, 2, 5, 9, 10]
    rows = [json.loads(line) for line in open(write_records(tmp_path / "r.jsonl", n=4))]
    with open(tmp_path / "t.jsonl", "w") as f:  # every record: score 0, target 0.2 (all of it on "2")
        for r in rows:
            f.write(json.dumps({**r, "score": 0, "target": 0.2}) + "\n")
    sft.main(train_args(str(tmp_path / "t.jsonl"), tmp_path / "out", "--loss", "scale", "--steps", "1",
                        "--sample-every", "1"))
    out = capsys.readouterr().out
    assert "(target '2</answer>" in out  # not the record's "0</answer>": the format after "2" is learnt
    model, tok = load()
    prompt, comp = sft.encode_record(tok, {**rows[0], "spelled": 5}, 12)
    assert tok.decode(comp).startswith("5</answer>")
    assert sft.encode_records(tok, [{**rows[0], "spelled": 5}], 12) == [(prompt, comp)]
    with pytest.raises(ValueError, match="expected 'soft' or 'scale'"):
        sft.first_token_target(0.5, "hard")


def test_scale_leaves_thinking_records_their_own_answer(tmp_path, capsys):
    rows = [json.loads(line) for line in open(write_records(tmp_path / "r.jsonl", n=4))]
    with open(tmp_path / "t.jsonl", "w") as f:  # thinking records keep their score: no first-token target
        for r in rows:
            f.write(json.dumps({**r, "score": 0, "target": 0.2, "reasoning": "not about it"}) + "\n")
        f.write(json.dumps({**rows[0], "score": 0, "target": 0.2}) + "\n")  # one fast-mode record
    sft.main(train_args(str(tmp_path / "t.jsonl"), tmp_path / "out", "--loss", "scale", "--steps", "2",
                        "--sample-every", "1", "--batch-size", "5"))
    samples = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sample")]
    targets = [line.split("(target ", 1)[1] for line in samples]  # what the record's completion spells
    assert targets and all(t.startswith("'2</answer>") or "<answer>0</answer>" in t for t in targets)
    assert any("<answer>0</answer>" in t for t in targets)  # a thinking record was sampled: still 0
    with open(tmp_path / "think.jsonl", "w") as f:  # targets on thinking records only: nothing to train
        for r in rows:
            f.write(json.dumps({**r, "target": 0.2, "reasoning": "not about it"}) + "\n")
    with pytest.raises(SystemExit, match="no 'target' fields on fast-mode records"):
        sft.main(train_args(str(tmp_path / "think.jsonl"), tmp_path / "none", "--loss", "scale", "--steps", "1"))


def test_completion_mask_includes_end_token_even_when_it_equals_pad():
    model, tok = load()
    pad = tok.pad_id
    logps, mask = M.completion_logprobs(model, [[5, 6], [7]], [[pad, pad], [8]])
    assert mask.tolist() == [[True, True], [True, False]]  # pad-valued targets are still targets
    assert torch.isfinite(logps).all() and (logps[0] < 0).all()


def test_completion_logprobs_apply_temperature():
    model, _ = load()
    a, _ = M.completion_logprobs(model, [[4, 5, 6]], [[7, 8]], temperature=1.0)
    b, _ = M.completion_logprobs(model, [[4, 5, 6]], [[7, 8]], temperature=0.5)
    logits = model(torch.tensor([[4, 5, 6, 7, 8]]))[0, 2:4] / 0.5
    want = torch.log_softmax(logits, -1)[[0, 1], [7, 8]]
    torch.testing.assert_close(b[0], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, b)


def test_target_is_prompt_then_completion_with_end_token():
    _, tok = load()
    p, c = sft.encode_record(tok, {"query": "ls", "doc": "list files", "score": 7}, 192)
    assert tok.decode(p).endswith("<answer>")
    assert tok.decode(c) == "7</answer><|im_end|>" and c[-1] == tok.im_end
    p, c = sft.encode_record(tok, {"query": "ls", "doc": "list files", "score": 3, "reasoning": "short"}, 192)
    assert tok.decode(p).endswith("<|im_start|>assistant\n")
    assert tok.decode(c) == "<think>short</think><answer>3</answer><|im_end|>"


# ----------------------------------------------------------------------------- LoRA


def lora_model(seed=0, name="llama"):
    model, tok = load(name)
    torch.manual_seed(seed)
    params = training.add_lora(model, rank=4, alpha=8)
    return model, tok, params


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_lora_with_zero_b_matches_base_model(name):
    base, _ = load(name)
    model, _, params = lora_model(name=name)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    torch.testing.assert_close(model(ids), base(ids))
    n_linear = 7 * model.config.num_hidden_layers
    assert len(params) == 2 * n_linear
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    assert isinstance(model.model.layers[0].self_attn.q_proj, training.LoRALinear)
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()  # HF names kept


def randomise_lora(params):
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)


def test_merged_state_dict_gives_the_lora_models_logits(tmp_path):
    model, tok, params = lora_model()
    randomise_lora(params)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    want = model(ids)
    state = training.merged_state_dict(model)
    assert not any(".lora_" in k for k in state)
    base, _ = load()
    base.load_state_dict(state)
    torch.testing.assert_close(base(ids), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(ids), want)  # merging left the model alone
    training.save_checkpoint(str(tmp_path / "ck"), model, tok, {"lora_rank": 4}, {"step": 1, "total_steps": 2})
    reloaded, _ = M.load(str(tmp_path / "ck"))
    torch.testing.assert_close(reloaded(ids), want, atol=1e-5, rtol=1e-5)
    assert json.load(open(tmp_path / "ck" / "args.json")) == {"lora_rank": 4}
    assert training.load_train_state(str(tmp_path / "ck"))["step"] == 1


def test_adapter_applied_to_base_equals_merged():
    model, _, params = lora_model()
    randomise_lora(params)
    adapter = training.adapter_state_dict(model)
    merged = training.merged_state_dict(model)
    base, _ = load()
    state = base.state_dict()
    mods = {k[:-len(".lora_A")] for k in adapter if k.endswith(".lora_A")}
    assert len(mods) == 7 * model.config.num_hidden_layers
    for m in mods:
        w = state[m + ".weight"] + adapter[m + ".lora_B"] @ adapter[m + ".lora_A"]
        torch.testing.assert_close(w, merged[m + ".weight"])


def test_merged_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model, tok, params = lora_model()
    randomise_lora(params)
    training.save_checkpoint(str(tmp_path / "ck"), model, tok, {}, None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ck"), dtype=torch.float32)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- records and schedule


@pytest.mark.parametrize("line, field", [
    ('{"doc": "d", "score": 3}', "'query'"),
    ('{"query": "q", "doc": "", "score": 3}', "'doc'"),
    ('{"query": "q", "doc": "d", "score": 11}', "'score'"),
    ('{"query": "q", "doc": "d", "score": "7"}', "'score'"),
    ('{"query": "q", "doc": "d", "score": 2.5}', "'score'"),
    ('{"query": "q", "doc": "d", "score": 2, "reasoning": 5}', "'reasoning'"),
    ('{"query": "q", "doc": "d", "score": 2', "not valid JSON"),
    ('{"query": "q", "doc": "d", "score": 0, "target": 1.5}', "'target'"),
    ('{"query": "q", "doc": "d", "score": 0, "target": "high"}', "'target'"),
])
def test_bad_record_error_names_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "r.jsonl"
    path.write_text('{"query": "q", "doc": "d", "score": 3}\n\n' + line + "\n")
    with pytest.raises(DataFormatError) as e:
        sft.read_records(str(path))
    assert str(path) in str(e.value) and "line 3" in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("line, says", [
    ('{"query": "q", "doc": "\\ud800"}',
     "field 'doc' is not valid Unicode text (lone surrogate '\\ud800' at character 0)"),
    ('{"query": " ", "doc": "d"}', "field 'query' is empty"),
    ('{"query": "q", "doc": "d", "instruction": 3}', "field 'instruction' should be a string, got a number"),
    ('["q", "d"]', "expected a JSON object with fields 'query', 'doc', got an array"),
])
def test_training_records_and_pairs_to_label_are_checked_alike(tmp_path, line, says):
    path = tmp_path / "r.jsonl"
    path.write_text('{"query": "q", "doc": "d", "score": 3}\n' + line + "\n")
    with pytest.raises(DataFormatError) as trained:
        sft.read_records(str(path))
    with pytest.raises(DataFormatError) as labelled:
        L.read_pairs(str(path))
    assert str(trained.value) == str(labelled.value) == f"{path}, line 2: {says}"


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lrs = [sft.cosine_lr(s, 100, 5, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(2e-4) and lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] < 1e-6 and sft.cosine_lr(100, 100, 5, 1e-3) == pytest.approx(0)


def test_random_batches_are_a_seeded_partition():
    a = sft.epoch_batches([10] * 50, 8, seed=1, epoch=0)
    assert a == sft.epoch_batches([10] * 50, 8, seed=1, epoch=0) != sft.epoch_batches([10] * 50, 8, seed=1, epoch=1)
    flat = [i for b in a for i in b]
    assert len(a) == 6 and all(len(b) == 8 for b in a) and len(set(flat)) == 48


def test_length_grouped_batches_are_a_seeded_partition():
    lengths = [random.Random(i).randrange(10, 500) for i in range(100)]
    a = sft.epoch_batches(lengths, 8, seed=1, epoch=0, group=4)
    assert a == sft.epoch_batches(lengths, 8, seed=1, epoch=0, group=4)
    assert a != sft.epoch_batches(lengths, 8, seed=1, epoch=1, group=4)
    flat = [i for b in a for i in b]
    assert len(a) == 12 and all(len(b) == 8 for b in a) and len(set(flat)) == 96
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in a)
    pad = sum(max(lengths[i] for i in b) * 8 - sum(lengths[i] for i in b) for b in a)
    rand = [flat[j:j + 8] for j in range(0, 96, 8)]
    random.Random(0).shuffle(flat)
    rand = [flat[j:j + 8] for j in range(0, 96, 8)]
    assert pad < sum(max(lengths[i] for i in b) * 8 - sum(lengths[i] for i in b) for b in rand)



def test_unread_records_are_those_the_first_steps_did_not_batch(tmp_path, capsys):
    from tools import unread_records as U
    rest = U.unread(50, steps=4, batch_size=8, seed=1)
    read = [i for b in sft.epoch_batches([0] * 50, 8, seed=1, epoch=0)[:4] for i in b]
    assert len(rest) == 50 - 32 and rest == sorted(rest) and set(rest).isdisjoint(read)
    assert set(rest) | set(read) == set(range(50))
    src = tmp_path / "records.jsonl"
    src.write_text("".join(json.dumps({"query": f"q{i}", "doc": f"d{i}", "score": 0}) + "\n" for i in range(50)))
    U.main([str(src), "--steps", "4", "--seed", "1", "--out", str(tmp_path / "rest.jsonl")])
    out = [json.loads(line)["query"] for line in (tmp_path / "rest.jsonl").read_text().splitlines()]
    assert out == [f"q{i}" for i in rest]
    with pytest.raises(SystemExit, match="more than one epoch"):
        U.main([str(src), "--steps", "7", "--out", str(tmp_path / "x.jsonl")])

# ----------------------------------------------------------------------------- training


def test_a_few_sft_steps_lower_the_loss_on_a_fixed_batch():
    model, tok = load()
    params = list(model.parameters())  # full fine-tuning: the tiny random model moves fast
    recs = [{"query": "ls", "doc": "list directory contents", "score": 10},
            {"query": "ls", "doc": "remove files", "score": 0}]
    enc = [sft.encode_record(tok, r, 16) for r in recs]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(6):
        logps, mask = M.completion_logprobs(model, [e[0] for e in enc], [e[1] for e in enc])
        loss = -(logps * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses


def test_resume_after_a_crash_gives_the_same_final_weights(tmp_path, monkeypatch):
    data = write_records(tmp_path / "r.jsonl", n=12)
    sft.main(train_args(data, tmp_path / "a", "--epochs", "2"))  # 6 steps, uninterrupted
    real = sft.cosine_lr

    def crash_at_step_5(step, *a):
        if step == 4:  # 0-based: the 5th step
            raise KeyboardInterrupt("simulated kill")
        return real(step, *a)

    monkeypatch.setattr(sft, "cosine_lr", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        sft.main(train_args(data, tmp_path / "b", "--epochs", "2", "--save-every", "2"))
    monkeypatch.setattr(sft, "cosine_lr", real)
    assert training.load_train_state(str(tmp_path / "b" / "last"))["step"] == 4
    assert not os.path.exists(tmp_path / "b" / "final")
    sft.main(train_args(data, tmp_path / "b", "--epochs", "2", "--save-every", "2", "--resume"))
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    steps = [json.loads(x)["step"] for x in open(tmp_path / "b" / "log.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_max_steps_stops_and_resume_finishes_the_same_schedule(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=8)
    sft.main(train_args(data, tmp_path / "a", "--lora-rank", "0", "--epochs", "2"))
    sft.main(train_args(data, tmp_path / "b", "--lora-rank", "0", "--epochs", "2", "--max-steps", "3"))
    assert not os.path.exists(tmp_path / "b" / "final")
    # --resume alone takes the run's own arguments from last/args.json (not its --max-steps); a flag
    # given again overrides its saved value
    again = sft.parse_args(["--resume", "--out", str(tmp_path / "b"), "--sample-every", "7"])
    assert (again.data, again.lora_rank, again.epochs, again.lr, again.max_steps, again.sample_every) == (
        data, 0, 2.0, 1e-2, 0, 7)
    sft.main(["--resume", "--out", str(tmp_path / "b")])
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)


def test_resume_with_unreadable_saved_arguments_says_which_file(tmp_path):
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "args.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"last/args.json: cannot read the saved arguments"):
        sft.parse_args(["--resume", "--out", str(tmp_path)])
    (tmp_path / "last" / "args.json").write_text("[]")  # JSON, but not the arguments' object
    with pytest.raises(SystemExit, match=r"last/args.json: the saved arguments are not a JSON object"):
        sft.parse_args(["--resume", "--out", str(tmp_path)])


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=8)
    args = train_args(data, tmp_path / "two", "--epochs", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29500 + os.getpid() % 1000), "sft.py", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"world_size": 2' in r.stdout
    sft.main(train_args(data, tmp_path / "one", "--epochs", "1"))
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    log1 = [json.loads(x)["loss"] for x in open(tmp_path / "one" / "log.jsonl")]
    log2 = [json.loads(x)["loss"] for x in open(tmp_path / "two" / "log.jsonl")]
    assert log1 == pytest.approx(log2, abs=1e-5)


def test_the_group_loss_on_two_processes_matches_one_process(tmp_path):
    rng = random.Random(2)
    with open(tmp_path / "g.jsonl", "w") as f:  # 6 queries of 2 records: batches of 6 hold three queries,
        for q in range(6):                            # two for one process, one for the other
            query = f"query {q} " + rng.choice(WORDS)
            for k in range(2):
                f.write(json.dumps({"query": query, "doc": " ".join(rng.choice(WORDS) for _ in range(4)),
                                    "score": 10 if k == 0 else 0}) + "\n")
    args = lambda out: train_args(str(tmp_path / "g.jsonl"), out, "--batch-size", "6", "--steps", "2",
                                  "--group-loss", "1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29500 + (os.getpid() + 7) % 1000), "sft.py", *args(tmp_path / "two")],
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sft.main(args(tmp_path / "one"))
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    rows = lambda out: [json.loads(x) for x in open(out / "log.jsonl")]
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two")):  # both processes' queries in the log
        assert (a["loss"], a["group_loss"]) == pytest.approx((b["loss"], b["group_loss"]), abs=1e-5)


def test_a_query_that_fills_a_batch_alone_is_skipped_on_two_processes():
    queries = ["a"] * 6 + ["b", "b", "c", "c", "d", "d", "e", "e"]
    batches = sft.epoch_batches([1] * len(queries), 6, seed=0, epoch=0, queries=queries)
    kept = sft.enough_queries(batches, queries, 2)
    assert [0, 1, 2, 3, 4, 5] in [sorted(b) for b in batches] and all(0 not in b for b in kept)
    assert kept and all(len({queries[i] for i in b}) >= 2 for b in kept)  # one query for each process
    assert sft.enough_queries(batches, queries, 1) == batches
    procs = type("P", (), {"rank": 1, "world": 2})
    assert sft.process_micro_batches([6, 7, 8, 9, 10, 11], procs, 4, queries) == [[8, 9]]


def test_log_line_is_greppable(tmp_path, capsys):
    data = write_records(tmp_path / "r.jsonl", n=4)
    sft.main(train_args(data, tmp_path / "o", "--max-steps", "1", "--sample-every", "1"))
    out = capsys.readouterr().out
    import re
    assert re.search(r"^step 00001/00001 \| loss \d+\.\d{4} \| answer loss \d+\.\d{4}( \| AUC [\d.]+)? \| "
                     r"lr \d\.\de-\d\d \| grad [\d.]+ \| \d+ tok/s", out, re.M)
    assert "sample | ..." in out and "-> score" in out


# ----------------------------------------------------------------------------- labelling


def test_consensus_keeps_the_sample_closest_to_the_mean():
    assert L.consensus([2, 7, 9]) == 1  # mean 6
    assert L.consensus([10, 0, 5]) == 2  # mean 5
    assert L.consensus([4, 6]) == 0  # tie at distance 1: the earliest
    assert L.consensus([None, 8, None]) == 1
    assert L.consensus([None, 3, 9, None, 5]) == 4  # mean of the parsed only: 17/3
    assert L.consensus([None, None]) is None and L.consensus([]) is None


def test_reasoning_is_the_think_block():
    assert L.reasoning_of("<think> a\nb </think><answer>3</answer>") == "a\nb"
    assert L.reasoning_of("it looks related <answer>7</answer>") == "it looks related"


def test_label_end_to_end_on_a_tiny_model_counts_unparseable_outputs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": "ls", "doc": d}) + "\n" for d in ("list files", "copy files")))
    out = tmp_path / "labelled.jsonl"
    assert L.main(["--model", os.path.join(FIX, "llama"), "--input", str(pairs), "--out", str(out),
                   "--samples", "3", "--max-new-tokens", "6", "--max-doc-tokens", "8"]) == 0
    stats = json.load(open(str(out) + ".stats.json"))["stats"]
    assert stats["pairs"] == 2 and stats["samples"] == 6
    assert stats["kept"] == 0 and stats["dropped_pairs"] == 2  # a random model writes no answer
    assert stats["too_long"] + stats["unparsed"] == 6
    assert out.read_text() == ""
    assert json.load(open(str(out) + ".stats.json"))["stats"] == stats


def test_label_keeps_consensus_sample_and_writes_sft_records(tmp_path, monkeypatch):
    model, tok = load()
    outputs = ["<think>close</think><answer>5</answer>", "<think>far</think><answer>9</answer>",
               "<think>low</think><answer>2</answer>"]

    def fake_generate(model, prompts, max_new_tokens, stop_ids, temperature, top_p, seeds, pad_id):
        rows = [tok.encode(outputs[i % 3]) + [tok.im_end] for i in range(len(prompts))]
        rows[-1] = rows[-1][:-1]  # last sample of the last pair ran out of tokens
        N = max(map(len, rows))
        tokens = torch.full((len(rows), N), pad_id)
        mask = torch.zeros(len(rows), N, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
        return M.Generation(tokens, mask, torch.zeros(len(rows), N))

    monkeypatch.setattr(L.M, "generate", fake_generate)
    stats = {}
    recs = [r for _, r in L.label(model, tok, [{"query": "q", "doc": "d"}, {"query": "q2", "doc": "d2", "x": 1}],
                                   samples=3, stats=stats)]
    assert recs[0]["score"] == 5 and recs[0]["reasoning"] == "close" and recs[0]["samples"] == [5, 9, 2]
    assert recs[1]["samples"] == [5, 9, None] and recs[1]["score"] == 5 and recs[1]["x"] == 1  # mean 7: 5 and 9 tie
    assert stats["too_long"] == 1 and stats["kept"] == 2
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lab{os.getpid()}.jsonl")
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    assert [r["reasoning"] for r in sft.read_records(path)] == ["close", "close"]
    os.remove(path)


def test_dev_evaluation_logs_ndcg(tmp_path):
    """The logged dev nDCG@10 equals an independent computation: BM25's top 5 for each dev query
    of the committed fixture, reranked by rerank.Reranker and scored by eval.ndcg_at_k. With
    --lr 0 the trained model is the fixture model, so the reference loads that."""
    data = write_records(tmp_path / "r.jsonl", n=4)
    sft.main(train_args(data, tmp_path / "o", "--steps", "1", "--lr", "0", "--eval-every", "1", "--dev-data", BEIR,
                        "--dev-queries", "3", "--dev-top-k", "5", "--bm25-cache", str(tmp_path / "bm25")))
    row = json.loads(open(tmp_path / "o" / "log.jsonl").readline())
    assert list((tmp_path / "bm25").glob("beir_tiny-*.npz")), "the BM25 index is cached where --bm25-cache says"

    model, tok = load()
    corpus, queries, qrels = load_corpus(BEIR), load_queries(BEIR), load_qrels(BEIR, "dev")
    bm25 = BM25.from_corpus(corpus)
    want = {}
    for score in ("answer", "expected"):
        rr = R.Reranker((model, tok), score=score, max_doc_tokens=12, verbose=False)
        ndcgs = []
        for q in sorted(qrels):
            docs = [{"id": d, **corpus[d]} for d, _ in bm25.search(queries[q], 5)]
            ndcgs.append(E.ndcg_at_k([r["id"] for r in rr.rerank(queries[q], docs)], qrels[q]))
        want[score] = sum(ndcgs) / len(ndcgs)
    assert row["dev_ndcg10"] == pytest.approx(want["answer"]), (row, want)
    assert row["dev_ndcg10_expected"] == pytest.approx(want["expected"]), (row, want)


def test_dev_evaluation_refuses_the_test_set(tmp_path):
    model, tok = load()
    for data, split in (("data/beir/pyfaq", "dev"), ("data/beir/debian-faq", "dev"), ("data/beir/manpages", "test")):
        with pytest.raises(ValueError, match="held-out"):
            E.dev_ndcg(model, tok, data, split=split)


def test_training_and_inference_cut_documents_to_the_same_tokens():
    """sft.py's prompt for a record is token for token rerank.py's prompt for that query and
    document, for a short document, a long one and one whose cut falls inside multi-byte characters."""
    model, tok = load()
    docs = ["ls", "list directory contents, sorted by name " * 20, "naïve café, 日本語のファイル 🙂 " * 10]
    for max_doc_tokens in (5, 12, 40):
        rr = R.Reranker((model, tok), max_doc_tokens=max_doc_tokens, max_query_tokens=4, verbose=False)
        records = [{"query": "how do I list the files here", "doc": d, "score": 3} for d in docs]
        trained = sft.encode_records(tok, records, max_doc_tokens, max_query_tokens=4)
        given = rr.prompts_for(records[0]["query"], [{"text": d} for d in docs], None)
        assert [p for p, _ in trained] == given
        assert rr.stats["truncated_docs"] == 2 and rr.stats["truncated_queries"] == 1  # the long ones were cut
    cut = R.truncate_batch(tok, docs + docs, 40)
    assert cut == [R.truncate(tok, d, 40) for d in docs + docs] and "\ufffd" in cut[2][0]  # cut inside a character


def test_batched_encoding_matches_one_record_at_a_time():
    _, tok = load()
    recs = [{"query": "ls " * (i * 40 + 1), "doc": "list files " * (i * 7 + 1) + "x" * (i * 30), "score": i,
             "reasoning": "why" if i % 2 else None, "instruction": None} for i in range(5)]
    assert sft.encode_records(tok, recs, 3, 30, chunk=2) == [sft.encode_record(tok, r, 3, 30) for r in recs]
    assert sft.encode_records(tok, recs, 20, 30, chunk=2) == [sft.encode_record(tok, r, 20, 30) for r in recs]


def test_saved_adapter_applied_with_files_apply_adapter_equals_merged(tmp_path):
    model, tok, params = lora_model()
    randomise_lora(params)
    training.save_checkpoint(str(tmp_path / "ck"), model, tok, {"lora_rank": 4, "lora_alpha": 8}, None)
    base, _ = load()
    files.apply_adapter(base, str(tmp_path / "ck" / "adapter.safetensors"))
    merged = training.merged_state_dict(model)
    for k, v in base.state_dict().items():
        torch.testing.assert_close(v, merged[k], atol=1e-6, rtol=1e-5)


def full_forward_logprobs(model, prompt, completion):
    """Reference: one unpadded row through the whole model, log-probs read off the full logits."""
    logits = model(torch.tensor([list(prompt) + list(completion)]))[0]  # (T, V)
    ref = torch.log_softmax(logits.float(), -1)
    return torch.stack([ref[len(prompt) + j - 1, t] for j, t in enumerate(completion)])


def check_shared_work_matches_full_rows(prompts, comps):
    """completion_logprobs (shared prefix / repeated prompts through a KV cache) gives the values
    and LoRA gradients of running every row in full, one at a time."""
    model, _ = M.load(os.path.join(os.path.dirname(__file__), "fixtures", "qwen3_untied"), device="cpu",
                      dtype=torch.float32)
    training.add_lora(model, 4, 8)
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    shared, mask = M.completion_logprobs(model, prompts, comps)
    (shared * mask).sum().backward()
    g_shared = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    total = 0
    for i, (p, c) in enumerate(zip(prompts, comps)):
        if c:
            want = full_forward_logprobs(model, p, c)
            torch.testing.assert_close(shared[i][mask[i]], want, atol=1e-5, rtol=1e-5)
            total = total + want.sum()
    total.backward()
    for a, b in zip(g_shared, [p.grad for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_repeated_prompts_share_their_prefix_with_same_values_and_gradients():
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [5, 6, 2], [5, 6, 7, 8, 9], [5, 6, 2], [5, 40]]
    comps = [[1, 2, 3], [4], [7, 7], [], [9, 8, 7, 6], [3]]
    check_shared_work_matches_full_rows(prompts, comps)
    # no common prefix (first tokens differ), repeats only
    check_shared_work_matches_full_rows([[5, 6, 7], [11, 12], [5, 6, 7], [40]], [[1, 2], [3], [4], [5, 6]])


def test_common_prompt_prefix_runs_once_with_same_values_and_gradients():
    # SFT's case: distinct prompts sharing a long head (ERank's system turn and task header)
    head = [3, 14, 15, 9, 26, 5, 35]
    prompts = [head + [8, 9, 7, 9], head + [3], head + [2, 3, 8, 4, 6, 2, 6], head[:4]]
    comps = [[1, 2], [4, 4, 4], [7], [9, 9]]
    check_shared_work_matches_full_rows(prompts, comps)
    check_shared_work_matches_full_rows(prompts[:3], comps[:3])  # prefix of 7: the whole head


def test_gradient_checkpointing_gives_same_values_and_gradients():
    import model as M

    model, _ = M.load(os.path.join(os.path.dirname(__file__), "fixtures", "llama"), device="cpu", dtype=torch.float32)
    training.add_lora(model, 4, 8)
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    head = [3, 14, 15, 9, 26, 5]
    prompts, comps = [head + [8, 9, 7], head + [2, 3, 8, 4], head + [6]], [[1, 2], [4, 4, 4], [7]]
    results = []
    for n in (0, 1, len(model.model.layers)):  # none, the first block's MLP half, every block's
        model.gradient_checkpointing = n
        lp, mask = M.completion_logprobs(model, prompts, comps)
        (lp * mask).sum().backward()
        results.append((lp.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        model.zero_grad()
    for lp, grads in results[1:]:
        torch.testing.assert_close(lp, results[0][0], atol=1e-6, rtol=1e-6)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_batches_grouped_by_query_hold_whole_queries():
    queries = [f"q{i // 3}" for i in range(30)]  # 10 queries x 3 records, stored side by side
    queries = queries[::2] + queries[1::2]  # ... and interleaved, as a file may hold them
    batches = sft.epoch_batches([10] * 30, 6, seed=0, epoch=0, queries=queries)
    assert len(batches) == 5 and sorted(i for b in batches for i in b) == list(range(30))
    for b in batches:
        keys = [queries[i] for i in b]
        assert all(keys.count(k) == 3 for k in keys), keys  # every query of the batch with all 3 records
    assert batches == sft.epoch_batches([10] * 30, 6, seed=0, epoch=0, queries=queries)
    assert batches != sft.epoch_batches([10] * 30, 6, seed=0, epoch=1, queries=queries)


def test_query_batches_pack_whole_queries_of_uneven_size():
    sizes = [5, 4, 5, 3, 5, 5, 1, 5]
    queries = [f"q{k}" for k, n in enumerate(sizes) for _ in range(n)]
    batches = sft.epoch_batches([10] * len(queries), 10, seed=3, epoch=0, queries=queries)
    assert all(len(b) <= 10 for b in batches) and len(batches) >= 2
    for b in batches:
        assert all(queries.count(queries[i]) == sum(queries[j] == queries[i] for j in b) for i in b)  # never split
    assert len({i for b in batches for i in b}) == sum(len(b) for b in batches)  # no record twice


# ----------------------------------------------------------------------------- the learning signal


def test_auc_counts_pairs_and_ties():
    assert E.auc([3, 2, 1], [True, False, False]) == 1.0
    assert E.auc([1, 2, 3], [True, False, False]) == 0.0
    assert E.auc([2, 2, 0], [True, False, False]) == 0.75  # one tie (half), one win
    assert E.auc([1, 2], [True, True]) is None


def test_group_contrast_is_the_positives_cross_entropy_against_its_negatives():
    first = torch.log_softmax(torch.randn(4, 10), -1)
    s = first[:, 1] - first[:, 0]
    relevant = torch.tensor([False, True, False, False])
    want = -torch.log_softmax(s, 0)[1]
    torch.testing.assert_close(sft.group_contrast(first, relevant), want)
    two = torch.tensor([True, True, False, False])  # each positive against the negatives only
    torch.testing.assert_close(sft.group_contrast(first, two),
                               sum(-torch.log_softmax(s[[p, 2, 3]], 0)[0] for p in (0, 1)))
    assert float(sft.group_contrast(first, torch.tensor([False] * 4))) == 0.0
    logits = torch.randn(4, 10, requires_grad=True)
    sft.group_contrast(torch.log_softmax(logits, -1), relevant).backward()
    g = logits.grad[:, 1] - logits.grad[:, 0]  # descent raises log P("1") - log P("0") where g < 0
    assert g[1] < 0 and (g[[0, 2, 3]] > 0).all()


def test_training_with_the_group_loss_logs_it_and_learns(tmp_path):
    rng = random.Random(0)
    with open(tmp_path / "g.jsonl", "w") as f:
        for q in range(4):
            query = " ".join(rng.choice(WORDS) for _ in range(2))
            for k in range(3):
                f.write(json.dumps({"query": query, "doc": " ".join(rng.choice(WORDS) for _ in range(5)),
                                    "score": 10 if k == 0 else 0}) + "\n")
    sft.main(train_args(str(tmp_path / "g.jsonl"), tmp_path / "o", "--batch-size", "6", "--steps", "6",
                        "--group-loss", "1"))
    rows = [json.loads(line) for line in open(tmp_path / "o" / "log.jsonl")]
    assert all("group_loss" in r for r in rows) and rows[-1]["group_loss"] < rows[0]["group_loss"]
    assert [r["examples"] for r in rows] == [6 * (k + 1) for k in range(6)]
    sft.main(train_args(str(tmp_path / "g.jsonl"), tmp_path / "w0", "--batch-size", "6", "--steps", "1",
                        "--group-loss", "0", "--group-by-query"))
    sft.main(train_args(str(tmp_path / "g.jsonl"), tmp_path / "w5", "--batch-size", "6", "--steps", "1",
                        "--group-loss", "5"))
    delta = lambda out: load_file(os.path.join(out, "final", "adapter.safetensors"))
    a, b = delta(tmp_path / "w0"), delta(tmp_path / "w5")
    assert any(not torch.equal(a[k], b[k]) for k in a), "the group term must reach the gradient"


def test_queries_larger_than_a_batch_are_sampled_and_every_step_has_a_batch(tmp_path):
    rng = random.Random(1)
    with open(tmp_path / "g.jsonl", "w") as f:  # 3 queries of 5 records, batches of 2: each query is cut
        for q in range(3):
            query = f"query {q} " + rng.choice(WORDS)
            for k in range(5):
                f.write(json.dumps({"query": query, "doc": rng.choice(WORDS), "score": 10 if k == 0 else 0}) + "\n")
    sft.main(train_args(str(tmp_path / "g.jsonl"), tmp_path / "o", "--epochs", "3", "--group-by-query",
                        "--batch-size", "2"))
    rows = [json.loads(line) for line in open(tmp_path / "o" / "log.jsonl")]
    assert len(rows) == 9 and [r["examples"] for r in rows] == [2 * (k + 1) for k in range(9)]  # 3 a epoch, not 15 // 2
    queries = [f"q{k // 5}" for k in range(15)]
    cut = [sorted(b) for e in range(3) for b in sft.epoch_batches([1] * 15, 2, seed=0, epoch=e, queries=queries)]
    assert len({tuple(b) for b in cut}) > 3, "the records a cut query keeps change between epochs"


def test_first_digit_score_reads_one_as_ten():
    logp = torch.full((3, 10), -30.0)
    logp[0, 0] = 0.0  # all mass on "0"
    logp[1, 1] = 0.0  # on "1": the start of "10"
    logp[2, 7] = logp[2, 0] = 0.0  # half "7", half "0"
    assert torch.allclose(sft.first_digit_score(logp), torch.tensor([0.0, 10.0, 3.5]), atol=1e-6)


@pytest.mark.parametrize("prompts", [[[5, 6, 7], [8, 9]],             # nothing shared
                                     [[5, 6, 7], [5, 6, 9, 4]],          # a shared prefix
                                     [[5, 6, 7], [5, 6, 7], [8, 9]]])    # a repeated prompt (RL's G samples)
def test_first_ids_give_the_answer_distribution_of_the_same_forward(prompts):
    model, _ = load()
    comps = [[10, 11], [12], [13, 10]][:len(prompts)]
    lp, mask, first = sft.answer_logprobs(model, prompts, comps, [10, 12, 13], [None] * len(prompts))
    for i, (p, c) in enumerate(zip(prompts, comps)):
        logits = model(torch.tensor([p]))[:, -1]  # (1, V): what predicts the first completion token
        ref = torch.log_softmax(logits.float(), -1)[0, [10, 12, 13]]
        assert torch.allclose(first[i], ref, atol=1e-5), (first[i], ref)
        assert torch.allclose(lp[i, 0], ref[[10, 12, 13].index(c[0])], atol=1e-5)


def test_training_logs_the_answer_loss_and_auc(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=8)
    sft.main(train_args(data, tmp_path / "o", "--steps", "2"))
    rows = [json.loads(line) for line in open(tmp_path / "o" / "log.jsonl")]
    assert all(r["answer_loss"] > 0 for r in rows)
    assert all(0.0 <= r["auc"] <= 1.0 for r in rows if "auc" in r) and any("auc" in r for r in rows)
    assert [r["examples"] for r in rows] == [4, 8]


def test_lora_on_the_last_blocks_only():
    model, _ = load()
    params = training.add_lora(model, rank=4, alpha=8, last_layers=1)
    layers = model.model.layers
    assert isinstance(layers[-1].self_attn.q_proj, training.LoRALinear)
    assert not any(isinstance(m, training.LoRALinear) for layer in layers[:-1] for m in layer.modules())
    assert len(params) == 2 * len(training.LORA_TARGETS)


def test_old_checkpoints_are_pruned(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=8)
    out = tmp_path / "o"
    sft.main(train_args(data, out, "--steps", "4", "--batch-size", "2", "--save-every", "1", "--keep-checkpoints", "2"))
    assert sorted(d for d in os.listdir(out) if d.startswith("step-")) == ["step-00003", "step-00004"]
    assert os.path.isdir(out / "last") and os.path.isdir(out / "final")


def test_leftovers_of_a_killed_write_are_pruned_but_not_a_write_of_this_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    (tmp_path / f".tmp-{dead.pid}-step-00007").mkdir()
    (tmp_path / f".old-{dead.pid}-last").mkdir()
    (tmp_path / f".tmp-{dead.pid}-log.jsonl").write_text("half")
    started = time.time() - 1  # when this run started
    for name in os.listdir(tmp_path):  # left before this run started
        os.utime(tmp_path / name, (started - 60, started - 60))
    live = tmp_path / f".tmp-{os.getpid()}-step-00008"  # this process: a write in progress
    live.mkdir()
    other_node = tmp_path / f".tmp-{dead.pid}-ref_scores.1.json"  # started after this process: another node's
    other_node.write_text("{}")
    training.prune_checkpoints(str(tmp_path), keep=2, started=started)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other_node.name])


def test_a_run_continues_from_a_committed_adapter(tmp_path, capsys):
    """sft.py --init-adapter A, then export_adapter(A, new run): the base model plus the combined
    adapter equals the continued run's final weights, also where the two adapters cover different
    blocks (the first the last block only, the second all). The log says the adapter is added in
    memory: the starting model's files are not changed."""
    from tools import export_adapter

    data = write_records(tmp_path / "r.jsonl", n=8)
    sft.main(train_args(data, tmp_path / "a", "--steps", "2", "--lora-layers", "1"))
    first = str(tmp_path / "a" / "final" / "adapter.safetensors")
    capsys.readouterr()
    sft.main(train_args(data, tmp_path / "b", "--steps", "2", "--init-adapter", first))
    out = capsys.readouterr().out
    assert f"added {first} to the weights of" in out and "in memory (the files on disk are unchanged)" in out, out
    assert not [line for line in out.splitlines() if first in line and "merg" in line], out
    combined = export_adapter.combine([first, str(tmp_path / "b" / "final")])
    ranks = {k: v.shape[0] for k, v in combined.items() if k.endswith(".lora_A")}
    assert sorted(set(ranks.values())) == [16, 32], ranks  # the last block's modules hold both deltas
    from safetensors.torch import save_file
    save_file(combined, str(tmp_path / "both.safetensors"))
    model, _ = load()
    files.apply_adapter(model, str(tmp_path / "both.safetensors"))
    want = final_weights(tmp_path / "b")
    for k, v in model.state_dict().items():
        if k in want:
            assert torch.allclose(v, want[k], atol=2e-3), k  # the combined adapter is stored in fp16


def test_resume_knows_the_starting_adapter_by_its_content_not_its_path(tmp_path, capsys):
    """A committed adapter that moved (weights/erank-135m-r7 -> weights/erank-135m) is the same start;
    another adapter at the same path is not."""
    import shutil
    data = write_records(tmp_path / "r.jsonl", n=8)
    sft.main(train_args(data, tmp_path / "a", "--steps", "2"))
    sft.main(train_args(data, tmp_path / "z", "--steps", "3"))
    start = tmp_path / "start.safetensors"
    shutil.copy(tmp_path / "a" / "final" / "adapter.safetensors", start)
    run = ("--steps", "4", "--save-every", "2")
    sft.main(train_args(data, tmp_path / "b", *run, "--init-adapter", str(start), "--max-steps", "2"))
    moved = tmp_path / "moved.safetensors"
    start.rename(moved)
    capsys.readouterr()
    sft.main(train_args(data, tmp_path / "b", *run, "--init-adapter", str(moved), "--resume"))
    assert f"--init-adapter was {str(start)!r}" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "b" / "final")
    shutil.copy(tmp_path / "z" / "final" / "adapter.safetensors", start)  # other weights, the first path
    shutil.rmtree(tmp_path / "b" / "final")
    with pytest.raises(SystemExit, match="started from an --init-adapter file with sha256 .*; resume from the same"):
        sft.main(train_args(data, tmp_path / "b", *run, "--init-adapter", str(start), "--resume"))


@pytest.mark.parametrize("content, says", [
    (b'\xff\xfe{"query": "a"}\n', "line 1: not UTF-8"),
    (b'{"query": "\\ud800", "doc": "x", "score": 3}\n', "line 1: field 'query' is not valid Unicode text"),
    (b'{"query": "q", "doc": "x", "score": 11}\n', "line 1: field 'score' should be an integer 0..10"),
])
def test_bad_records_give_one_line_and_exit_status_2(tmp_path, content, says):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sft.py"), "--data", str(path), "--model",
                        os.path.join(FIX, "llama"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()  # stopped before training wrote anything


def test_a_missing_checkpoint_gives_one_line(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=4)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sft.py"), "--data", data, "--model", str(tmp_path),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "config.json is missing" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_intermediate_lora_checkpoints_hold_the_adapter_only(tmp_path):
    data = write_records(tmp_path / "r.jsonl", n=8)
    out = tmp_path / "o"
    sft.main(train_args(data, out, "--steps", "2", "--save-every", "1"))
    for d in ("step-00002", "last"):
        files = set(os.listdir(out / d))
        assert {"adapter.safetensors", "train_state.pt", "args.json"} <= files and "model.safetensors" not in files, files
    assert "model.safetensors" in os.listdir(out / "final")


def test_teacher_target_halves_only_hard_negatives():
    from tools.grade_minilm import record_target
    hard = {"score": 0, "label": "hard"}
    assert record_target({"score": 10, "label": "grade2"}, 0.1, 8.0, -4.0, hard_scale=0.5) == 1.0
    assert record_target(hard, 0.5, 8.0, -4.0) == 0.5  # sigmoid(0)
    assert record_target(hard, 0.5, 8.0, -4.0, hard_scale=0.5) == 0.25
    assert record_target({"score": 0, "label": "other"}, 0.5, 8.0, -4.0, hard_scale=0.5) == 0.5


def test_teacher_calibration_recovers_a_logistic_and_balances_classes_when_asked():
    import numpy as np

    from tools.grade_minilm import fit_logistic
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(-(4 * x - 1)))).astype(np.float64)
    a, b = fit_logistic(x, y)
    assert abs(a - 4) < 0.2 and abs(b + 1) < 0.1, (a, b)
    # one positive to four negatives, the classes overlapping: unweighted, the boundary leans towards
    # the positives (the rarer class); balanced, it is midway and a typical positive well above it
    pos, neg = rng.normal(0.52, 0.25, 2000), rng.normal(0.17, 0.25, 8000)
    x, y = np.concatenate([pos, neg]), np.concatenate([np.ones(2000), np.zeros(8000)])
    sig = lambda ab, v: 1 / (1 + np.exp(-(ab[0] * v + ab[1])))
    plain, balanced = fit_logistic(x, y), fit_logistic(x, y, balanced=True)
    assert sig(plain, 0.52) + 0.1 < sig(balanced, 0.52) and sig(balanced, 0.52) > 0.7, (plain, balanced)
    assert abs(-balanced[1] / balanced[0] - (0.52 + 0.17) / 2) < 0.02  # equal variances: the midpoint
