"""A from-scratch decoder-only transformer for Qwen3, Qwen2 and Llama checkpoints.

One implementation, three families, switched by config flags:
  - qwen3: per-head RMSNorm on q and k (applied before RoPE), explicit head_dim, no q/k/v bias
  - qwen2: q/k/v projections with bias
  - llama: plain (SmolLM2, the project's built-in base model, is a llama)

Parameter names are Hugging Face's, so loading a checkpoint is an identity mapping plus a strict
check, and `save` writes a directory that transformers can open too. The computation here is the
plain one; measured speed paths live in model_fast.py, switched on by
`model_fast.enable_fast_paths(model)`. Of the project it imports only files.py (whole-or-nothing writes).

Public API (used by every other script):
    model, tok = load(path)                      # HF-layout dir -> (Transformer, Tokenizer)
    save(model, tok, path)                       # same layout, written atomically
    cfg = load_config(path); paths = weight_files(path)  # a checkpoint's parts, for loaders that shard
    logits = model(ids, attention_mask)          # (B, T, V); last_only=True -> (B, 1, V)
    h = model.hidden(ids, attention_mask)        # (B, T, C): the final normed hidden states
    cache, logits = prefill(model, prompts, extra=n)  # KV cache, (B, V) logits after each prompt
    cache, h = cache_prompts(model, prompts, ...)  # the same work (shared once), also with gradients
    logits = decode_one_token(model, cache, tokens)   # (B, V) after one more token per row
    out = generate(model, prompts, max_new_tokens=..., stop_ids=..., temperature=..., seeds=...)
    logits, mask = completion_logits(model, prompts, completions)  # where they predict completion tokens
    logps, mask = completion_logprobs(model, prompts, completions)  # (B, N) fp32, temperature applied
    text = tok.chat([{"role": "user", "content": "hi"}], enable_thinking=False)
    device, dtype = pick_device()

Run `python model.py "What is the capital of France?"` for a short chat demo with the built-in
model (converted once by `python data/convert_smollm2.py`).
"""
import copy
import functools
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

import files


# ----------------------------------------------------------------------------- config


@dataclass
class Config:
    model_type: str = "qwen3"
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 0  # 0 -> hidden_size // num_attention_heads (llama, qwen2); qwen3 sets it
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # q/k/v bias (qwen2 always has it)
    qk_norm: bool = False  # per-head q/k RMSNorm (qwen3)
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "Config":
        """Build from an HF config.json dict; refuse anything this implementation would get wrong."""
        kind = d.get("model_type")
        if kind not in ("qwen3", "qwen2", "llama"):
            raise ValueError(f"{source}: model_type {kind!r} is not supported (qwen3, qwen2, llama)")
        # RoPE settings live in rope_scaling / rope_theta (transformers 4) or rope_parameters (5)
        rope = d.get("rope_parameters") or {}
        scaling = [r.get("rope_type") or r.get("type") or "default"
                   for r in (rope, d.get("rope_scaling") or {})]
        unsupported = {
            "rope_scaling": scaling[1] != "default",
            "rope_parameters": scaling[0] != "default",
            "layer_types": any(t != "full_attention" for t in d.get("layer_types") or []),
            "use_sliding_window": bool(d.get("use_sliding_window")),
            "hidden_act": d.get("hidden_act", "silu") != "silu",
            "mlp_bias": bool(d.get("mlp_bias")),
            "attention_bias": kind == "qwen3" and bool(d.get("attention_bias")),
            "pretraining_tp": d.get("pretraining_tp", 1) != 1,
        }
        for key, bad in unsupported.items():
            if bad:
                raise ValueError(f"{source}: {key}={d.get(key)!r} is not implemented by model.py")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", cls.rope_theta))
        kw["head_dim"] = d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"]
        kw["num_key_value_heads"] = d.get("num_key_value_heads") or d["num_attention_heads"]
        kw["attention_bias"] = kind == "qwen2" or bool(d.get("attention_bias"))
        kw["qk_norm"] = kind == "qwen3"
        kw.setdefault("tie_word_embeddings", kind != "llama")  # HF defaults per family
        return cls(**kw)

    def to_hf(self) -> dict:
        arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "qk_norm"}
        d.update(architectures=[arch[self.model_type]], hidden_act="silu", rope_scaling=None,
                 torch_dtype="float32", use_cache=True)
        return d


# ----------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # statistics in fp32 whatever the model dtype (bf16 variance underflows)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions, head_dim: int, theta: float):
    """cos/sin tables in fp32 for integer positions (B, T) -> each (B, T, head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # split-halves layout: [f0..f(D/2-1), f0..f(D/2-1)]
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x (B, H, T, D). Rotates pairs (i, i + D/2): the HF 'rotate_half' layout, not interleaved."""
    h = x.float()
    x1, x2 = h.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (h * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class KVCache:
    """Preallocated keys/values for every layer: (B, H_kv, S, D) each, plus a (B, S) mask of
    which slots hold real tokens. `length` slots are filled; new tokens are written after them."""

    def __init__(self, cfg: Config, batch: int, size: int, device, dtype):
        shape = (batch, cfg.num_key_value_heads, size, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
        self.length = 0

    def select(self, rows):
        """Keep (or repeat) rows: cache.select(tensor([0, 0, 1])) duplicates row 0."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.mask = self.mask[rows]
        return self


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.q_proj = nn.Linear(C, H * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, Hkv * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, Hkv * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None, layer=0, last_only=False):
        """last_only: keys and values for every position (later ones attend to them), the output
        for the last position only (B, 1, C)."""
        cfg = self.cfg
        B, T, _ = x.shape
        Tq = 1 if last_only else T
        q = self.q_proj(x[:, T - Tq:]).view(B, Tq, cfg.num_attention_heads, cfg.head_dim)  # (B, Tq, H, D)
        k = self.k_proj(x).view(B, T, cfg.num_key_value_heads, cfg.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, cfg.num_key_value_heads, cfg.head_dim)
        if cfg.qk_norm:  # Qwen3: normalise each head *before* RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        q, k = self.rope(q, cos[:, T - Tq:], sin[:, T - Tq:]), self.rope(k, cos, sin)
        if cache is not None:  # write this step's keys after the filled slots, attend to all of them
            L = cache.length
            cache.k[layer][:, :, L:L + T] = k
            cache.v[layer][:, :, L:L + T] = v
            k, v = cache.k[layer][:, :, :L + T], cache.v[layer][:, :, :L + T]
        y = self.attend(q, k, v, mask[:, :, T - Tq:])  # (B, H, Tq, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, Tq, -1))

    def rope(self, x, cos, sin):
        """apply_rope (a method, as attend is: model_fast computes the same values faster)."""
        return apply_rope(x, cos, sin)

    def attend(self, q, k, v, mask):
        """softmax(q k^T / sqrt(D) + mask) v: q (B, H, Tq, D), k and v (B, Hkv, S, D), mask additive
        (B, 1, Tq, S), 0 = visible, -inf = hidden. Grouped-query attention: each kv head serves
        H / Hkv query heads; enable_gqa does that inside the kernel instead of copying k and v (a
        copy of the whole cache every step)."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, layer=0, checkpoint=False, last_only=False):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, last_only)
        x = (x[:, -1:] if last_only else x) + h
        if checkpoint:  # keep only x; recompute the MLP half (most of a layer's activations) in backward
            return x + torch.utils.checkpoint.checkpoint(self.mlp_half, x, use_reentrant=False)
        return x + self.mlp_half(x)

    def mlp_half(self, x):
        return self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------- the transformer


class Decoder(nn.Module):
    """HF's `model.` prefix: embeddings, blocks, final norm."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        # training memory: the MLP half of the first N blocks is recomputed in backward (0 = none).
        # The attention half is stored, so a KV cache (shared prompt prefixes) works with it.
        self.gradient_checkpointing: int = 0

    def tie_weights(self):
        if self.config.tie_word_embeddings:  # one tensor, two names; saved once (as embed_tokens)
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden(self, input_ids, attention_mask=None, cache=None, last_only=False):
        """The final normed hidden states (B, T, C), the input of lm_head.
        input_ids (B, T). attention_mask (B, T): 1 = real token, 0 = padding (left or anywhere).
        cache: a KVCache; the T tokens go into slots cache.length .. cache.length+T-1.
        last_only: (B, 1, C) at column T-1 only (the last real token when left-padded); the final
        block computes queries, attention output and MLP there alone (keys and values everywhere)."""
        B, T = input_ids.shape
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        attention_mask = attention_mask.bool()
        L = 0 if cache is None else cache.length
        if cache is not None:
            cache.mask[:, L:L + T] = attention_mask
            key_mask = cache.mask[:, :L + T]  # (B, S)
        else:
            key_mask = attention_mask
        # positions count real tokens only, so a left-padded row starts at position 0
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, L:]  # (B, T)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        # query i (absolute slot L+i) may see key j when j <= L+i and j is a real token; every query
        # also sees itself, so padding rows stay finite (their outputs are never used)
        S = L + T
        qi = torch.arange(L, S, device=dev)[:, None]
        kj = torch.arange(S, device=dev)[None, :]
        visible = (kj <= qi)[None] & key_mask[:, None, :]  # (B, T, S)
        visible = (visible | (kj == qi)[None])[:, None]  # (B, 1, T, S)
        # additive form, built once here (the attention kernel would convert a bool mask per layer)
        x = self.model.embed_tokens(input_ids)
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=dev).masked_fill_(~visible, float("-inf"))
        n_ckpt = self.gradient_checkpointing if self.training and torch.is_grad_enabled() else 0
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, mask, cache, i, checkpoint=i < n_ckpt,
                      last_only=last_only and i == len(self.model.layers) - 1)
        if cache is not None:
            cache.length = S
        return self.model.norm(x)

    def forward(self, input_ids, attention_mask=None, cache=None, last_only=False, head=True):
        """Logits (B, T, V) from `hidden` (same arguments), or (B, 1, V) at column T-1 with last_only.
        head=False returns the hidden states themselves, for a caller that applies lm_head at a few
        positions only (completion_logits: never the full (B, T, V)). Such callers still go through
        forward, not `hidden`: data-parallel wrappers hook into forward (training.py)."""
        x = self.hidden(input_ids, attention_mask, cache, last_only)
        return self.lm_head(x) if head else x


# ----------------------------------------------------------------------------- generation


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, N) completion ids; positions after the stop token hold the pad id
    mask: torch.Tensor  # (B, N) bool, True through the stop token inclusive
    logprobs: torch.Tensor  # (B, N) fp32 log-prob of each chosen token (0 where mask is False)


def _left_pad(seqs, pad_id, device):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = True
    return ids.to(device), mask.to(device)


def common_prefix_length(prompts) -> int:
    """Length of the longest prefix shared by all prompts, leaving each at least one token
    (a single prompt: all but its last token)."""
    P, shortest = 0, min(len(p) for p in prompts)
    while P < shortest - 1 and all(p[P] == prompts[0][P] for p in prompts):
        P += 1
    return P


def cache_prompts(model, prompts: list[list[int]], extra: int = 0, pad_id: int = 0, hold_last: bool = False):
    """Run the prompts into a new KV cache, each piece of work shared between rows done once ->
    (cache, h), h (B, C) the final hidden state at each prompt's last cached token:
      - the longest prefix common to all prompts (ERank's system turn, task header and query) runs
        with batch size 1, and its keys and values are copied into every row's slots;
      - each distinct prompt's remainder runs once, and its cache row is repeated for the prompts
        equal to it (RL's G samples of one document).
    hold_last=True leaves each prompt's last token out of the cache, for a caller that runs it
    followed by a completion (completion_logits). `extra` reserves slots for the tokens that
    follow. Gradients flow through it when enabled; every pass goes through the model's forward
    (see Transformer.forward)."""
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    device, dtype = next(core.parameters()).device, next(core.parameters()).dtype
    assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    # distinct prompts in order of first appearance: when all are distinct, each keeps its row and
    # the cache needs no reordering afterwards (a copy of all of it)
    unique = list(dict.fromkeys(map(tuple, prompts)))
    P = common_prefix_length(unique)
    rest = [list(p[P:len(p) - hold_last]) for p in unique]  # what each distinct prompt adds to the prefix
    T = max(map(len, rest))
    cache = KVCache(core.config, len(unique), P + T + extra, device, dtype)
    if P:  # copied slot by slot: cheaper than repeating a whole preallocated cache
        head = KVCache(core.config, 1, P, device, dtype)
        model(torch.tensor([unique[0][:P]], device=device), cache=head, head=False)
        for i in range(len(cache.k)):
            cache.k[i][:, :, :P], cache.v[i][:, :, :P] = head.k[i], head.v[i]
        cache.mask[:, :P], cache.length = True, P
    h = None
    if T:
        ids, mask = _left_pad(rest, pad_id, device)
        h = model(ids, mask, cache=cache, last_only=True, head=False)[:, -1]  # (U, C)
    row_of = {p: i for i, p in enumerate(unique)}
    rows = torch.tensor([row_of[tuple(p)] for p in prompts], device=device)
    # with gradients the caller writes into the cache next, and writing into a tensor that backward
    # still needs is an error: select copies. Without gradients, a copy only where rows differ
    if torch.is_grad_enabled() or not torch.equal(rows, torch.arange(len(unique), device=device)):
        cache.select(rows)
        h = None if h is None else h[rows]
    return cache, h


@torch.no_grad()
def prefill(model, prompts: list[list[int]], extra: int = 0, pad_id: int = 0):
    """Run the prompts through the model once (shared work once: cache_prompts) -> (cache, logits
    (B, V) after each prompt). `extra` reserves cache slots for tokens generated afterwards."""
    cache, h = cache_prompts(model, prompts, extra, pad_id)
    return cache, model.lm_head(h)


@torch.no_grad()
def decode_one_token(model, cache, tokens, mask=None):
    """One decoding step: tokens (B,) go into the cache after its filled slots -> logits (B, V) of
    the token after them. mask (B,) bool: False marks a row that only holds its place in the
    batch (it has stopped); its token stays hidden from every later step."""
    mask = None if mask is None else mask[:, None]
    return model(tokens[:, None], mask, cache=cache, last_only=True)[:, -1]


def sample(logits, temperature, top_p, generators):
    """One token per row. Each row draws from its own torch.Generator, so a row's sample does not
    depend on which other rows share the batch. temperature 0 = greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
        sorted_p, idx = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    out = [torch.multinomial(probs[i], 1, generator=g).item() for i, g in enumerate(generators)]
    return torch.tensor(out, device=logits.device)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, stop_ids=(), temperature=0.0,
             top_p=1.0, seeds=None, pad_id=0) -> Generation:
    """Batched generation: prefill (shared prefix once), then decode_one_token per new token into
    a preallocated KV cache; rows that stop leave the batch. Row i samples with torch.Generator
    seeded seeds[i] (default: i). Log-probs are taken under the temperature-scaled distribution
    (plain softmax when greedy), before top-p truncation: the distribution RL's importance ratio needs."""
    B, dev = len(prompts), next(model.parameters()).device
    seeds = list(range(B)) if seeds is None else list(seeds)
    gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=dev)
    cache, logits = prefill(model, prompts, extra=max_new_tokens, pad_id=pad_id)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=dev)
    logps = torch.zeros(B, max_new_tokens, device=dev)
    rows = torch.arange(B, device=dev)  # the output row of each row still in the batch
    live = torch.ones(B, dtype=torch.bool, device=dev)  # batch rows that have not stopped
    for t in range(max_new_tokens):
        nxt = sample(logits, temperature, top_p, gens)
        out = rows[live]
        tokens[out, t] = nxt[live]
        mask[out, t] = True
        logps[out, t] = token_logprobs(logits[live], nxt[live], temperature)
        live &= ~torch.isin(nxt, stop)
        if not live.any() or t == max_new_tokens - 1:
            break
        # stopped rows leave the batch once they are a quarter of it, so later steps only compute
        # rows still generating; waiting for a quarter keeps the cache copies (select) to a few
        if live.sum() <= 0.75 * len(live):
            keep = live.nonzero()[:, 0]
            cache.select(keep)
            rows, nxt, live = rows[keep], nxt[keep], live[keep]
            gens = [gens[i] for i in keep.tolist()]
        logits = decode_one_token(model, cache, nxt, live)
    return Generation(tokens[:, :t + 1], mask[:, :t + 1], logps[:, :t + 1])


# -- log-probs: one helper for generation, SFT and RL


def token_logprobs(logits, tokens, temperature=1.0):
    """log p(token) under fp32 logits, temperature applied (any leading shape)."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def completion_logits(model, prompts, completions, shared_prefix: bool = True):
    """The logits that predict each completion token -> (logits (K, V), mask (B, N)).
    mask: the real completion tokens (column j < len(completion), the end token included; from
    the lengths, not the ids). logits[k] predicts the k-th True entry of mask in row-major order,
    the order of `x[mask]`: row 0's completion tokens, then row 1's, ... (K = sum of lengths).
    Work shared between rows runs once, with gradients (cache_prompts); the rows then hold each
    prompt's last token and its completion, left-padded, so completions end at the last column,
    and lm_head runs only where it predicts a completion token, never at the full (B, T, V).
    Same values and gradients as full rows (tested). shared_prefix=False runs every row whole
    (prompt + completion) in one forward call: FSDP needs every process to make the same calls,
    and how many the sharing makes depends on the prompts."""
    assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    device = next(core.parameters()).device
    if shared_prefix:
        cache, _ = cache_prompts(model, prompts, extra=1 + max(map(len, completions), default=0), hold_last=True)
        rows = [[p[-1]] + list(c) for p, c in zip(prompts, completions)]
    else:
        cache, rows = None, [list(p) + list(c) for p, c in zip(prompts, completions)]
    ids, attn = _left_pad(rows, 0, device)  # (B, T)
    B, T = ids.shape
    lengths = torch.tensor([len(c) for c in completions], device=device)  # (B,)
    target = torch.arange(T, device=device)[None, :] >= T - lengths[:, None]  # (B, T): completion tokens
    at = torch.zeros_like(target)
    at[:, :-1] = target[:, 1:]  # (B, T): the positions that predict them
    h = model(ids, attn, cache=cache, head=False)  # (B, T, C)
    N = int(lengths.max()) if B else 0
    mask = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N)
    return core.lm_head(h[at]), mask  # (K, V): row-major, as ids[target]


def completion_logprobs(model, prompts, completions, temperature: float = 1.0, shared_prefix: bool = True):
    """(B, N) fp32 log p(completion token j | prompt + completion[:j]), temperature applied, and
    the (B, N) bool mask of real completion tokens: completion_logits, then token_logprobs."""
    logits, mask = completion_logits(model, prompts, completions, shared_prefix)
    tokens = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=logits.device)
    out = torch.zeros(mask.shape, device=logits.device)
    out[mask] = token_logprobs(logits, tokens, temperature)  # row i's completion tokens 0..len-1
    return out, mask


# ----------------------------------------------------------------------------- device and dtype


def cpu_flags(cpuinfo="/proc/cpuinfo") -> set[str]:
    """This CPU's instruction-set extensions, in Linux's /proc/cpuinfo spelling (avx512_bf16,
    amx_bf16, ...): from the cpuinfo library inside PyTorch where this version exposes it (any OS;
    a private function, hence the care), else from /proc/cpuinfo; an empty set when neither says."""
    info = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", lambda: None)()
    if isinstance(info, dict):
        return {name for name, present in info.items() if present is True}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_reason() -> str | None:
    """Why bf16 is the fast dtype on this CPU ('AMX-BF16', ...), or None where it is not: bf16
    matrix products are native only with AMX-BF16 or AVX512-BF16 (x86); elsewhere PyTorch converts
    them to fp32 and back, slower than fp32 itself. Other CPUs with bf16 instructions (Arm's BF16)
    are not measured here, so they keep fp32."""
    flags = cpu_flags()
    found = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return " and ".join(found) if found else None


def pick_device(device=None, dtype=None, verbose=True):
    """The one place that decides device and dtype, and says why on stderr.
    dtype None: bf16 on CUDA where supported, else fp32 (tools/label.py's default).
    dtype "auto": the fastest dtype that ranks and learns as well (docs/speed.md): bf16 on CUDA where
    supported and on CPUs with native bf16 matrix instructions (cpu_bf16_reason), else fp32
    (the default of rerank.py, eval.py, sft.py and rl.py). Anything else ("float32", torch.bfloat16 ...) is used as given."""
    if device is None:
        device, why = ("cuda", "CUDA is available") if torch.cuda.is_available() else ("cpu", "no CUDA")
    else:
        why = "asked for"
    device = torch.device(device)
    if dtype == "auto" and device.type == "cpu":
        native = cpu_bf16_reason()
        dtype, dwhy = ((torch.bfloat16, f"auto: native bf16 matrix instructions on this CPU, {native}; "
                        "--dtype float32 for fp32") if native else
                       (torch.float32, "auto: this CPU has no native bf16 matrix instructions "
                        "(AVX512-BF16 or AMX-BF16)"))
    elif dtype is None or dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dwhy = ("auto: " if dtype == "auto" else "") + ("bf16 is supported" if bf16 else "fp32 default")
        dtype = torch.bfloat16 if bf16 else torch.float32
    else:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        dwhy = "asked for"
    if verbose:
        print(f"device {device} ({why}), dtype {str(dtype).replace('torch.', '')} ({dwhy})", file=sys.stderr)
    return device, dtype


# ----------------------------------------------------------------------------- tokenizer and chat


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the checkpoint's chat format (ChatML, rendered in Python)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = path
        self.tok = HFTokenizer.from_file(os.path.join(path, "tokenizer.json"))
        cfg_path = os.path.join(path, "tokenizer_config.json")
        self.config = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        template = self.config.get("chat_template") or ""
        if isinstance(template, list):  # some checkpoints store named templates
            template = next((t["template"] for t in template if t.get("name") == "default"), "")
        if template and "<|im_start|>" not in template:
            raise ValueError(f"{cfg_path}: chat_template is not ChatML (<|im_start|>role); not supported")
        # a default system message the template inserts when the conversation has none (SmolLM2,
        # Qwen2.5): a literal system turn with no variable inside it
        m = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}+]+?)<\|im_end\|>", template)
        self.default_system = m.group(1).replace("\\n", "\n") if m else None
        self.has_thinking_switch = "enable_thinking" in template
        self.im_end = self.tok.token_to_id("<|im_end|>")
        self.pad_id = self.tok.token_to_id(self.config.get("pad_token") or "<|endoftext|>")
        if self.pad_id is None:
            self.pad_id = self.im_end

    def encode(self, text: str, plain=False) -> list[int]:
        """Token ids of text. A control token written in the text ("<|im_end|>") becomes that control
        token, as a chat template's own markers need; plain=True encodes it as the characters it is
        made of, as text from a user needs (a document quoting "<|im_end|>" must not end its turn)."""
        return self.encode_batch([text], plain)[0]

    def encode_batch(self, texts: list[str], plain=False) -> list[list[int]]:
        tok = self.plain_tok if plain else self.tok
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    @functools.cached_property
    def plain_tok(self):
        """A second copy of the tokenizer that reads control tokens in text as plain characters
        (a copy, not a switch on the first one, so threads encoding at the same time cannot mix)."""
        plain = copy.deepcopy(self.tok)
        plain.encode_special_tokens = True
        return plain

    def decode(self, ids, skip_special_tokens=False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, text: str) -> int:
        ids = self.encode(text)
        assert len(ids) == 1, f"{text!r} is {len(ids)} tokens, expected 1"
        return ids[0]

    def chat(self, messages: list[dict], add_generation_prompt=True, enable_thinking=True) -> str:
        """ChatML text for system/user/assistant messages, as the checkpoint's template renders it.
        enable_thinking=False inserts the empty think block of Qwen3's template; for templates
        without that switch it is inserted by hand, so both families see the same scoring format."""
        return "".join(self.chat_parts(messages, add_generation_prompt, enable_thinking))

    def chat_parts(self, messages: list[dict], add_generation_prompt=True, enable_thinking=True) -> list[str]:
        """chat()'s text cut at the template's own markers: [text, "<|im_start|>", text, "<|im_end|>",
        text, ...], text at even positions (possibly ""), a marker at odd ones. encode_parts keeps
        the markers as control tokens and encodes everything between them, messages included, as
        plain text."""
        turns = list(messages)
        if self.default_system and (not messages or messages[0]["role"] != "system"):
            turns.insert(0, {"role": "system", "content": self.default_system})
        parts = [""]
        for m in turns:
            parts += ["<|im_start|>", f"{m['role']}\n{m['content']}", "<|im_end|>", "\n"]
        if add_generation_prompt:
            parts += ["<|im_start|>", "assistant\n" + ("" if enable_thinking else "<think>\n\n</think>\n\n")]
        return parts

    def encode_parts(self, many: list[list[str]]) -> list[list[int]]:
        """Ids of chat_parts-shaped lists: markers (odd positions) as control tokens, text between them
        as plain text. The tokenizer splits text at control tokens before anything else, so for text
        without control-token strings these are exactly the ids of encode("".join(parts))."""
        texts = [t for parts in many for t in parts[0::2]]
        encoded = iter(self.encode_batch(texts, plain=True))
        out = []
        for parts in many:
            ids = []
            for i, part in enumerate(parts):
                ids += [self.tok.token_to_id(part)] if i % 2 else next(encoded)
            out.append(ids)
        return out

    def save(self, path: str):
        self.tok.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(self.config, f, indent=2, ensure_ascii=False)


# ----------------------------------------------------------------------------- load and save


def load_config(path: str) -> Config:
    """The Config of an HF-layout checkpoint directory, after checking that config.json and
    tokenizer.json are there."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a checkpoint directory (expected config.json, "
                                "model.safetensors and tokenizer.json inside)")
    for name in ("config.json", "tokenizer.json"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(f"{path}: {name} is missing")
    cfg_file = os.path.join(path, "config.json")
    try:
        return Config.from_hf(json.load(open(cfg_file)), cfg_file)
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{cfg_file}: unreadable config ({type(e).__name__}: {e})") from None


def weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory: model.safetensors, or the files that
    model.safetensors.index.json lists (large models come in several)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        return [os.path.join(path, f) for f in sorted(set(json.load(open(index))["weight_map"].values()))]
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return [os.path.join(path, "model.safetensors")]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load(path: str, device=None, dtype=None, verbose=False):
    """Load an HF-layout checkpoint directory -> (Transformer, Tokenizer). Built on the meta device
    (no throwaway random init), filled from safetensors with HF names, strict key check."""
    from safetensors.torch import load_file

    cfg = load_config(path)
    device, dtype = pick_device(device, dtype, verbose=verbose)
    state = {}
    for f in weight_files(path):
        state.update(load_file(f, device="cpu"))
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k for k in model.state_dict() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match config.json ({cfg.model_type}); "
                         f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    for k, v in model.state_dict().items():
        if k in state and state[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(state[k].shape)}, config says {tuple(v.shape)}")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()},
                          strict=False, assign=True)
    model.tie_weights()
    return model.eval(), Tokenizer(path)


def save(model: Transformer, tok: Tokenizer, path: str, extra: dict | None = None, state=None):
    """Write an HF-layout directory (config.json, model.safetensors, tokenizer files) atomically.
    `extra` maps file names to JSON-able objects written alongside (training args, metrics);
    `state` replaces model.state_dict() (e.g. LoRA weights merged into their base)."""
    state = model.state_dict() if state is None else state
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with files.atomic_output(path) as tmp:
        os.makedirs(tmp)
        files.save_tensors(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        save_config(model.config, tok, tmp, next(iter(state.values())).dtype, extra)


def save_config(cfg: Config, tok: Tokenizer, path: str, dtype: torch.dtype, extra: dict | None = None):
    """Everything of an HF-layout directory but the weights, into the existing directory `path`:
    config.json (torch_dtype: `dtype`), the tokenizer files and `extra` (file name -> JSON-able)."""
    hf = cfg.to_hf()
    hf["torch_dtype"] = str(dtype).replace("torch.", "")
    for name, obj in {"config.json": hf, **(extra or {})}.items():
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f, indent=2)
    tok.save(path)
    for name in ("generation_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(tok.path, name)):
            shutil.copy(os.path.join(tok.path, name), path)


# ----------------------------------------------------------------------------- demo


if __name__ == "__main__":
    import argparse

    builtin = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "SmolLM2-135M-Instruct")
    ap = argparse.ArgumentParser(description="Chat once with a checkpoint and print the answer.")
    ap.add_argument("question", nargs="?", default="What is the capital of France?",
                    help="the user message (default: %(default)s)")
    ap.add_argument("--model", default=None, help="HF-layout checkpoint directory (default: the built-in "
                    "model, models/SmolLM2-135M-Instruct)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="reply length limit (default: %(default)s)")
    args = ap.parse_args()
    if args.model is None and not os.path.isdir(builtin):
        sys.exit(f"error: {builtin} does not exist; convert the built-in model first: python data/convert_smollm2.py")
    model, tok = load(args.model or builtin, verbose=True)  # its device line goes to stderr (plain paths)
    prompt = tok.chat([{"role": "user", "content": args.question}])
    out = generate(model, [tok.encode(prompt)], args.max_new_tokens, stop_ids=[tok.im_end],
                   pad_id=tok.pad_id)
    print(tok.decode(out.tokens[0][out.mask[0]].tolist(), skip_special_tokens=True).strip())
