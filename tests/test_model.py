"""model.py against transformers' golden outputs (tests/fixtures, made by tests/make_fixtures.py)."""
import contextlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import files
import model as M
import model_fast as MF

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
NAMES = ["qwen3_tied", "qwen3_untied", "llama", "qwen2"]
PROMPTS = [[5, 17, 42, 99, 7], [300, 1, 2], [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 120], [64]]


def load(name):
    return M.load(os.path.join(FIX, name), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    model, _ = load(name)
    golden = load_file(os.path.join(FIX, name, "golden.safetensors"))
    for i, p in enumerate(PROMPTS):
        with torch.no_grad():
            got = model(torch.tensor([p]))[0]
        torch.testing.assert_close(got, golden[f"logits_{i}"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_transformers(name):
    model, _ = load(name)
    golden = load_file(os.path.join(FIX, name, "golden.safetensors"))
    for i, p in enumerate(PROMPTS):
        out = M.generate(model, [p], max_new_tokens=8)
        assert out.tokens[0].tolist() == golden[f"greedy_{i}"].tolist()


def test_config_flags_per_family():
    cfgs = {n: load(n)[0].config for n in NAMES}
    assert cfgs["qwen3_untied"].qk_norm and cfgs["qwen3_untied"].head_dim == 24 != 64 // 4
    assert not cfgs["qwen3_untied"].tie_word_embeddings and cfgs["qwen3_tied"].tie_word_embeddings
    assert cfgs["qwen2"].attention_bias and not cfgs["qwen2"].qk_norm
    assert not cfgs["llama"].attention_bias and not cfgs["llama"].qk_norm
    m, _ = load("qwen3_tied")
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_kv_cache_decoding_equals_full_forward():
    model, _ = load("qwen3_untied")
    seq = torch.tensor([PROMPTS[2]])
    full = model(seq)[0]
    cache = M.KVCache(model.config, 1, seq.shape[1], "cpu", torch.float32)
    with torch.no_grad():
        steps = [model(seq[:, :5], cache=cache)[0]]
        for t in range(5, seq.shape[1]):
            steps.append(model(seq[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)
    # the same through prefill and decode_one_token: logits of the token after each prefix
    cache, logits = M.prefill(model, [PROMPTS[2][:5]], extra=seq.shape[1] - 5)
    steps = [logits[0]]
    for t in range(5, seq.shape[1] - 1):
        steps.append(M.decode_one_token(model, cache, seq[:, t])[0])
    torch.testing.assert_close(torch.stack(steps), full[4:-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["qwen3_tied", "llama"])
def test_left_padded_batch_matches_single(name):
    model, _ = load(name)
    ids, mask = M._left_pad(PROMPTS, pad_id=0, device="cpu")
    with torch.no_grad():
        batch = model(ids, mask, last_only=True)[:, -1]
        for i, p in enumerate(PROMPTS):
            torch.testing.assert_close(batch[i], model(torch.tensor([p]))[0, -1], atol=1e-5, rtol=1e-5)
    # generation too: a padded batch gives each row its one-at-a-time greedy completion
    out = M.generate(model, PROMPTS, max_new_tokens=6)
    for i, p in enumerate(PROMPTS):
        single = M.generate(model, [p], max_new_tokens=6)
        assert out.tokens[i].tolist() == single.tokens[0].tolist()
        torch.testing.assert_close(out.logprobs[i], single.logprobs[0], atol=1e-5, rtol=1e-5)


def test_logits_are_lm_head_of_hidden_and_last_only_is_the_last_column():
    model, _ = load("qwen2")
    ids, mask = M._left_pad(PROMPTS, pad_id=0, device="cpu")
    with torch.no_grad():
        full = model(ids, mask)  # (B, T, V)
        hidden = model.hidden(ids, mask)  # (B, T, C)
        torch.testing.assert_close(model.lm_head(hidden[mask]), full[mask])
        torch.testing.assert_close(model(ids, mask, head=False), hidden)
        last = model(ids, mask, last_only=True)  # (B, 1, V): the final block at the last column only
        assert last.shape == (len(PROMPTS), 1, model.config.vocab_size)
        torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)


def count_passes(monkeypatch):
    """Record the (rows, tokens) of every pass through the model (forward runs hidden)."""
    passes, hidden = [], M.Transformer.hidden
    monkeypatch.setattr(M.Transformer, "hidden",
                        lambda self, ids, *a, **kw: passes.append(tuple(ids.shape)) or hidden(self, ids, *a, **kw))
    return passes


def test_shared_prefix_generation_equals_unshared(monkeypatch):
    model, _ = load("qwen3_untied")
    prefix = [11, 12, 13, 14, 15, 16]
    prompts = [prefix + [40, 41], prefix + [50], prefix + [40, 41], prefix + [60, 61, 62]]
    passes = count_passes(monkeypatch)
    shared = M.generate(model, prompts, max_new_tokens=5, temperature=1.0, seeds=[1, 2, 3, 4])
    # the prefix once with batch size 1, then the 3 distinct remainders (padded to 3 tokens),
    # then one token per row and step
    assert passes[:2] == [(1, 6), (3, 3)], passes
    assert all(t == 1 for _, t in passes[2:]) and len(passes) == 2 + 4, passes
    for i, p in enumerate(prompts):  # one at a time: no prefix sharing, no duplicate reuse
        alone = M.generate(model, [p], max_new_tokens=5, temperature=1.0, seeds=[i + 1])
        assert shared.tokens[i].tolist() == alone.tokens[0].tolist()
        torch.testing.assert_close(shared.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=1e-5)
    _, logits = M.prefill(model, prompts)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            torch.testing.assert_close(logits[i], model(torch.tensor([p]))[0, -1], atol=1e-5, rtol=1e-5)


def test_sampling_is_per_row_seeded_and_reproducible():
    model, _ = load("llama")
    p = PROMPTS[0]
    a = M.generate(model, [p] * 4, max_new_tokens=8, temperature=1.0, seeds=[7, 8, 9, 10])
    b = M.generate(model, [p] * 4, max_new_tokens=8, temperature=1.0, seeds=[7, 8, 9, 10])
    assert torch.equal(a.tokens, b.tokens)
    assert len({tuple(r) for r in a.tokens.tolist()}) > 1, "rows with different seeds all agree"
    # a row's sample depends on its own seed only, not on its neighbours in the batch
    c = M.generate(model, [PROMPTS[1], p], max_new_tokens=8, temperature=1.0, seeds=[123, 9])
    assert c.tokens[1].tolist() == a.tokens[2].tolist()


def test_generation_stops_and_masks_through_stop_token():
    model, _ = load("llama")
    free = M.generate(model, [PROMPTS[0]], max_new_tokens=8)
    stop = free.tokens[0, 2].item()
    first = free.tokens[0].tolist().index(stop)
    out = M.generate(model, [PROMPTS[0], PROMPTS[1]], max_new_tokens=8, stop_ids=[stop], pad_id=0)
    assert out.mask[0].tolist() == [True] * (first + 1) + [False] * (out.mask.shape[1] - first - 1)
    assert out.tokens[0, first].item() == stop  # the stop token is kept (and in the mask)
    assert (out.logprobs[0][~out.mask[0]] == 0).all()


def test_rows_leaving_the_batch_do_not_change_the_others(monkeypatch):
    # a row that stops leaves the batch (its cache rows are dropped); the rows still generating
    # must continue exactly as they would alone, greedy and sampled (per-row generators)
    model, _ = load("qwen3_untied")
    sizes = []
    select = M.KVCache.select
    monkeypatch.setattr(M.KVCache, "select", lambda self, rows: sizes.append(len(rows)) or select(self, rows))
    for temperature in (0.0, 1.0):
        kw = dict(max_new_tokens=10, temperature=temperature)
        free = M.generate(model, PROMPTS, seeds=range(10, 14), **kw).tokens.tolist()
        k = next(k for k in range(1, 10) if free[0][k] not in free[0][:k] + free[1])
        sizes.clear()
        out = M.generate(model, PROMPTS, stop_ids=[free[0][k]], seeds=range(10, 14), **kw)
        lengths = out.mask.sum(1).tolist()
        assert lengths[0] == k + 1 and lengths[1] == 10, lengths  # row 0 stops early, row 1 never
        assert sizes[-1] < len(PROMPTS), "no row left the batch"
        for i, p in enumerate(PROMPTS):
            alone = M.generate(model, [p], stop_ids=[free[0][k]], seeds=[10 + i], **kw)
            n = alone.mask[0].sum().item()
            assert lengths[i] == n
            assert out.tokens[i, :n].tolist() == alone.tokens[0, :n].tolist()
            torch.testing.assert_close(out.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-5, rtol=1e-5)


def test_greedy_logprobs_equal_softmax_of_forward():
    model, _ = load("qwen3_tied")
    p = PROMPTS[0]
    out = M.generate(model, [p], max_new_tokens=3)
    seq = torch.tensor([p + out.tokens[0].tolist()])
    with torch.no_grad():
        logits = model(seq)[0, len(p) - 1:-1]
    ref = M.token_logprobs(logits, out.tokens[0])
    torch.testing.assert_close(out.logprobs[0], ref, atol=1e-5, rtol=1e-5)


def test_completion_logprobs_run_shared_work_once(monkeypatch):
    model, _ = load("llama")
    head = [3, 14, 15, 9, 26, 5, 35]
    prompts = [head + [8, 9], head + [8, 9], head + [3], head + [8, 9]]  # 2 distinct, one repeated
    comps = [[1, 2], [4], [7, 7, 7], [5]]
    passes = count_passes(monkeypatch)
    with torch.no_grad():
        lp, mask = M.completion_logprobs(model, prompts, comps)
    # the common head once (batch 1); the distinct prompts' remainders but their last token once
    # ([] and [8]); then every row: its last prompt token + its completion
    assert passes == [(1, 7), (2, 1), (4, 4)], passes
    for i, (p, c) in enumerate(zip(prompts, comps)):  # the same values as each full row alone
        with torch.no_grad():
            logits = model(torch.tensor([p + c]))[0, len(p) - 1:-1]
        torch.testing.assert_close(lp[i][mask[i]], M.token_logprobs(logits, torch.tensor(c)), atol=1e-5, rtol=1e-5)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[4.0, 3.0, 0.0, -5.0]])
    g = torch.Generator().manual_seed(0)
    draws = {M.sample(logits, 1.0, 0.5, [g]).item() for _ in range(50)}
    assert draws == {0}  # token 0 alone holds > 50% of the mass


@pytest.mark.parametrize("name", ["qwen3_tied", "llama", "qwen2"])
def test_chat_format_equals_template_rendering(name):
    tok = M.Tokenizer(os.path.join(FIX, name))
    cases = json.load(open(os.path.join(FIX, "chat.json")))[name]
    for c in cases:
        if not c["enable_thinking"] and not tok.has_thinking_switch:
            continue  # the switch exists only in Qwen3's template
        got = tok.chat(c["messages"], c["add_generation_prompt"], c["enable_thinking"])
        assert got == c["text"], (c, got)


def test_save_then_load_is_bit_identical(tmp_path):
    for name in ("qwen3_tied", "qwen3_untied"):
        model, tok = load(name)
        M.save(model, tok, str(tmp_path / name))
        again, tok2 = M.load(str(tmp_path / name), device="cpu", dtype=torch.float32)
        a, b = model.state_dict(), again.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert tok2.encode("Here is the query") == tok.encode("Here is the query")
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # no temp dir left


def test_atomic_output_replaces_whole_or_not_at_all(tmp_path):
    f = tmp_path / "sub" / "out.txt"
    files.write_atomic(f, "old\n")
    files.write_atomic(str(f), "new\n")
    assert f.read_text() == "new\n"
    with pytest.raises(RuntimeError):
        with files.atomic_output(f) as tmp:
            assert isinstance(tmp, type(f)) and not os.path.exists(tmp)
            open(tmp, "w").write("half")
            raise RuntimeError("interrupted")
    assert f.read_text() == "new\n"
    d = tmp_path / "dir"
    for content, fail in (("a", False), ("b", True), ("c", False)):
        with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
            with files.atomic_output(str(d)) as tmp:
                os.makedirs(tmp)
                open(os.path.join(tmp, content), "w").close()
                if fail:
                    raise RuntimeError("interrupted")
        assert os.listdir(d) == (["a"] if content == "b" else [content])  # the old one, or the new one alone
    assert sorted(os.listdir(tmp_path)) == ["dir", "sub"] and os.listdir(tmp_path / "sub") == ["out.txt"]


def test_sharded_checkpoint_loads(tmp_path):
    src = os.path.join(FIX, "qwen2")
    d = tmp_path / "sharded"
    shutil.copytree(src, d)
    state = load_file(str(d / "model.safetensors"))
    os.remove(d / "model.safetensors")
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for f, ks in halves.items():
        save_file({k: state[k] for k in ks}, str(d / f))
        weight_map.update({k: f for k in ks})
    json.dump({"weight_map": weight_map}, open(d / "model.safetensors.index.json", "w"))
    a, _ = load("qwen2")
    b, _ = M.load(str(d), device="cpu", dtype=torch.float32)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_bad_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        M.load(str(tmp_path / "nope"))
    d = tmp_path / "bad"
    shutil.copytree(os.path.join(FIX, "qwen2"), d)
    state = load_file(str(d / "model.safetensors"))
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.extra.weight"] = torch.zeros(1)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['model.layers.1.mlp.up_proj.weight'\].*model.extra"):
        M.load(str(d))
    cfg = json.load(open(d / "config.json"))
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    json.dump(cfg, open(d / "config.json", "w"))
    with pytest.raises(ValueError, match="rope_scaling.*not implemented"):
        M.load(str(d))
    cfg["rope_scaling"], cfg["model_type"] = None, "mistral"
    json.dump(cfg, open(d / "config.json", "w"))
    with pytest.raises(ValueError, match="model_type 'mistral' is not supported"):
        M.load(str(d))
    os.remove(d / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        M.load(str(d))


def test_transformers_opens_a_saved_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    model, tok = load("qwen3_untied")
    M.save(model, tok, str(tmp_path / "out"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids), atol=2e-5, rtol=1e-4)


def test_adapter_adds_its_low_rank_delta(tmp_path):
    model, _ = load("qwen3_untied")
    before = model.model.layers[1].mlp.down_proj.weight.clone()
    A, B = torch.randn(3, 96), torch.randn(64, 3)
    save_file({"model.layers.1.mlp.down_proj.lora_A": A, "model.layers.1.mlp.down_proj.lora_B": B},
              str(tmp_path / "adapter.safetensors"))
    files.apply_adapter(model, str(tmp_path / "adapter.safetensors"))
    torch.testing.assert_close(model.model.layers[1].mlp.down_proj.weight, before + B @ A)
    save_file({"model.nope.lora_A": A, "model.nope.lora_B": B}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="model.nope.lora_A does not match"):
        files.apply_adapter(model, str(tmp_path / "bad.safetensors"))


# ----------------------------------------------------------------------------- model_fast.py


@pytest.mark.parametrize("name", NAMES)
def test_cpu_inference_layout_moves_storage_not_values(name, tmp_path):
    model, tok = load(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    golden = load_file(os.path.join(FIX, name, "golden.safetensors"))
    MF.enable_fast_paths(model, inference_layout=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in linears)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for i, p in enumerate(PROMPTS):
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor([p]))[0], golden[f"logits_{i}"], atol=2e-5, rtol=1e-4)
        assert M.generate(model, [p], max_new_tokens=8).tokens[0].tolist() == golden[f"greedy_{i}"].tolist()
    M.save(model, tok, str(tmp_path / "saved"))  # written in the usual layout, same values
    again, _ = M.load(str(tmp_path / "saved"), device="cpu", dtype=torch.float32)
    assert all(torch.equal(v, before[k]) for k, v in again.state_dict().items())


@pytest.mark.parametrize("name", ["qwen3_untied", "llama"])
def test_fast_paths_equal_the_plain_model(name):
    plain, _ = load(name)
    fast, _ = load(name)
    MF.enable_fast_paths(fast, inference_layout=True)
    MF.enable_fast_paths(fast, inference_layout=True)  # a second call changes nothing
    assert {type(m) for m in fast.modules()} >= {MF.FastAttention, MF.FastMLP}
    assert not any(type(m) in (M.Attention, M.MLP) for m in fast.modules())
    # inference: decode_attention in every decoding step, the MLP in slices, transposed weights
    kw = dict(max_new_tokens=6, temperature=1.0, seeds=range(4))
    a, b = M.generate(plain, PROMPTS, **kw), M.generate(fast, PROMPTS, **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    ids, mask = M._left_pad(PROMPTS, pad_id=0, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(fast(ids, mask, last_only=True), plain(ids, mask, last_only=True),
                                   atol=1e-5, rtol=1e-5)
    # training (gradients on): the SwiGLU function, with and without gradient checkpointing
    plain, _ = load(name)
    fast, _ = load(name)
    MF.enable_fast_paths(fast)
    for ckpt in (0, plain.config.num_hidden_layers):  # none, every block's MLP half
        grads = []
        for model in (plain, fast):
            model.train().gradient_checkpointing = ckpt
            model.zero_grad()
            lp, m = M.completion_logprobs(model, PROMPTS, [[1, 2], [3], [4, 5, 6], [7]])
            (lp * m).sum().backward()
            grads.append((lp.detach(), [p.grad for p in model.parameters()]))
        torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
        for g0, g1 in zip(grads[0][1], grads[1][1]):
            torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)


def test_core_classes_do_not_branch_on_the_device():
    import inspect

    for cls in (M.Attention, M.MLP, M.Block, M.Transformer):
        assert "device.type" not in inspect.getsource(cls), cls


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4)])
def test_decode_attention_equals_the_fused_kernel(heads, kv_heads):
    torch.manual_seed(0)
    B, S, D = 3, 9, 8
    q, k, v = torch.randn(B, heads, 1, D), torch.randn(B, kv_heads, S, D), torch.randn(B, kv_heads, S, D)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[1, ..., :4] = False  # a left-padded row
    mask[2, ..., 2:5] = False  # padding in the middle (a row that generated past its stop)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                             enable_gqa=heads != kv_heads)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))  # the form model.py passes
    torch.testing.assert_close(MF.decode_attention(q, k, v, additive), fused, atol=1e-6, rtol=1e-5)


def test_mlp_in_slices_equals_the_whole_batch():
    model, _ = load("qwen3_untied")
    mlp = model.model.layers[0].mlp
    x = torch.randn(2, 7, model.config.hidden_size)
    with torch.no_grad():
        whole = mlp(x)  # model.py's MLP
        MF.enable_fast_paths(model)
        row_bytes = 4 * mlp.gate_proj.out_features
        for rows in (1, 3, 14, 100):  # 14 slices of 1 token, ..., one slice for all 14 tokens
            torch.testing.assert_close(mlp.forward_in_slices(x, slice_bytes=rows * row_bytes), whole,
                                       atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mlp(x), whole, atol=1e-6, rtol=1e-5)  # what no_grad on CPU runs


def test_swiglu_backward_matches_autograd():
    g = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MF.SwiGLU.apply, (g, u))
    torch.testing.assert_close(MF.SwiGLU.apply(g, u), torch.nn.functional.silu(g) * u)


def test_saved_weights_get_the_mode_of_the_other_files(tmp_path):
    import stat
    model, tok = M.load(os.path.join(FIX, "llama"), device="cpu", dtype=torch.float32)
    old = os.umask(0o022)
    try:
        M.save(model, tok, str(tmp_path / "out"))
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "out").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes


def test_saved_tensors_are_readable_as_other_new_files(tmp_path):
    import stat
    old = os.umask(0o027)
    try:
        files.save_tensors({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o640
    assert torch.equal(load_file(tmp_path / "a.safetensors")["w"], torch.zeros(2))
