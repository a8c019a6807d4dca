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
    torchrun --nproc_per_node 8 sft.py --lora-rank 0 --sharding fsdp ...  # the paper's sizes (docs/scaling.md)

Input records, one JSON object a line:
    {"query": str, "doc": str, "score": int 0..10, "instruction": str?, "reasoning": str?, "target": float 0..1?}
"target" is a teacher's probability of relevance (tools/grade_minilm.py): --loss soft and --loss scale
train the first answer token towards it (first_token_target) instead of towards the score.

Loss: token-level mean over the global batch,
    loss = -sum_{tokens t of all completions in the batch} log p(t | prefix) / (number of such tokens)
computed micro-batch by micro-batch (each micro-batch's sum is divided by the global count), so
the gradient does not depend on the micro-batch size or on the number of processes.
--group-loss W adds, for each query of the batch, a listwise term (group_contrast): its positive
against its own negatives, counted W times per record of the group, over the same global count.
Its batches hold whole queries, dealt out in turn to the processes.

Output directory (--out):
    log.jsonl            one JSON object per step: loss, answer_loss (the first answer token's loss),
                         auc (of the expected score, relevant vs not, batches of the last 20 steps),
                         lr, grad norm, tok/s, examples seen (records read); group_loss with
                         --group-loss; dev nDCG@10 (two scores) and dev_auc
    step-00050/, last/   args.json + train_state.pt (trainable weights, optimizer, step, RNG
                         states) + adapter.safetensors with LoRA; full fine-tuning also writes the
                         HF-layout model. The newest --keep-checkpoints step-N/ are kept.
                         --sharding fsdp: sharded/ instead, every process's shards of the weights
                         and AdamW state (tools/consolidate.py makes an HF-layout model of it)
    final/               the finished model: HF layout (LoRA merged into the weights, loadable by
                         rerank.py and transformers) + adapter.safetensors (no train_state.pt)

Cost on the 2-core CPU (built-in model, fp32, LoRA r16, micro-batch 4): sequences are ~390 tokens
with --max-doc-tokens 192 (the ERank prompt alone is ~200), about 2.8 GB added per micro-batch
(--gradient-checkpointing: ~2.5 GB, slower); throughput is ~280 tokens/s (bench/bench_sft.py), so
an hour covers a few thousand records, not the 53k that data/make_sft.py makes by default: size
runs with make_sft --max-queries or --max-records.

Where this deviates from the paper (ERank, arXiv 2509.00520, its first stage: SFT on integer scores):
  - base model: the 135M SmolLM2-Instruct (the paper: Qwen3-4B/14B/32B-Base);
  - LoRA rank 16, alpha 32 by default (paper: 32 / 64), on the same "all linear layers";
  - labels: the default data (data/make_sft.py) maps human relevance grades to integer scores
    with no reasoning ("fast mode" targets); the paper distils QwQ-32B reasoning + scores
    (tools/label.py does that with any checkpoint as the teacher);
  - max length: documents are cut to --max-doc-tokens (default 192; the paper: 2,048 tokens in
    all), since training runs on a 2-core CPU;
  - lr 1e-4, cosine, 5 % warmup and 1 epoch follow the paper; the batch is 32 sequences
    (paper: 128) because the data set is much smaller.
"""
import argparse
import contextlib
import random
import time

import torch
import torch.distributed as dist

import model as M
from data.beir import DataFormatError, read_jsonl
from eval import auc, dev_ndcg
from model import completion_logits, token_logprobs
from rerank import HelpFormatter, build_prompt, completion_text, parse_answer, truncate, truncate_batch
from sharding import check_sharding, clip_grad_norm, gathered
from training import (Run, adapter_sha256, add_checkpoint_args, add_dev_args, add_model_args, autocast_for, cosine_lr,
                      finish_run, load_start, parse_resuming, prepare_training, replicated, resolved_args, rng_state,
                      run_cli, save_due, save_step, seed_all, set_lr, set_rng_state, start_or_resume, start_processes,
                      train_state)


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
                   "random records: as many whole queries as fit in --batch-size, one micro-batch a query "
                   "(--micro-batch-size is not used), dealt out in turn to the processes")
    g.add_argument("--length-grouping", type=int, default=0, metavar="N",
                   help="sort records by length within chunks of N batches: less padding (0 = random batches, "
                   "the measured best: docs/experiments.md)")
    g.add_argument("--loss", default="hard", choices=["hard", "soft", "scale"],
                   help="hard: cross-entropy on each record's integer score (the paper); soft: the first answer "
                   "token against the record's teacher 'target' (P(10) = target, P(0) = 1 - target; "
                   "tools/grade_minilm.py), where it has one; scale: the same, the target spread over the "
                   "scale (the score 10 * target shared by the two nearest answers: first_token_target), each "
                   "completion spelling the answer it weighs most")
    g.add_argument("--group-loss", type=float, default=0.0, metavar="W",
                   help="add the listwise term group_contrast with weight W per record (implies --group-by-query; "
                   "W=1 measured worse than none: docs/experiments.md)")
    g.add_argument("--max-records", type=int, default=0, help="use a seeded sample of N records (0 = all)")
    add_model_args(ap, None, "HF-layout checkpoint to start from (default: built-in SmolLM2-135M)")
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
    add_dev_args(g)
    g.add_argument("--bm25-cache", default=None, help="BM25 index cache directory (default: data/cache/bm25)")
    g.add_argument("--eval-every", type=int, default=0, help="dev nDCG@10 every N steps and at the end (0 = never)")
    g.add_argument("--sample-every", type=int, default=25, help="print prompt tail -> greedy completion every N steps")
    add_checkpoint_args(ap, out="runs/sft", save_every=100)
    return parse_resuming(ap, argv)


# ----------------------------------------------------------------------------- records


def read_records(path: str) -> list[dict]:
    """JSONL of {"query", "doc", "score", "instruction"?, "reasoning"?}, checked by data.beir.read_jsonl
    (plus the score here); a bad record raises DataFormatError naming the file, the line and the field."""
    out = []
    for n, r in read_jsonl(path, ("query", "doc"), optional=("instruction", "reasoning"), non_empty=("query", "doc"),
                           expected=f"SFT records; make them with: python data/make_sft.py --out {path}"):
        s = r.get("score")
        if isinstance(s, float) and s.is_integer():
            s = int(s)
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 10:
            raise DataFormatError(f"{path}, line {n}: field 'score' should be an integer 0..10, "
                                  f"got {r.get('score')!r}")
        t = r.get("target")
        if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 1):
            raise DataFormatError(f"{path}, line {n}: field 'target' should be a number 0..1 (or absent), got {t!r}")
        out.append({"query": r["query"], "doc": r["doc"], "score": s, "target": t,
                    "instruction": r.get("instruction"), "reasoning": r.get("reasoning")})
    if not out:
        raise DataFormatError(f"{path}: no records")
    return out


def encode_record(tok, r: dict, max_doc_tokens: int, max_query_tokens: int = 256):
    """-> (prompt ids, completion ids). The two parts are tokenized separately, as at inference
    (the model is given the prompt's tokens and writes the completion's)."""
    doc, _ = truncate(tok, r["doc"], max_doc_tokens)
    query, _ = truncate(tok, r["query"], max_query_tokens)
    thinking = r.get("reasoning") is not None
    prompt = build_prompt(tok, query, doc, r.get("instruction"), thinking=thinking)
    return tok.encode(prompt), tok.encode(completion_text(spelled(r), r.get("reasoning"))) + [tok.im_end]


def spelled(r: dict) -> int:
    """The answer a record's completion spells: its score, or under --loss scale the answer its
    target weighs most (main sets "spelled" from top_answer)."""
    return r.get("spelled", r["score"])


def encode_records(tok, records: list[dict], max_doc_tokens: int, max_query_tokens: int = 256, chunk: int = 2048):
    """encode_record for many records (the same ids), faster: rerank.truncate_batch and batch
    encoding, `chunk` records at a time."""
    out = []
    for s in range(0, len(records), chunk):
        rs = records[s:s + chunk]
        docs = truncate_batch(tok, [r["doc"] for r in rs], max_doc_tokens)
        queries = truncate_batch(tok, [r["query"] for r in rs], max_query_tokens)
        prompts = [build_prompt(tok, q, d, r.get("instruction"), thinking=r.get("reasoning") is not None)
                   for r, (q, _), (d, _) in zip(rs, queries, docs)]
        comps = tok.encode_batch([completion_text(spelled(r), r.get("reasoning")) for r in rs])
        out += [(p, c + [tok.im_end]) for p, c in zip(tok.encode_batch(prompts), comps)]
    return out


# ----------------------------------------------------------------------------- schedule


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: int = 0,
                  queries: list | None = None) -> list[list[int]]:
    """The global batches of one epoch, as record indices: a seeded shuffle cut into batches.
    With group > 0, length grouping: the shuffle is cut into chunks of `group` batches, each chunk
    sorted by length (less padding) and cut into batches, then the batch order is shuffled. Off by
    default: on the built-in model it stalled learning (docs/experiments.md, rb and q3). With `queries`
    (a key per record), the distinct queries are shuffled instead and packed whole into batches of
    at most `batch_size` records, so a query's positive and negatives share a batch (a query with
    more records than that is cut). The tail that does not fill a batch is dropped.
    The same on every process, and independent of the micro-batch size and process count."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(lengths) - len(lengths) % batch_size
    if queries is not None:
        keys = list(dict.fromkeys(queries))  # distinct, in first-seen order
        of = {k: [] for k in keys}
        for i, k in enumerate(queries):
            of[k].append(i)
        batches = [[]]
        for j in torch.randperm(len(keys), generator=g).tolist():
            group = of[keys[j]]
            if len(group) > batch_size:  # a seeded sample of the query's records, in file order
                group = [group[i] for i in sorted(torch.randperm(len(group), generator=g)[:batch_size].tolist())]
            if len(batches[-1]) + len(group) > batch_size:
                batches.append([])
            batches[-1] += group
        if len(batches[-1]) < batch_size:
            batches.pop()
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    perm = torch.randperm(len(lengths), generator=g).tolist()[:n]
    if group <= 0:
        return [perm[j:j + batch_size] for j in range(0, n, batch_size)]
    batches = []
    for s in range(0, n, batch_size * group):
        chunk = sorted(perm[s:s + batch_size * group], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


# ----------------------------------------------------------------------------- the learning signal


def answer_logprobs(net, prompts, completions, digit_ids, targets, shared_prefix=True):
    """-> (logps (B, N), mask (B, N), first (B, 10)): log p of each completion token (fp32), the
    mask of real ones, and the log-probs of the digits "0".."9" where the answer starts.

    targets[row] (None, or ten weights over the digits "0".."9" from first_token_target) makes the
    first answer token's term soft: its log p becomes sum_d w_d * log P(d), the cross-entropy
    against that target. The format tokens after it keep the record's own completion. Only for
    fast-mode rows, whose first token is the answer."""
    logits, mask = completion_logits(net, prompts, completions, shared_prefix)  # (K, V), (B, N)
    tokens = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=logits.device)
    starts = mask.sum(1).cumsum(0) - mask.sum(1)  # (B,): index in logits of each row's first token
    first = torch.log_softmax(logits[starts].float(), -1)[:, digit_ids]  # (B, 10)
    per_token = token_logprobs(logits, tokens)  # (K,)
    soft = [(row, w) for row, w in enumerate(targets) if w is not None]
    if soft:
        rows = torch.tensor([row for row, _ in soft], device=logits.device)
        w = torch.tensor([w for _, w in soft], dtype=first.dtype, device=logits.device)  # (S, 10)
        per_token = per_token.index_put((starts[rows],), (w * first[rows]).sum(-1))
    logps = torch.zeros(mask.shape, device=logits.device)
    logps[mask] = per_token  # row-major: row 0's completion tokens, then row 1's ...
    return logps, mask, first


# the answers a first token can start, by digit token "0".."9": "1" starts "10" (a model trained on
# 0..10 answers almost never means 1), so a target never asks for 1
FIRST_TOKEN_SCORE = [0, 10, 2, 3, 4, 5, 6, 7, 8, 9]
SCALE = sorted(FIRST_TOKEN_SCORE)  # the answers a target spreads over: 0, 2, 3, ..., 9, 10


def top_answer(t: float) -> int:
    """The answer --loss scale's target for t weighs most (the lower one of an even split)."""
    w = first_token_target(t, "scale")
    return FIRST_TOKEN_SCORE[max(range(10), key=lambda d: (w[d], -FIRST_TOKEN_SCORE[d]))]


def first_token_target(t: float, loss: str) -> list[float]:
    """A teacher's probability of relevance t (0..1) -> ten weights over the first answer token
    "0".."9", the target of --loss soft or scale:

      soft:  "10" with probability t, else "0" (weight t on "1", 1 - t on "0"): two answers only;
      scale: the score 10 * t on the answers 0, 2, 3, ..., 9, 10, split between the two either side
             of it in proportion to nearness (t = 0.55 -> half "5", half "6"; t = 0.15 -> 1.5 lies
             between 0 and 2: a quarter "0", three quarters "2"). An unsure document then answers a
             middle score, not 0 or 10, and s * P(s) orders the unsure ones too."""
    w = [0.0] * 10
    if loss == "soft":
        w[1], w[0] = t, 1 - t
        return w
    if loss != "scale":
        raise ValueError(f"loss: expected 'soft' or 'scale', got {loss!r}")
    g = 10 * min(max(t, 0.0), 1.0)
    scale = SCALE
    hi = next(i for i, v in enumerate(scale) if v >= g)
    lo = max(hi - 1, 0)
    a, b = scale[lo], scale[hi]
    frac = 0.0 if b == a else (g - a) / (b - a)  # the weight of the upper neighbour
    w[FIRST_TOKEN_SCORE.index(b)] += frac
    w[FIRST_TOKEN_SCORE.index(a)] += 1 - frac
    return w


def group_contrast(first, relevant) -> torch.Tensor:
    """The listwise term of one query's records: each positive against the query's negatives,

        -log( exp(s_pos) / (exp(s_pos) + sum_neg exp(s_neg)) ),   s = log P("1") - log P("0")

    summed over the positives, with s read at the answer position (first: (G, 10) log-probs of the
    digits, relevant: (G,) bools). The pointwise loss asks each answer to match its own label; this
    asks the positive to win against the documents it competes with for the same query (the
    localized contrastive estimation of Gao et al., arXiv 2101.08751). 0 without both kinds."""
    s = first[:, 1] - first[:, 0]
    if relevant.all() or not relevant.any():
        return s.sum() * 0
    return (torch.logaddexp(s[relevant], torch.logsumexp(s[~relevant], 0)) - s[relevant]).sum()


def first_digit_score(first_logp) -> torch.Tensor:
    """(B, 10) log-probs of the tokens "0".."9" at the answer position -> (B,) expected score
    sum_d d * P'(d), P' renormalised over the ten digits, with "1" read as 10: the answer after
    "<answer>" is one token except for "10" ("1", "0"), and a model trained on 0..10 answers
    almost never means 1. A cheap proxy of rerank.py's expected score, for the training log."""
    p = torch.softmax(first_logp, -1)
    values = torch.tensor(FIRST_TOKEN_SCORE, dtype=p.dtype, device=p.device)
    return p @ values


def signal_stats(signal: list, recent_auc: list) -> dict:
    """A step's (first answer token's loss, expected score, relevant?) triples -> {"answer_loss",
    "auc"} (what there is to report). recent_auc holds the batch AUCs of the last 20 steps (updated
    here); "auc" is their mean, since one batch holds few pairs."""
    if not signal:
        return {}
    row = {"answer_loss": sum(x[0] for x in signal) / len(signal)}
    batch_auc = auc([x[1] for x in signal], [x[2] for x in signal])
    if batch_auc is not None:
        recent_auc[:] = (recent_auc + [batch_auc])[-20:]
    if recent_auc:
        row["auc"] = sum(recent_auc) / len(recent_auc)
    return row


# ----------------------------------------------------------------------------- processes and logging


def process_micro_batches(batch: list, procs, size: int, queries: list | None = None) -> list:
    """This process's share of a global batch (an equal slice), cut into micro-batches of `size`;
    with `queries` (a key per record), one micro-batch per whole query instead, the batch's queries
    dealt out in turn to the processes (a batch holds at least one query a process: enough_queries)."""
    if queries is not None:
        of = {}
        for i in batch:
            of.setdefault(queries[i], []).append(i)
        return list(of.values())[procs.rank::procs.world]
    share = len(batch) // procs.world
    mine = batch[procs.rank * share:(procs.rank + 1) * share]
    return [mine[j:j + size] for j in range(0, len(mine), size)]


def enough_queries(batches: list, queries: list, world: int) -> list:
    """The batches of whole queries that hold at least one query for each of `world` processes (one
    process: all of them), so that no process waits for a gradient another never computes. Packing
    is greedy: where queries have many records, or differ in size, a batch often holds one query
    only, and several processes skip it (main logs how many)."""
    return [b for b in batches if len({queries[i] for i in b}) >= world]


def sum_over_processes(sums: list, signal: list, procs, device):
    """-> (sums, learning-signal triples) of all processes together (sums: numbers to add up)."""
    stats = torch.tensor([float(x) for x in sums], dtype=torch.float64, device=device)  # NCCL: CUDA tensors
    if procs.ddp:
        dist.all_reduce(stats)
        shards = [None] * procs.world
        dist.all_gather_object(shards, signal)
        signal = [x for shard in shards for x in shard]
    return stats.tolist(), signal


def step_line(row: dict, total: int) -> str:
    """The greppable log line of a step."""
    extra = "".join([f" | answer loss {row['answer_loss']:.4f}" if "answer_loss" in row else "",
                     f" | group loss {row['group_loss']:.4f}" if "group_loss" in row else "",
                     f" | AUC {row['auc']:.3f}" if "auc" in row else ""])
    if "dev_ndcg10" in row:
        dev_auc = "-" if row["dev_auc"] is None else f"{row['dev_auc']:.3f}"
        extra += (f" | dev nDCG@10 {row['dev_ndcg10']:.4f} (expected score "
                  f"{row['dev_ndcg10_expected']:.4f}) | dev AUC {dev_auc}")
    return (f"step {row['step']:05d}/{total:05d} | loss {row['loss']:.4f}{extra} | lr {row['lr']:.1e} | "
            f"grad {row['grad_norm']:.3f} | {row['tok_s']:.0f} tok/s | {row['seconds']:.1f}s")


# ----------------------------------------------------------------------------- evaluation


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
    procs = start_processes(args.device)
    args.device, log = procs.device, procs.log
    if (args.group_loss or args.group_by_query) and args.sharding == "fsdp" and procs.world > 1:
        raise SystemExit("--group-loss and --group-by-query give processes different numbers of micro-batches "
                         "(one a query), which --sharding fsdp cannot sync: use --sharding ddp")
    if args.batch_size % procs.world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the process count {procs.world}")
    adapter_sum = adapter_sha256(args.init_adapter)
    sharded = check_sharding(args, procs)
    # master weights, LoRA and optimizer state in fp32 everywhere; matrix products under autocast
    # in the chosen dtype (bf16 on CUDA by default; on CPU when asked)
    device, dtype = M.pick_device(args.device, args.dtype, verbose=procs.master)
    autocast = autocast_for(device, dtype)
    if args.model is None:
        from data.convert_smollm2 import ensure_base_model
        args.model = ensure_base_model()
    resolved = resolved_args(args, procs, device, dtype, init_adapter_sha256=adapter_sum)

    records = read_records(args.data)  # bad input stops here, before the model loads
    if args.loss in ("soft", "scale") and not any(r["target"] is not None and r.get("reasoning") is None for r in records):
        raise SystemExit(f"--loss {args.loss}: {args.data} has no 'target' fields on fast-mode records "
                         f"(grade it: python tools/grade_minilm.py)")

    if args.loss == "scale":  # each fast-mode completion spells the answer its target weighs most, so
        # the tokens after a middle digit are learnt too ("5</answer>", not "50" by analogy with "10")
        records = [{**r, "spelled": top_answer(r["target"])} if r["target"] is not None and r.get("reasoning") is None
                   else r for r in records]

    # load: the starting model (+ --init-adapter), then LoRA on it
    seed_all(args.seed)
    model, tok = load_start(args, procs, device, dtype, sharded)
    trainable = prepare_training(model, args, procs)
    model.train()
    net = replicated(model, procs, device) if procs.ddp and not sharded else model  # DDP: gradients summed in backward

    # data (records were read and checked before the model was loaded)
    if args.max_records and len(records) > args.max_records:  # a seeded sample, kept in file order
        records = [records[i] for i in sorted(random.Random(args.seed).sample(range(len(records)), args.max_records))]
    encoded = encode_records(tok, records, args.max_doc_tokens, args.max_query_tokens)
    lengths = [len(p) + len(c) for p, c in encoded]
    if len(records) < args.batch_size:
        raise SystemExit(f"{args.data}: {len(records)} records, fewer than --batch-size {args.batch_size}")
    query_of = [r["query"] for r in records]
    grouped = query_of if args.group_by_query or args.group_loss else None
    # an epoch is the batches epoch_batches makes: len(records) // batch_size of them, or as many
    # as whole queries pack into, less those with fewer queries than processes (epoch 0's count;
    # another epoch's packing may differ by a few)
    def batches_of(epoch):  # the epoch's global batches (record indices)
        if grouped is None:
            return epoch_batches(lengths, args.batch_size, args.seed, epoch, args.length_grouping)
        return enough_queries(epoch_batches(lengths, args.batch_size, args.seed, epoch, queries=grouped),
                              grouped, procs.world)
    steps_per_epoch = len(batches_of(0)) if grouped else len(records) // args.batch_size
    if grouped and procs.world > 1:
        packed = len(epoch_batches(lengths, args.batch_size, args.seed, 0, queries=grouped))
        log(f"{packed - steps_per_epoch} of epoch 0's {packed} batches of whole queries hold fewer than "
            f"{procs.world} queries (one a process) and are skipped")
        if steps_per_epoch == 0:
            raise SystemExit(f"{args.data}: no batch of --batch-size {args.batch_size} holds {procs.world} whole "
                             f"queries, one for each process; raise --batch-size")
    total = args.steps or max(1, int(args.epochs * steps_per_epoch))
    warmup = int(args.warmup * total)
    log(f"data {args.data}: {len(records)} records, {sum(lengths):,} tokens (mean {sum(lengths) / len(lengths):.0f}, "
        f"max {max(lengths)}), {steps_per_epoch} steps per epoch; schedule {total} steps, warmup {warmup}")

    # optimizer and (maybe) resume
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    run = Run(args.out, resolved, procs, args.keep_checkpoints)
    step, st = start_or_resume(run, args.resume, total, model, trainable, opt,
                               must_match=("lora_rank", "lora_layers", "init_adapter_sha256")
                               + (("world_size",) if grouped else ()),  # it decides which batches are kept
                               warn_if_changed=("model", "init_adapter", "data", "loss", "lora_alpha", "batch_size", "seed", "lr",
                                                "max_doc_tokens", "device", "autocast"),
                               schedule_flags="--data/--batch-size/--epochs/--steps")
    if st is not None:
        set_rng_state(st["rng"])

    # the learning signal, beside the loss (which format tokens dominate): the first answer token's
    # loss and the AUC of the expected score, relevant (score >= 5) against non-relevant records
    digit_ids = [tok.token_id(str(d)) for d in range(10)]
    fast = [r.get("reasoning") is None for r in records]  # the first completion token is the answer
    soft = args.loss in ("soft", "scale")
    recent_auc = []  # batch AUCs of the last 20 steps (logged as their mean; starts afresh on --resume)

    # loop
    schedule, dev_cache = {}, {}
    stop = min(total, args.max_steps) if args.max_steps else total
    examples = st.get("data", {}).get("examples", step * args.batch_size) if st is not None else 0  # records read so far
    while step < stop:
        t0 = time.perf_counter()
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in schedule:
            schedule = {epoch: batches_of(epoch)}
        batch = schedule[epoch][k % len(schedule[epoch])]  # global batch (record indices)
        n_target = sum(len(encoded[i][1]) for i in batch)  # completion tokens in the whole global batch
        lr = set_lr(opt, cosine_lr(step, total, warmup, args.lr))
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        signal = []  # (first answer token's loss, expected score, relevant?) of this step's fast-mode records
        group_sum, groups = 0.0, 0  # the listwise term (--group-loss), for the log
        micro = process_micro_batches(batch, procs, args.micro_batch_size, grouped)
        for j, mb in enumerate(micro):
            # DDP syncs gradients on the last micro-batch only (FSDP reduce-scatters each one's)
            sync = net.no_sync() if net is not model and j < len(micro) - 1 else contextlib.nullcontext()
            with sync:
                with autocast():
                    targets = [first_token_target(records[i]["target"], args.loss)
                               if soft and fast[i] and records[i]["target"] is not None else None for i in mb]
                    logps, mask, first = answer_logprobs(net, [encoded[i][0] for i in mb], [encoded[i][1] for i in mb],
                                                         digit_ids, targets, shared_prefix=not sharded)
                nll = -(logps * mask).sum()
                extra = 0
                if args.group_loss:  # mb is one query's records: its fast-mode ones compete
                    rows = [row for row, i in enumerate(mb) if fast[i]]
                    relevant = torch.tensor([records[mb[row]]["score"] >= 5 for row in rows], dtype=torch.bool)
                    term = group_contrast(first[rows], relevant)
                    extra = args.group_loss * len(rows) * term
                    group_sum, groups = group_sum + float(term.detach()), groups + int(relevant.any() and not relevant.all())
                # DDP and FSDP average gradients over processes: scale by world so they sum instead
                ((nll + extra) * procs.world / n_target).backward()
            loss_sum += nll.detach()
            tokens += sum(lengths[i] for i in mb)
            expected, first_nll = first_digit_score(first.detach()).tolist(), (-logps[:, 0].detach()).tolist()
            signal += [(first_nll[row], expected[row], records[i]["score"] >= 5)
                       for row, i in enumerate(mb) if fast[i]]
        grad_norm = clip_grad_norm(trainable, args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        (loss_sum, tokens, group_sum, groups), signal = sum_over_processes([loss_sum, tokens, group_sum, groups],
                                                                           signal, procs, device)
        step += 1
        examples += len(batch)
        dt = time.perf_counter() - t0
        row = {"step": step, "loss": loss_sum / n_target, "lr": lr, "grad_norm": grad_norm, "tok_s": tokens / dt,
               "seconds": dt, "tokens": int(tokens), "epoch": epoch, "examples": examples,
               **signal_stats(signal, recent_auc), **({"group_loss": group_sum / groups} if groups else {})}
        if args.eval_every and (step % args.eval_every == 0 or step == total):
            with gathered(model), autocast():  # sharded: every process gathers, the first evaluates
                if procs.master:
                    row.update(dev_ndcg(model, tok, args.dev_data, args.dev_split, args.dev_queries,
                                        args.dev_top_k, args.max_doc_tokens, args.max_query_tokens, args.bm25_cache,
                                        dev_cache))
        log(step_line(row, total), flush=True)
        run.write_log(row)
        if args.sample_every and step % args.sample_every == 0:
            i = batch[0]
            with gathered(model):
                if procs.master:
                    log(sample_line(model, tok, encoded[i][0], encoded[i][1], max_new_tokens=len(encoded[i][1]) + 4))
        if save_due(args, step, stop, total):
            save_step(run, step, model, tok, train_state(run, step, total, model, trainable, opt, rng=rng_state(),
                                                         data={"epoch": step // steps_per_epoch,
                                                               "batch_in_epoch": step % steps_per_epoch,
                                                               "examples": examples}))
    finish_run(run, step, total, model, tok)
    return model


if __name__ == "__main__":
    run_cli(main)
