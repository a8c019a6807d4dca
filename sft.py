"""Stage 1 of ERank: supervised fine-tuning on integer relevance scores.

Each training record is a (query, document, score) triple, optionally with the teacher's
reasoning. The model is trained to write, after the ERank prompt (rerank.build_prompt),

    fast mode (no reasoning):   "7</answer><|im_end|>"            (prompt ends with "<answer>")
    thinking mode (reasoning):  "<think>...</think><answer>7</answer><|im_end|>"

with plain next-token cross-entropy on those completion tokens only, the end-of-turn token
included (so the model learns to stop).

Run:
    python data/make_sft.py                                  # runs/sft/train.jsonl
    python sft.py --max-steps 3                              # smoke test on the built-in model
    python sft.py --epochs 1 --eval-every 50 --out runs/sft  # a real run (see --help)
    python sft.py --resume --out runs/sft                    # continue exactly from runs/sft/last
    torchrun --nproc_per_node 2 sft.py ...                   # data parallel (gloo on CPU, nccl on CUDA)

Input records, one JSON object a line:
    {"query": str, "doc": str, "score": int 0..10, "instruction": str?, "reasoning": str?}

Loss: token-level mean over the global batch,
    loss = -sum_{tokens t of all completions in the batch} log p(t | prefix) / (number of such tokens)
computed micro-batch by micro-batch (each micro-batch's sum is divided by the global count), so
the gradient does not depend on the micro-batch size or on the number of processes.

Output directory (--out):
    log.jsonl            one JSON object per step: loss, answer_loss (the first answer token's loss),
                         auc (of the expected score, relevant vs not, batches of the last 20 steps),
                         lr, grad norm, tok/s, examples seen; dev nDCG@10 (two scores) and dev_auc
    step-00050/, last/   args.json + train_state.pt (trainable weights, optimizer, step, RNG
                         states) + adapter.safetensors with LoRA; full fine-tuning also writes the
                         HF-layout model. The newest --keep-checkpoints step-N/ are kept.
    final/               the finished model: HF layout (LoRA merged into the weights, loadable by
                         rerank.py and transformers) + adapter.safetensors (no train_state.pt)

Cost on the 2-core CPU (built-in model, fp32, LoRA r16, micro-batch 4): sequences are ~390 tokens
with --max-doc-tokens 192 (the ERank prompt alone is ~200), about 2.8 GB added per micro-batch
(--gradient-checkpointing: ~2.5 GB, slower); throughput is ~280 tokens/s (bench/bench_sft.py), so
an hour covers a few thousand records, not the 53k that data/make_sft.py makes by default: size
runs with make_sft --max-queries or --max-records.

Where this deviates from the paper (ERank, arXiv 2509.00520, section 4 of the method notes):
  - base model: the 135M SmolLM2-Instruct (the paper: Qwen3-4B/14B/32B-Base);
  - LoRA rank 16, alpha 32 by default (paper: 32 / 64), on the same "all linear layers";
  - labels: the default data (data/make_sft.py) maps human relevance grades to integer scores
    with no reasoning ("fast mode" targets); the paper distils QwQ-32B reasoning + scores
    (data/label.py does that with any checkpoint as the teacher);
  - max length: documents are cut to --max-doc-tokens (default 192; the paper: 2,048 tokens in
    all), since training runs on a 2-core CPU;
  - lr 1e-4, cosine, 5 % warmup and 1 epoch follow the paper; the batch is 32 sequences
    (paper: 128) because the data set is much smaller.
"""
import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import model as M
from rerank import HelpFormatter, build_prompt, completion_text, parse_answer, truncate, write_atomic

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RecordError(ValueError):
    """A bad training record; the message names the file, the line and the field."""


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="ERank stage 1: SFT on integer relevance scores.",
                                 formatter_class=HelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="runs/sft/train.jsonl", help="training records (JSONL), see data/make_sft.py")
    g.add_argument("--max-doc-tokens", type=int, default=192, help="documents are truncated to this many tokens")
    g.add_argument("--max-query-tokens", type=int, default=256, help="queries are truncated to this many tokens")
    g.add_argument("--group-by-query", action="store_true", help="batches hold whole queries' records (a "
                   "query's positive and negatives side by side, sharing the query's prompt prefix) instead of "
                   "length-grouped random records; use a batch and micro-batch that are multiples of the "
                   "records per query")
    g.add_argument("--length-grouping", type=int, default=0, metavar="N",
                   help="sort records by length within chunks of N batches (less padding; 0 = random batches). "
                   "Measured on the built-in model: random batches learnt relevance after ~2,000 examples, "
                   "length-grouped ones (N = 16) had not after 2,800")
    g.add_argument("--max-records", type=int, default=0, help="use a seeded sample of N records (0 = all)")
    g = ap.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF-layout checkpoint to start from (default: built-in SmolLM2-135M)")
    g.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if available)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="autocast dtype (default: bf16 on CUDA; "
                   "fp32 on CPU). Weights, LoRA, optimizer state, loss and log-probs stay fp32 either way")
    g.add_argument("--lora-rank", type=int, default=16, help="LoRA rank on all linear layers; 0 = full fine-tuning")
    g.add_argument("--lora-layers", type=int, default=0, help="LoRA on the last N decoder blocks only (0 = all); "
                   "backward then stops at the first adapted block")
    g.add_argument("--init-adapter", default=None, help="adapter.safetensors merged into --model before training "
                   "(continue a run from a committed adapter: the new run's adapter is the delta on top of it; "
                   "data/export_adapter.py adds the two)")
    g.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA scale is alpha / rank")
    g.add_argument("--gradient-checkpointing", type=int, nargs="?", const=-1, default=0, metavar="N",
                   help="recompute the MLP half of the first N blocks in backward (no N: all blocks): "
                   "less memory, slower")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (paper: 1e-4 with LoRA)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup", type=float, default=0.05, help="warmup, as a fraction of all steps (paper: 5%%)")
    g.add_argument("--batch-size", type=int, default=32, help="global batch, in sequences, per optimizer step")
    g.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward/backward on one process "
                   "(4 x ~390 tokens: ~2.8 GB with LoRA on the built-in model)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the data (paper: 1)")
    g.add_argument("--steps", type=int, default=0, help="schedule length in steps (0 = from --epochs)")
    g.add_argument("--max-steps", type=int, default=0, help="stop after this step (and save last/); the schedule "
                   "keeps its full length, so a later --resume continues it")
    g.add_argument("--seed", type=int, default=0, help="seeds LoRA init and the data order")
    g = ap.add_argument_group("evaluation and logging")
    g.add_argument("--dev-data", default="data/beir/manpages", help="BEIR directory whose dev qrels give dev nDCG@10")
    g.add_argument("--dev-split", default="dev", help="qrels split used for evaluation (never pyfaq)")
    g.add_argument("--dev-queries", type=int, default=20, help="queries evaluated (the first N by id)")
    g.add_argument("--dev-top-k", type=int, default=20, help="BM25 candidates reranked per query")
    g.add_argument("--eval-every", type=int, default=0, help="dev nDCG@10 every N steps and at the end (0 = never)")
    g.add_argument("--sample-every", type=int, default=25, help="print prompt tail -> greedy completion every N steps")
    g = ap.add_argument_group("checkpoints")
    g.add_argument("--out", default="runs/sft", help="output directory")
    g.add_argument("--save-every", type=int, default=100, help="write step-N/ and last/ every N steps (0 = never)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="step-N/ directories kept (the newest; "
                   "older ones are deleted; 0 = keep all). last/ and final/ are always kept")
    g.add_argument("--resume", action="store_true", help="continue exactly from <out>/last")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- records


def read_records(path: str) -> list[dict]:
    """JSONL of {"query", "doc", "score", "instruction"?, "reasoning"?}; bad input names file, line, field."""
    if not os.path.exists(path):
        raise RecordError(f"{path}: no such file (make one with: python data/make_sft.py --out {path})")
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}: line {n}: not UTF-8 "
                                  f"(byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(r, dict):
                raise RecordError(f"{path}: line {n}: expected an object with query, doc, score")
            for field in ("query", "doc"):
                if not isinstance(r.get(field), str) or not r[field].strip():
                    raise RecordError(f"{path}: line {n}: field '{field}' is missing or not a non-empty string")
            s = r.get("score")
            if isinstance(s, float) and s.is_integer():
                s = int(s)
            if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 10:
                raise RecordError(f"{path}: line {n}: field 'score' must be an integer 0..10, got {r.get('score')!r}")
            for field in ("instruction", "reasoning"):
                if r.get(field) is not None and not isinstance(r[field], str):
                    raise RecordError(f"{path}: line {n}: field '{field}' must be a string when present")
            for field in ("query", "doc", "instruction", "reasoning"):
                if isinstance(r.get(field), str) and any("\ud800" <= c <= "\udfff" for c in r[field]):
                    raise RecordError(f"{path}: line {n}: field '{field}' holds a lone surrogate (not valid text)")
            out.append({"query": r["query"], "doc": r["doc"], "score": s,
                        "instruction": r.get("instruction"), "reasoning": r.get("reasoning")})
    if not out:
        raise RecordError(f"{path}: no records")
    return out


def encode_record(tok, r: dict, max_doc_tokens: int, max_query_tokens: int = 256):
    """-> (prompt ids, completion ids). The two parts are tokenized separately, as at inference
    (the model is given the prompt's tokens and writes the completion's)."""
    doc, _ = truncate(tok, r["doc"], max_doc_tokens)
    query, _ = truncate(tok, r["query"], max_query_tokens)
    thinking = r.get("reasoning") is not None
    prompt = build_prompt(tok, query, doc, r.get("instruction"), thinking=thinking)
    return tok.encode(prompt), tok.encode(completion_text(r["score"], r.get("reasoning"))) + [tok.im_end]


def encode_records(tok, records: list[dict], max_doc_tokens: int, max_query_tokens: int = 256, chunk: int = 2048):
    """encode_record for many records (the same ids), faster: batch encoding, and long texts are
    tokenized from a prefix of 8 characters per token budget; when that prefix already gives 16
    tokens more than the budget, its first `budget` tokens are the full text's (byte-level BPE
    only re-splits the last word of a cut text); otherwise the whole text is encoded."""

    def cut_all(texts, budget):
        heads = tok.encode_batch([t[:budget * 8] for t in texts])
        out = []
        for t, ids in zip(texts, heads):
            if len(t) > budget * 8 and len(ids) <= budget + 16:
                ids = tok.encode(t)
            out.append(t if len(ids) <= budget else tok.decode(ids[:budget]))
        return out

    out = []
    for s in range(0, len(records), chunk):
        rs = records[s:s + chunk]
        docs, queries = cut_all([r["doc"] for r in rs], max_doc_tokens), cut_all([r["query"] for r in rs], max_query_tokens)
        prompts = [build_prompt(tok, q, d, r.get("instruction"), thinking=r.get("reasoning") is not None)
                   for r, q, d in zip(rs, queries, docs)]
        comps = tok.encode_batch([completion_text(r["score"], r.get("reasoning")) for r in rs])
        out += [(p, c + [tok.im_end]) for p, c in zip(tok.encode_batch(prompts), comps)]
    return out


# ----------------------------------------------------------------------------- log-probs (shared with rl.py)


def completion_logprobs(model, prompts, completions, temperature: float = 1.0, first_ids=None):
    """(B, N) fp32 log p(completion token j | prompt + completion[:j]) and the (B, N) bool mask of
    real completion tokens (column j < len(completion); the end token is one of them).
    With `first_ids` (K token ids) also (B, K) fp32 log-probs of those tokens at each row's first
    completion position (sft.py's view of the answer distribution, from the same forward pass).

    Work shared between rows is done once, with gradients, through a KV cache: the longest
    common prefix of all prompts (ERank's system turn and task header, ~70 tokens) runs with batch
    size 1, and a prompt repeated in several rows (RL's G samples of one prompt) runs once. Same
    values and gradients as running every row in full (tested), less compute and memory.
    The rest of each row (prompt remainder + completion) is left-padded, so every completion ends
    at the last column; logits are computed only at the positions that predict a completion
    token (the column before it), never at the full (B, T, V). The mask comes from the lengths,
    not from the token ids."""
    assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    unique = sorted(set(map(tuple, prompts)))
    P = M.common_prefix_length(unique)
    repeats = len(unique) < len(prompts)
    # rows: what runs on top of the shared prefix. A repeated prompt's remainder (all but its last
    # token) runs once per distinct prompt ("heads"); its rows then hold [last prompt token] + completion
    if repeats:
        heads = [list(p[P:-1]) for p in unique]
        rows = [[p[-1]] + list(c) for p, c in zip(prompts, completions)]
    else:
        heads = []
        rows = [list(p[P:]) + list(c) for p, c in zip(prompts, completions)]
    Th = max(map(len, heads), default=0)
    cache = None
    if P or Th:
        cache = M.KVCache(core.config, 1, P + Th + max(map(len, rows)), device, dtype)
        if P:
            model(torch.tensor([unique[0][:P]], device=device), cache=cache, logits_at="hidden")
        cache.select(torch.zeros(len(heads) if Th else len(prompts), dtype=torch.long, device=device))
        if Th:
            ids, attn = M._left_pad(heads, 0, device)
            model(ids, attn, cache=cache, logits_at="hidden")  # fills the cache; output unused
            row_of = {p: i for i, p in enumerate(unique)}
            cache.select(torch.tensor([row_of[tuple(p)] for p in prompts], device=device))
    ids, attn = M._left_pad(rows, 0, device)  # (B, T)
    B, T = ids.shape
    lengths = torch.tensor([len(c) for c in completions], device=device)  # (B,)
    target = torch.arange(T, device=device)[None, :] >= T - lengths[:, None]  # (B, T): completion tokens
    at = torch.zeros_like(target)
    at[:, :-1] = target[:, 1:]  # (B, T): the positions that predict them
    logits = model(ids, attn, cache=cache, logits_at=at)  # (sum(lengths), V), row-major like ids[target]
    lp = M.token_logprobs(logits, ids[target], temperature)  # (sum(lengths),) fp32
    N = int(lengths.max()) if B else 0
    mask = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N)
    out = torch.zeros(B, N, device=device, dtype=lp.dtype)
    out[mask] = lp  # row-major order again: row i's completion tokens 0..len-1
    if first_ids is None:
        return out, mask
    starts = lengths.cumsum(0) - lengths  # (B,) each row's first completion position in `logits`
    first = torch.log_softmax(logits[starts].detach().float(), -1)[:, first_ids]  # (B, K)
    return out, mask, first


# ----------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Linear):
    """y = x W^T + b + (x A^T B^T) * alpha / r. Keeps the base layer's `weight` / `bias` tensors
    (shared, frozen), so state-dict names stay HF's; B starts at zero, so the model is unchanged
    until trained. A gets nn.Linear's default (Kaiming-uniform) init, as in the LoRA paper."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        # under bf16 autocast y is bf16, and the update (small against y early in training) would
        # lose its low bits in a bf16 add: it is added in fp32 (.float() is a no-op for fp32 y).
        # In place: the linear's backward does not need y.
        y = F.linear(x, self.weight, self.bias).float()
        return y.add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)

    def delta(self):
        return (self.lora_B @ self.lora_A) * self.scale  # (out, in)


def add_lora(model, rank: int, alpha: float, targets=LORA_TARGETS, last_layers: int = 0) -> list:
    """Freeze every parameter, then swap each target nn.Linear for a LoRALinear sharing its
    weight (in the last `last_layers` decoder blocks only, when > 0). Returns the new trainable
    parameters (A, B of each layer, in module order)."""
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = model.model.layers
    scope = blocks[len(blocks) - last_layers:] if 0 < last_layers < len(blocks) else model
    swaps = [(parent, name, child) for parent in scope.modules() for name, child in parent.named_children()
             if name in targets and type(child) is nn.Linear]
    params = []
    for parent, name, child in swaps:
        lora = LoRALinear(child, rank, alpha)
        setattr(parent, name, lora)
        params += [lora.lora_A, lora.lora_B]
    return params


def merged_state_dict(model) -> dict:
    """HF-named weights with each LoRA update folded in (W + scale * B @ A); no lora_ keys.
    The model itself is left as it is."""
    deltas = {name + ".weight": m.delta() for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        v = v.detach()
        out[k] = (v + deltas[k].to(v.dtype)) if k in deltas else v.clone()
    return out


def adapter_state_dict(model) -> dict:
    """{module + ".lora_A": A, module + ".lora_B": B * scale}: apply as W + B @ A."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[name + ".lora_A"] = m.lora_A.detach().clone()
            out[name + ".lora_B"] = (m.lora_B.detach() * m.scale).contiguous()
    return out


# ----------------------------------------------------------------------------- schedule


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Learning rate for 0-based `step`: linear warmup to peak over warmup_steps, then cosine to 0
    at total_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: int = 0,
                  queries: list | None = None) -> list[list[int]]:
    """The global batches of one epoch, as record indices: a seeded shuffle cut into batches.
    With group > 0, length grouping: the shuffle is cut into chunks of `group` batches, each chunk
    sorted by length (less padding) and cut into batches, then the batch order is shuffled. Off by
    default: on the built-in model it stalled learning (README, "where it stands"). With `queries`
    (a key per record), the distinct queries are shuffled instead and their records laid side by
    side before cutting, so a query's positive and negatives share a batch. The tail that does not fill a batch is dropped.
    The same on every process, and independent of the micro-batch size and process count."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(lengths) - len(lengths) % batch_size
    if queries is not None:
        keys = list(dict.fromkeys(queries))  # distinct, in first-seen order
        of = {k: [] for k in keys}
        for i, k in enumerate(queries):
            of[k].append(i)
        order = [i for j in torch.randperm(len(keys), generator=g).tolist() for i in of[keys[j]]][:n]
        batches = [order[j:j + batch_size] for j in range(0, n, batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    perm = torch.randperm(len(lengths), generator=g).tolist()[:n]
    if group <= 0:
        return [perm[j:j + batch_size] for j in range(0, n, batch_size)]
    batches = []
    for s in range(0, n, batch_size * group):
        chunk = sorted(perm[s:s + batch_size * group], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: str, model, tok, args: dict, train_state: dict | None, full: bool = True):
    """One atomic directory: the HF-layout model (LoRA merged in) + args.json, adapter.safetensors
    when LoRA is on, and train_state.pt (skipped when train_state is None). With full=False and
    LoRA on (a LoRA run's step-N/ and last/), the merged model is left out: the adapter and the
    train state are all --resume needs (tens of MB instead of ~540 MB); final/ is always full."""
    from safetensors.torch import save_file

    staging = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.path.basename(path)}-staging{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    info = {k: train_state[k] for k in ("step", "total_steps") if train_state and k in train_state}
    adapter = adapter_state_dict(model)
    if full or not adapter:
        M.save(model, tok, staging, state=merged_state_dict(model), extra={"args.json": args, "train_info.json": info})
    else:
        os.makedirs(staging)
        for name, obj in (("args.json", args), ("train_info.json", info)):
            with open(os.path.join(staging, name), "w") as f:
                json.dump(obj, f, indent=2)
    if adapter:
        save_file({k: v.cpu().contiguous() for k, v in adapter.items()}, os.path.join(staging, "adapter.safetensors"),
                  metadata={"format": "pt", "rank": str(args.get("lora_rank")), "alpha": str(args.get("lora_alpha"))})
    if train_state is not None:
        torch.save(train_state, os.path.join(staging, "train_state.pt"))
    M.commit_dir(staging, path)


def load_train_state(path: str) -> dict:
    f = os.path.join(path, "train_state.pt")
    if not os.path.exists(f):
        raise FileNotFoundError(f"{f}: missing; --resume needs a checkpoint written during training (<out>/last)")
    return torch.load(f, map_location="cpu", weights_only=False)


def copy_checkpoint(src: str, dst: str):
    tmp = M.atomic_dir(dst)
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    M.commit_dir(tmp, dst)


def prune_checkpoints(out: str, keep: int):
    """Delete all but the newest `keep` step-N/ directories of a run (each is a full model)."""
    steps = sorted(d for d in os.listdir(out) if d.startswith("step-") and d[5:].isdigit())
    for d in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)


# ----------------------------------------------------------------------------- the learning signal


def auc(scores, labels) -> float | None:
    """Area under the ROC curve: the chance that a random relevant record scores above a random
    non-relevant one (ties count half). None when one class is missing."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def first_digit_score(first_logp) -> torch.Tensor:
    """(B, 10) log-probs of the tokens "0".."9" at the answer position -> (B,) expected score
    sum_d d * P'(d), P' renormalised over the ten digits, with "1" read as 10: the answer after
    "<answer>" is one token except for "10" ("1", "0"), and a model trained on 0..10 answers
    almost never means 1. A cheap proxy of rerank.py's expected score, for the training log."""
    p = torch.softmax(first_logp, -1)
    values = torch.tensor([0, 10, 2, 3, 4, 5, 6, 7, 8, 9], dtype=p.dtype, device=p.device)
    return p @ values


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def dev_ndcg(model, tok, args, cache: dict) -> dict:
    """Mean nDCG@10 of fast-mode reranking of BM25's top --dev-top-k for the first --dev-queries
    dev queries (sorted by id): ranked by ERank's s * P(s), and by the expected score sum_s s * P(s)
    (same forward passes). The second moves as soon as the model's answer distribution carries any
    signal, even while every greedy answer is still the same integer. Also the AUC of the expected
    score, judged against non-relevant candidates (pooled over the queries). `cache` (a dict owned
    by the caller) keeps the candidates between calls. sft.py and rl.py both use it.
    -> {"dev_ndcg10", "dev_ndcg10_expected", "dev_auc"}"""
    from data.beir import load_corpus, load_qrels, load_queries
    from data.bm25 import BM25, DEFAULT_CACHE
    from eval import ndcg_at_k
    from rerank import Reranker, final_score, sort_records

    key = (args.dev_data, args.dev_split, args.dev_queries, args.dev_top_k)
    if key not in cache:
        if "pyfaq" in os.path.basename(os.path.normpath(args.dev_data)) or args.dev_split == "test":
            raise ValueError(f"--dev-data {args.dev_data} --dev-split {args.dev_split}: the held-out test set; "
                             "never tune on it")
        corpus, queries = load_corpus(args.dev_data), load_queries(args.dev_data)
        qrels = load_qrels(args.dev_data, args.dev_split)
        bm25 = BM25.from_dir(args.dev_data, cache_dir=getattr(args, "bm25_cache", None) or DEFAULT_CACHE)
        qids = sorted(q for q in qrels if q in queries)[:args.dev_queries]
        items = []
        for q in qids:
            docs = [{"id": d, "title": corpus[d].get("title", ""), "text": corpus[d]["text"]}
                    for d, _ in bm25.search(queries[q], args.dev_top_k)]
            items.append((queries[q], docs, qrels[q]))
        cache[key] = items
    was_training = model.training
    model.eval()
    rr = Reranker((model, tok), thinking=False, score="expected", max_doc_tokens=args.max_doc_tokens,
                  max_query_tokens=args.max_query_tokens, batch_tokens=8192, verbose=False)
    by_answer, by_expected, scores, labels = [], [], [], []
    for q, docs, rel in cache[key]:
        recs = rr.rerank(q, docs) if docs else []  # sorted by the expected score
        by_expected.append(ndcg_at_k([r["id"] for r in recs], rel) if docs else 0.0)
        scores += [r["score"] for r in recs]
        labels += [rel.get(r["id"], 0) > 0 for r in recs]
        for r in recs:
            r["score"] = final_score(r, "answer")
        by_answer.append(ndcg_at_k([r["id"] for r in sort_records(recs)], rel) if docs else 0.0)  # rerank.py's order
    model.train(was_training)
    n = max(1, len(by_answer))
    return {"dev_ndcg10": sum(by_answer) / n, "dev_ndcg10_expected": sum(by_expected) / n,
            "dev_auc": auc(scores, labels)}


@torch.no_grad()
def sample_line(model, tok, prompt_ids, target_ids, max_new_tokens) -> str:
    was_training = model.training
    model.eval()
    out = M.generate(model, [prompt_ids], max_new_tokens, stop_ids=[tok.im_end], pad_id=tok.pad_id)
    model.train(was_training)
    text = tok.decode(out.tokens[0][out.mask[0]].tolist())
    prompt_text = tok.decode(prompt_ids)
    # fast-mode prompts end with "<answer>": parse it together with the completion
    full = ("<answer>" if prompt_text.endswith("<answer>") else "") + text
    tail = prompt_text[-60:].replace("\n", "\\n")
    return f"sample | ...{tail} -> {text!r} -> score {parse_answer(full)} (target {tok.decode(target_ids)!r})"


# ----------------------------------------------------------------------------- training


def main(argv=None):
    args = parse_args(argv)
    # processes: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    ddp = world > 1
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if ddp:
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            args.device = f"cuda:{local}"
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the process count {world}")

    if args.init_adapter and not os.path.isfile(args.init_adapter):
        raise SystemExit(f"error: --init-adapter {args.init_adapter}: no such file")
    # device and dtype: master weights, LoRA and optimizer state in fp32 everywhere; matrix
    # products under autocast in the chosen dtype (bf16 on CUDA by default; on CPU when asked)
    device, dtype = M.pick_device(args.device, args.dtype, verbose=master)
    amp = dtype in (torch.bfloat16, torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if amp else contextlib.nullcontext

    if args.model is None:
        from data.convert_smollm2 import ensure_base_model
        args.model = ensure_base_model()
    resolved = vars(args).copy()
    resolved.update(world_size=world, device=str(device), autocast=str(dtype) if amp else "none (fp32)")
    log("args " + json.dumps(resolved, sort_keys=True))

    records = read_records(args.data)  # bad input stops here, before the model loads

    # load
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tok = M.load(args.model, device=device, dtype=torch.float32)
    if args.init_adapter:
        try:
            M.apply_adapter(model, args.init_adapter)
        except ValueError as e:
            raise SystemExit(f"error: --init-adapter {e}") from None
        log(f"merged {args.init_adapter} into {args.model}")
    if args.lora_rank > 0:
        trainable = add_lora(model, args.lora_rank, args.lora_alpha, last_layers=args.lora_layers)
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
    model.gradient_checkpointing = True if args.gradient_checkpointing < 0 else args.gradient_checkpointing
    model.train()
    n_train = sum(p.numel() for p in trainable)
    log(f"trainable parameters {n_train:,} of {sum(p.numel() for p in model.parameters()):,} "
        f"({'LoRA r%d alpha %g' % (args.lora_rank, args.lora_alpha) if args.lora_rank else 'full fine-tuning'}"
        f"{', last %d blocks' % args.lora_layers if args.lora_rank and args.lora_layers else ''})")
    net = model
    if ddp:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    # data (records were read and checked before the model was loaded)
    if args.max_records and len(records) > args.max_records:  # a seeded sample, kept in file order
        records = [records[i] for i in sorted(random.Random(args.seed).sample(range(len(records)), args.max_records))]
    encoded = encode_records(tok, records, args.max_doc_tokens, args.max_query_tokens)
    lengths = [len(p) + len(c) for p, c in encoded]
    if len(records) < args.batch_size:
        raise SystemExit(f"{args.data}: {len(records)} records, fewer than --batch-size {args.batch_size}")
    steps_per_epoch = len(records) // args.batch_size
    total = args.steps or max(1, int(args.epochs * steps_per_epoch))
    warmup = int(args.warmup * total)
    log(f"data {args.data}: {len(records)} records, {sum(lengths):,} tokens (mean {sum(lengths) / len(lengths):.0f}, "
        f"max {max(lengths)}), {steps_per_epoch} steps per epoch; schedule {total} steps, warmup {warmup}")

    # optimizer and (maybe) resume
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    step = 0
    last_dir, log_path = os.path.join(args.out, "last"), os.path.join(args.out, "log.jsonl")
    if args.resume:
        st = load_train_state(last_dir)
        saved = st["args"]
        for k in ("lora_rank", "lora_layers", "init_adapter"):  # what the trainable weights are
            if saved.get(k) != resolved.get(k):
                raise SystemExit(f"{last_dir}: --{k.replace('_', '-')} was {saved.get(k)!r}, now {resolved.get(k)!r}; "
                                 "resume with the same value")
        for k in ("model", "data", "lora_alpha", "batch_size", "seed", "lr", "max_doc_tokens"):
            if saved.get(k) != resolved.get(k):
                log(f"warning: --{k.replace('_', '-')} was {saved.get(k)!r} in {last_dir}, now {resolved.get(k)!r}")
        if st["total_steps"] != total:
            raise SystemExit(f"{last_dir}: schedule was {st['total_steps']} steps, now {total}; resume with the same "
                             "--data/--batch-size/--epochs/--steps")
        with torch.no_grad():
            for p in trainable:
                p.copy_(st["trainable"][names[id(p)]].to(p.device))
        opt.load_state_dict(st["optimizer"])
        set_rng_state(st["rng"])
        step = st["step"]
        log(f"resumed from {last_dir} at step {step}")
        if master and os.path.exists(log_path):  # drop log lines of steps after the checkpoint
            keep = [line for line in open(log_path) if line.strip() and json.loads(line)["step"] <= step]
            write_atomic(log_path, "".join(keep))
    elif master and os.path.exists(log_path):
        os.remove(log_path)
    if master:
        os.makedirs(args.out, exist_ok=True)

    def train_state(step):
        return {"step": step, "total_steps": total, "args": resolved,
                "trainable": {names[id(p)]: p.detach().cpu() for p in trainable},
                "optimizer": opt.state_dict(), "rng": rng_state(),
                "data": {"epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch}}

    # the learning signal, beside the loss (which format tokens dominate): the first answer token's
    # loss and the AUC of the expected score, relevant (score >= 5) against non-relevant records
    digit_ids = [tok.token_id(str(d)) for d in range(10)]
    fast = [r.get("reasoning") is None for r in records]  # the first completion token is the answer
    recent_auc = []  # batch AUCs of the last 20 steps (logged as their mean; starts afresh on --resume)

    # loop
    schedule, dev_cache = {}, {}
    stop = min(total, args.max_steps) if args.max_steps else total
    while step < stop:
        t0 = time.perf_counter()
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in schedule:
            queries = [r["query"] for r in records] if args.group_by_query else None
            schedule = {epoch: epoch_batches(lengths, args.batch_size, args.seed, epoch, args.length_grouping, queries)}
        batch = schedule[epoch][k]  # global batch (record indices)
        n_target = sum(len(encoded[i][1]) for i in batch)  # completion tokens in the whole global batch
        share = len(batch) // world
        mine = batch[rank * share:(rank + 1) * share]
        micro = [mine[j:j + args.micro_batch_size] for j in range(0, len(mine), args.micro_batch_size)]
        lr = cosine_lr(step, total, warmup, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        signal = []  # (first answer token's loss, expected score, relevant?) of this step's fast-mode records
        for j, mb in enumerate(micro):
            sync = contextlib.nullcontext() if (not ddp or j == len(micro) - 1) else net.no_sync()
            with sync:
                with autocast():
                    logps, mask, first = completion_logprobs(net, [encoded[i][0] for i in mb],
                                                             [encoded[i][1] for i in mb], first_ids=digit_ids)
                nll = -(logps * mask).sum()
                # DDP averages gradients over processes: scale by world so they sum instead
                (nll * world / n_target).backward()
            loss_sum += nll.detach()
            tokens += sum(lengths[i] for i in mb)
            expected, first_nll = first_digit_score(first).tolist(), (-logps[:, 0].detach()).tolist()
            signal += [(first_nll[row], expected[row], records[i]["score"] >= 5)
                       for row, i in enumerate(mb) if fast[i]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats = torch.tensor([float(loss_sum), float(tokens)], dtype=torch.float64)
        if ddp:
            dist.all_reduce(stats)
            shards = [None] * world
            dist.all_gather_object(shards, signal)
            signal = [x for shard in shards for x in shard]
        step += 1
        dt = time.perf_counter() - t0
        row = {"step": step, "loss": float(stats[0]) / n_target, "lr": lr, "grad_norm": grad_norm,
               "tok_s": float(stats[1]) / dt, "seconds": dt, "tokens": int(stats[1]), "epoch": epoch,
               "examples": step * args.batch_size}
        if signal:
            row["answer_loss"] = sum(x[0] for x in signal) / len(signal)
            batch_auc = auc([x[1] for x in signal], [x[2] for x in signal])
            if batch_auc is not None:
                recent_auc = (recent_auc + [batch_auc])[-20:]
            if recent_auc:
                row["auc"] = sum(recent_auc) / len(recent_auc)
        if master and args.eval_every and (step % args.eval_every == 0 or step == total):
            with autocast():
                row.update(dev_ndcg(model, tok, args, dev_cache))
        if master:
            extra = "".join([f" | answer loss {row['answer_loss']:.4f}" if "answer_loss" in row else "",
                             f" | AUC {row['auc']:.3f}" if "auc" in row else ""])
            if "dev_ndcg10" in row:
                dev_auc = "-" if row["dev_auc"] is None else f"{row['dev_auc']:.3f}"
                extra += (f" | dev nDCG@10 {row['dev_ndcg10']:.4f} (expected score "
                          f"{row['dev_ndcg10_expected']:.4f}) | dev AUC {dev_auc}")
            log(f"step {step:05d}/{total:05d} | loss {row['loss']:.4f}{extra} | lr {lr:.1e} | grad {grad_norm:.3f} | "
                f"{row['tok_s']:.0f} tok/s | {dt:.1f}s", flush=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if master and args.sample_every and step % args.sample_every == 0:
            i = batch[0]
            log(sample_line(model, tok, encoded[i][0], encoded[i][1], max_new_tokens=len(encoded[i][1]) + 4))
        save_now = args.save_every and step % args.save_every == 0
        if master and (save_now or (step == stop and stop < total)):
            path = os.path.join(args.out, f"step-{step:05d}")
            save_checkpoint(path, model, tok, resolved, train_state(step), full=False)
            copy_checkpoint(path, last_dir)
            prune_checkpoints(args.out, args.keep_checkpoints)
            log(f"saved {path} and {last_dir}")
    if master and step == total:
        save_checkpoint(os.path.join(args.out, "final"), model, tok, resolved, None)
        log(f"saved {os.path.join(args.out, 'final')}")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return model


if __name__ == "__main__":
    from data.beir import DataFormatError
    try:
        main()
    except (RecordError, DataFormatError, FileNotFoundError) as e:  # bad input: one line, exit status 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
