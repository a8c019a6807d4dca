"""Stage 2 of ERank: GRPO with a listwise-derived reward, on top of the SFT model.

For each query of a step, each of its N candidate documents (>= 1 positive + BM25-mined
negatives, data/bm25.mine_candidates on the TRAIN qrels) gets G sampled completions from the
policy. All N*G scores of the query are ranked together and every rollout is rewarded for its
place in that pooled ranking (r_RR, the reward of the paper's RL stage); the advantage is
group-relative over the G rollouts of one (query, document) prompt; the update is PPO-clipped
with a k3 KL penalty to the frozen SFT model.

Run:
    python rl.py --max-steps 3 --docs-per-query 8 --group-size 4 --model models/SmolLM2-135M-Instruct
    python rl.py --model runs/sft/final --out runs/rl --steps 200 --eval-every 25    # a real run
    python rl.py --resume --out runs/rl ...                  # continue exactly from runs/rl/last
    python rl.py --model models/SmolLM2-135M-Instruct --init-adapter weights/erank-135m-q4/adapter.safetensors \
        --match-length ...                                   # from a committed SFT adapter; length-matched negatives
    torchrun --nproc_per_node 2 rl.py ...                    # data parallel (gloo on CPU, nccl on CUDA)
    torchrun --nproc_per_node 8 rl.py --lora-rank 0 --lr 1e-6 --sharding fsdp ...  # the paper's sizes (docs/scaling.md)

The variant, written out (GRPO with token-level, "DAPO-style" normalisation):
    A_i      = (r_i - mean(r_group)) / (std(r_group) + eps)       group = the G rollouts of one prompt
    rho_ij   = exp(logp_ij - logp_old_ij)                         logp_old: the rollout policy
    k3_ij    = exp(ref_ij - logp_ij) - (ref_ij - logp_ij) - 1     ref: the frozen SFT model
    loss     = -1/T * sum_{i, j} [ min(rho_ij A_i, clip(rho_ij, 1-eps, 1+eps) A_i) - beta k3_ij ]
where j runs over the tokens of completion i, the sum over every completion token of the
mini-batch (end token included), and T is their number across all processes (t, below, is
always r_RR's reference score). Groups whose G rewards are all equal carry no signal and are
skipped (counted as "zero-var"). The loss hovers near zero by construction (advantages have mean
zero and rho starts at 1): the reward and dev nDCG@10 are the signals to watch, not the loss.

Output directory (--out), the same layout as sft.py:
    log.jsonl              one JSON object per step (reward, cases, KL, clip fraction, dev nDCG@10)
    ref_scores.<rank>.json the reference model's expected score t per (query, document), cached
    step-00050/, last/     HF-layout checkpoints (LoRA merged) + args.json + adapter.safetensors +
                           train_state.pt (trainable weights, optimizer, step); --sharding fsdp:
                           sharded/ instead, every process's shards of the weights and AdamW state
                           (tools/consolidate.py makes an HF-layout model of it)
    final/                 the finished model

Where this deviates from the paper (ERank, arXiv 2509.00520):
  - policy: LoRA (rank 16, alpha 32) by default, lr 1e-5; the paper trains all parameters at
    lr 1e-6 (`--lora-rank 0 --lr 1e-6` does that; `--sharding fsdp` at the paper's 4B-32B sizes,
    the frozen reference sharded too). With LoRA the reference is the same network with the
    adapters switched off (no second copy in memory).
  - fast mode by default: the prompt ends with "<answer>" and a rollout is "7</answer><|im_end|>";
    the paper's rollouts reason first (`--thinking` does that, max --max-new-tokens tokens).
  - sizes: N, G, the batch and the mini-batch are flags; the paper's N = 20, G = 5, 1,280 prompts
    per batch in mini-batches of 320 do not fit a 2-core CPU.
  - r_RR's constants are not published; ours are in RRWeights below, with the reasoning.
  - t (reference score, case 3 of r_RR) is the SFT model's expected score sum_s s P(s) in fast
    mode, computed once per (query, document) and cached; the paper only says "reference score".
  - where the paper is silent: a negative tied with the worst-ranked positive rollout gets the
    mean of r_RR's two negative cases (--rr-ties half); unparseable rollouts are left out of the pooled
    ranking; with one update per rollout batch (the default) logp_old is the policy's own logp,
    detached, which is exact (rho = 1) and saves a forward pass.
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

import files
import model as M
import model_fast
from eval import dev_ndcg, ndcg_at_k
from rerank import HelpFormatter, Reranker, parse_answer
from sharding import check_sharding, gathered, is_sharded
from training import (LoRALinear, Run, adapter_sha256, add_checkpoint_args, add_dev_args, add_model_args, autocast_for,
                      cosine_lr, finish_run, load_start, parse_resuming, prepare_training, resolved_args, run_cli,
                      save_due, save_step, seed_all, set_lr, start_or_resume, start_processes, train_state)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="ERank stage 2: GRPO with the listwise r_RR reward.",
                                 formatter_class=HelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="data/beir/manpages,data/beir/foldoc",
                   help="comma-separated BEIR directories whose --split qrels give the training queries")
    g.add_argument("--split", default="train", help="qrels split to train on (never pyfaq or debian-*, never test)")
    g.add_argument("--docs-per-query", type=int, default=20, help="N: candidate documents per query (paper: 20)")
    g.add_argument("--positives", type=int, default=1, help="at most this many positives among the N (paper: 1)")
    g.add_argument("--match-length", action="store_true", help="cut each negative's text to its leading sentences, "
                   "nearest in words to the first positive's text (as data/make_sft.py --match-length): without "
                   "it, a short document is likely the answer, and the policy can learn that instead of reading")
    g.add_argument("--max-doc-tokens", type=int, default=192, help="documents are truncated to this many tokens")
    g.add_argument("--max-query-tokens", type=int, default=256, help="queries are truncated to this many tokens")
    g.add_argument("--bm25-cache", default=None, help="BM25 index cache directory (default: data/cache/bm25)")
    g = ap.add_argument_group("rollouts")
    g.add_argument("--queries-per-step", type=int, default=4, help="queries per step (all processes together)")
    g.add_argument("--group-size", type=int, default=5, help="G: sampled completions per (query, document) (paper: 5)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (also used in every log-prob)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--thinking", action="store_true", help="rollouts reason before answering (slow on CPU)")
    g.add_argument("--max-new-tokens", type=int, default=0,
                   help="completion length limit (0: just enough for '10</answer>' + end token; 1024 with --thinking)")
    g.add_argument("--rollout-rows", type=int, default=128, help="rows per generate call (memory bound)")
    g = ap.add_argument_group("reward")
    g.add_argument("--reward", default="rr", choices=["rr", "ndcg", "se"],
                   help="rr: ERank's r_RR; ndcg: leave-one-out nDCG of the pooled ranking; se: -(s - label)^2/100")
    g.add_argument("--rr-pos-base", type=float, default=1.0, help="r_RR case 1: base + scale / rank (positive)")
    g.add_argument("--rr-pos-scale", type=float, default=1.0, help="r_RR case 1: weight of 1/rank")
    g.add_argument("--rr-neg-above", type=float, default=-1.0, help="r_RR case 2: negative not below every positive")
    g.add_argument("--rr-neg-below", type=float, default=1.0, help="r_RR case 3: base - scale * (s - t)^2 / 100")
    g.add_argument("--rr-neg-scale", type=float, default=1.0, help="r_RR case 3: weight of (s - t)^2 / 100")
    g.add_argument("--rr-ties", default="half", choices=["half", "above"],
                   help="r_RR, a negative tied with the worst positive rollout: half = the mean of the two negative "
                   "cases (the shipped run); above = counted as above it (comparison: no signal on 0/10 answers)")
    g.add_argument("--unparsed-reward", type=float, default=-2.0, help="reward of a completion with no score (all rewards)")
    g.add_argument("--ndcg-k", type=int, default=0, help="cutoff of the pooled nDCG (0: 10 * G, i.e. ~10 documents)")
    add_model_args(ap, "runs/sft/final", "starting checkpoint = the frozen reference (an SFT output)")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (paper: 1e-6, full parameters)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup", type=float, default=0.0, help="warmup, as a fraction of all steps")
    g.add_argument("--steps", type=int, default=100, help="schedule length in steps")
    g.add_argument("--max-steps", type=int, default=0, help="stop after this step (and save last/); --resume continues")
    g.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip range of the importance ratio (paper: 0.2)")
    g.add_argument("--beta", type=float, default=0.001, help="weight of the k3 KL to the reference (paper: 0.001)")
    g.add_argument("--adv-eps", type=float, default=1e-6, help="eps in (r - mean) / (std + eps)")
    g.add_argument("--mini-batches", type=int, default=1, help="optimizer steps per rollout batch (paper: 1280/320 = 4)")
    g.add_argument("--ppo-epochs", type=int, default=1, help="passes over each rollout batch")
    g.add_argument("--micro-batch-size", type=int, default=8, help="rows per forward/backward on one process")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
    g.add_argument("--seed", type=int, default=0, help="seeds LoRA init, the query order, mining and every rollout")
    g = ap.add_argument_group("evaluation and logging")
    add_dev_args(g)
    g.add_argument("--eval-every", type=int, default=0, help="dev nDCG@10 before training, every N steps and at the end (0 = never)")
    g.add_argument("--sample-every", type=int, default=10, help="print a prompt -> completion -> score -> reward every N steps")
    add_checkpoint_args(ap, out="runs/rl", save_every=50)
    return parse_resuming(ap, argv)


# ----------------------------------------------------------------------------- rewards (pure functions)


def competition_ranks(scores: list) -> list:
    """1-based rank of each parsed score among all parsed scores, descending; equal scores share
    the smallest rank ("competition" ranking: 10, 8, 8, 5 -> 1, 2, 2, 4). None (unparseable)
    rollouts are left out of the ranking and get rank None."""
    parsed = [s for s in scores if s is not None]
    return [None if s is None else 1 + sum(o > s for o in parsed) for s in scores]


@dataclass
class RRWeights:
    """The constants of r_RR (the paper does not publish them). Rewards only compare within the
    G rollouts of one document (advantages are group-relative), so what matters is each case's
    order and spread among the cases one document can hit:
      positive:  1 + 1/phi in (1, 2]. Higher score -> smaller pooled rank phi -> more reward; the
                 base keeps any formatted positive above the unparsed penalty.
      negative not below every positive: -1. Below every case-3 reward (>= 0), so a rollout that
                 puts a negative at or above some positive is always worse than one that does not.
      negative below every positive: 1 - (s - t)^2 / 100 in [0, 1]; (s - t)^2 <= 100 on 0..10,
                 so this stays >= 0 and is largest when the score matches the reference's t.
      unparseable: -2, the worst outcome of all.
    ties: a negative tied with the worst-ranked positive rollout is not ordered correctly, but
      not wrongly either. "above" counts it as ranked above (-1); "half" gives it the mean of the
      two negative cases (as AUC counts a tie half). With the 0/10 answers of a binary-trained
      model, "above" penalises every negative of a query as soon as one positive rollout samples 0
      (its zero and its ten both get -1: no signal in that document's group); "half" keeps the
      zero better than the ten."""
    pos_base: float = 1.0
    pos_scale: float = 1.0
    neg_above: float = -1.0
    neg_below: float = 1.0
    neg_scale: float = 1.0
    unparsed: float = -2.0
    ties: str = "half"


def reward_rr(scores: list, positive: list, ref: list, w: RRWeights = RRWeights()):
    """ERank's r_RR for the N*G rollouts of one query -> (rewards, cases).

    scores: the parsed integer (None = unparseable) of each rollout; positive: whether its
    document is relevant; ref: t, the reference model's score for its document.
    phi = competition rank among all parsed rollouts of the query (unparseable ones excluded).
    A negative is "ranked above (any) positive" when phi <= the rank of the worst-ranked parsed
    positive rollout: strictly above it, or tied with it (w.ties "above": a tie is not a correct
    ordering; the two cases then split the negatives exactly into "not below" and "below all
    positives"; w.ties "half": a tie gets the mean of the two, case "neg_tied").
    With no parsed positive rollout at all, every parsed negative counts as below all positives."""
    ranks = competition_ranks(scores)
    pos_ranks = [r for r, p in zip(ranks, positive) if p and r is not None]
    worst = max(pos_ranks) if pos_ranks else None
    rewards, cases = [], []
    for s, r, p, t in zip(scores, ranks, positive, ref):
        if s is None:
            rewards.append(w.unparsed), cases.append("unparsed")
        elif p:
            rewards.append(w.pos_base + w.pos_scale / r), cases.append("pos")
        elif worst is not None and (r < worst or (r == worst and w.ties == "above")):
            rewards.append(w.neg_above), cases.append("neg_above")
        elif worst is not None and r == worst:
            below = w.neg_below - w.neg_scale * (s - t) ** 2 / 100
            rewards.append((w.neg_above + below) / 2), cases.append("neg_tied")
        else:
            rewards.append(w.neg_below - w.neg_scale * (s - t) ** 2 / 100), cases.append("neg_below")
    return rewards, cases


def reward_ndcg(scores: list, grades: list, k: int, unparsed: float = -2.0):
    """Listwise nDCG reward -> (rewards, cases): each rollout's leave-one-out contribution to the
    nDCG@k of the pooled ranking of the query's parsed rollouts,
        r_i = nDCG(pool) - nDCG(pool without i)      (i also leaves the ideal ranking),
    with eval.ndcg_at_k (the metric used for evaluation; gain = the document's qrels grade).
    Equal scores are ordered with the lower grade first (a tie does not count as a correct
    ordering, as in reward_rr). So a negative ranked above relevant rollouts gets < 0 and one
    below all of them 0; a relevant rollout gets 0 when nothing irrelevant is above it and < 0
    the lower it sits. Unparseable rollouts are left out of the pool and get `unparsed`."""
    items = [i for i, s in enumerate(scores) if s is not None]
    order = [str(i) for i in sorted(items, key=lambda i: (-scores[i], grades[i], i))]
    qrels = {str(i): grades[i] for i in items if grades[i] > 0}
    full = ndcg_at_k(order, qrels, k)
    rewards, cases = [], []
    for i, s in enumerate(scores):
        if s is None:
            rewards.append(unparsed), cases.append("unparsed")
            continue
        me = str(i)
        loo = ndcg_at_k([d for d in order if d != me], {d: g for d, g in qrels.items() if d != me}, k)
        rewards.append(full - loo), cases.append("pos" if grades[i] > 0 else "neg")
    return rewards, cases


def reward_se(scores: list, grades: list, unparsed: float = -2.0):
    """Pointwise squared-error ablation -> (rewards, cases): -(s - label)^2 / 100, label 10 for a
    relevant document (any grade >= 1), 0 otherwise; unparseable -> `unparsed`."""
    rewards, cases = [], []
    for s, gr in zip(scores, grades):
        if s is None:
            rewards.append(unparsed), cases.append("unparsed")
        else:
            rewards.append(-(s - (10 if gr > 0 else 0)) ** 2 / 100), cases.append("pos" if gr > 0 else "neg")
    return rewards, cases


@dataclass(frozen=True)
class Reward:
    """The reward a step uses (--reward) and its constants."""
    kind: str = "rr"  # rr: r_RR; ndcg: leave-one-out nDCG of the pooled ranking; se: squared error
    rr: RRWeights = field(default_factory=RRWeights)
    ndcg_k: int = 50  # cutoff of the pooled nDCG, in rollouts: 10 * G is about 10 documents
    unparsed: float = -2.0  # a completion with no score, whatever the reward

    @classmethod
    def from_args(cls, args) -> "Reward":
        rr = RRWeights(args.rr_pos_base, args.rr_pos_scale, args.rr_neg_above, args.rr_neg_below,
                       args.rr_neg_scale, args.unparsed_reward, args.rr_ties)
        return cls(args.reward, rr, args.ndcg_k or 10 * args.group_size, args.unparsed_reward)


def query_rewards(reward: Reward, scores, grades, ref):
    """The chosen reward for the N*G rollouts of one query (flat lists) -> (rewards, cases)."""
    if reward.kind == "rr":
        return reward_rr(scores, [g > 0 for g in grades], ref, reward.rr)
    if reward.kind == "ndcg":
        return reward_ndcg(scores, grades, reward.ndcg_k, reward.unparsed)
    return reward_se(scores, grades, reward.unparsed)


# ----------------------------------------------------------------------------- advantages and loss


def group_advantages(rewards, eps: float = 1e-6):
    """rewards (P, G) -> (advantages (P, G), keep (P,) bool). (r - mean) / (std + eps) within each
    row (population std); rows whose rewards are all equal (std < 1e-8) get keep False: they carry
    no signal and are skipped."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    mean, std = r.mean(1, keepdim=True), r.std(1, keepdim=True, unbiased=False)  # (P, 1)
    keep = std[:, 0] > 1e-8
    adv = torch.where(keep[:, None], (r - mean) / (std + eps), torch.zeros_like(r))
    return adv.float(), keep


def k3(logp, ref):
    """The low-variance KL(policy || ref) estimator per token: exp(ref - logp) - (ref - logp) - 1
    (>= 0, exactly 0 where the two log-probs are equal)."""
    d = ref - logp
    return torch.exp(d) - d - 1


def grpo_token_sums(logp, old, ref, adv, mask, clip_eps: float, beta: float):
    """Sums over the masked tokens of (B, N) tensors (adv: (B,), one per row) -> dict with
    'objective' = sum[min(rho A, clip(rho) A) - beta k3] (differentiable; the loss is
    -objective / T for the global token count T), 'kl' = sum k3, 'clipped' = tokens whose ratio
    was clipped, 'tokens'. ref None = no KL term (beta 0)."""
    m = mask.float()
    a = adv[:, None]  # (B, 1)
    rho = torch.exp(logp - old)
    surr = torch.minimum(rho * a, rho.clamp(1 - clip_eps, 1 + clip_eps) * a)  # (B, N)
    kl = k3(logp, ref) if ref is not None else torch.zeros_like(logp)
    objective = ((surr - beta * kl) * m).sum()
    clipped = (((rho > 1 + clip_eps) & (a > 0)) | ((rho < 1 - clip_eps) & (a < 0))) & mask
    return {"objective": objective, "kl": (kl.detach() * m).sum(), "clipped": clipped.sum().float(),
            "tokens": m.sum()}


@contextlib.contextmanager
def adapters_off(model):
    """Run the LoRA model as its base (= the frozen reference): every adapter's scale set to 0."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    scales = [m.scale for m in layers]
    for m in layers:
        m.scale = 0.0
    try:
        yield model
    finally:
        for m, s in zip(layers, scales):
            m.scale = s


# ----------------------------------------------------------------------------- data


@dataclass
class Query:
    key: str  # "<dataset>/<qid>": unique across datasets, used in seeds and caches
    qid: str
    text: str
    docs: list  # [{"id", "title", "text", "grade"}], positives first


class TrainData:
    """The training queries of every --data directory and, per query on demand, its N candidates
    (mining is per query and seeded by query, so it does not depend on which other queries or
    which process ask)."""

    def __init__(self, dirs: list, split: str, n_docs: int, positives: int, seed: int, bm25_cache=None,
                 match_length=False):
        from data.beir import load_corpus, load_qrels, load_queries
        from data.bm25 import BM25, DEFAULT_CACHE

        self.n_docs, self.positives, self.seed, self.match_length = n_docs, positives, seed, match_length
        self.sets, self.keys = {}, []
        for d in dirs:
            name = os.path.basename(os.path.normpath(d))
            if name == "pyfaq" or name.startswith("debian-") or split == "test":
                raise SystemExit(f"--data {d} --split {split}: pyfaq, debian-* and test splits are held out; "
                                 "never train on them")
            queries, qrels = load_queries(d), load_qrels(d, split)
            qids = sorted(q for q in qrels if q in queries and any(g >= 1 for g in qrels[q].values()))
            if not qids:
                raise SystemExit(f"{d}/qrels/{split}.tsv: no query with a relevant document")
            self.sets[name] = {"queries": queries, "qrels": qrels, "corpus": load_corpus(d),
                               "bm25": BM25.from_dir(d, cache_dir=bm25_cache or DEFAULT_CACHE)}
            self.keys += [f"{name}/{q}" for q in qids]

    def step_keys(self, step: int, count: int) -> list:
        """The queries of a step: positions [step * count, (step + 1) * count) of a sequence of
        seeded per-epoch shuffles of all training queries."""
        out = []
        for pos in range(step * count, (step + 1) * count):
            epoch, i = divmod(pos, len(self.keys))
            perm = list(self.keys)
            random.Random(f"{self.seed}:epoch{epoch}").shuffle(perm)
            out.append(perm[i])
        return out

    def process_queries(self, step: int, count: int, rank: int, world: int) -> list:
        """This process's queries of a step, as (index within the step, Query): query j of the step
        goes to process j % world."""
        keys = self.step_keys(step, count)
        return [(j, self.query(keys[j])) for j in range(rank, count, world)]

    def query(self, key: str) -> Query:
        from data.bm25 import mine_candidates

        name, qid = key.split("/", 1)
        s = self.sets[name]
        n_neg = max(0, self.n_docs - self.positives)
        hard = (n_neg + 1) // 2  # the paper's 10 / 5 / 4 split of 19 negatives, scaled to n_neg
        medium = (n_neg - hard + 1) // 2
        want = {"hard": hard, "medium": medium, "easy": n_neg - hard - medium}
        # mine n_neg per bucket, take the split above, and fill a short bucket from the others
        (c,) = mine_candidates(s["bm25"], {qid: s["queries"][qid]}, {qid: s["qrels"][qid]}, n_hard=n_neg,
                               n_medium=n_neg, n_easy=n_neg, seed=self.seed, progress=False)
        by_bucket = {b: [d for d, bb in c["neg"] if bb == b] for b in want}
        neg = [d for b in want for d in by_bucket[b][:want[b]]]
        neg += [d for b in want for d in by_bucket[b][want[b]:]][:n_neg - len(neg)]
        picked = c["pos"][:self.positives] + [(d, 0) for d in neg]
        docs = [{"id": d, "title": s["corpus"][d].get("title", ""), "text": s["corpus"][d]["text"], "grade": g}
                for d, g in picked]
        if self.match_length and self.positives and c["pos"]:  # as make_sft.py --match-length (titles stay whole)
            from data.make_sft import leading_sentences

            words = len(docs[0]["text"].split())
            for doc in docs[len(c["pos"][:self.positives]):]:
                doc["text"] = leading_sentences(doc["text"], words)
        return Query(key, qid, s["queries"][qid], docs)


class RefScores:
    """t per (query, document): the frozen reference's expected score in fast mode, computed once
    and cached in <out>/ref_scores.<rank>.json (every rank's file is read at start)."""

    def __init__(self, out: str, rank: int, meta: dict):
        self.path, self.meta, self.scores, self.dirty = os.path.join(out, f"ref_scores.{rank}.json"), meta, {}, False
        if os.path.isdir(out):
            for f in sorted(os.listdir(out)):
                if f.startswith("ref_scores.") and f.endswith(".json"):
                    d = json.load(open(os.path.join(out, f)))
                    if d.get("meta") == meta:  # computed with another model or truncation: ignore
                        self.scores.update(d["scores"])

    def fill(self, reranker: Reranker, q: Query, prompts: list):
        """Compute the missing t of q's documents; prompts: their fast-mode prompt ids."""
        todo = [i for i, d in enumerate(q.docs) if f"{q.key}\t{d['id']}" not in self.scores]
        if todo:
            for i, r in zip(todo, reranker.score_prompts([prompts[i] for i in todo])):
                self.scores[f"{q.key}\t{q.docs[i]['id']}"] = r.expected
            self.dirty = True
        return [self.scores[f"{q.key}\t{d['id']}"] for d in q.docs]

    def save(self):
        if self.dirty:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            files.write_atomic(self.path, json.dumps({"meta": self.meta, "scores": self.scores}))
            self.dirty = False


@dataclass
class Reference:
    """The frozen reference (the starting model), in the two places GRPO uses it: r_RR's t and
    the log-probs of the KL term."""
    network: object  # () -> a context manager giving the reference network (LoRA: the policy, adapters off)
    scorer: Reranker  # the reference's expected score in fast mode: t
    saved_t: RefScores  # t per (query, document), computed once


# ----------------------------------------------------------------------------- settings of a step


@dataclass(frozen=True)
class Sampling:
    """How rollouts are sampled."""
    group_size: int  # G: completions per (query, document)
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    thinking: bool = False  # reason first; else the prompt ends with "<answer>" (fast mode)
    rows_per_call: int = 128  # rows per generate call (memory bound)
    seed: int = 0

    @classmethod
    def from_args(cls, args) -> "Sampling":
        return cls(args.group_size, args.max_new_tokens, args.temperature, args.top_p, args.thinking,
                   args.rollout_rows, args.seed)


@dataclass(frozen=True)
class Update:
    """How one rollout batch updates the policy."""
    queries_per_step: int  # the step's Q * N (query, document) slots are cut into mini-batches
    docs_per_query: int
    clip_eps: float = 0.2
    beta: float = 0.001
    temperature: float = 1.0  # the sampling temperature: every log-prob uses it
    mini_batches: int = 1
    ppo_epochs: int = 1
    micro_batch_size: int = 8
    grad_clip: float = 1.0
    seed: int = 0

    @classmethod
    def from_args(cls, args) -> "Update":
        return cls(args.queries_per_step, args.docs_per_query, args.clip_eps, args.beta, args.temperature,
                   args.mini_batches, args.ppo_epochs, args.micro_batch_size, args.grad_clip, args.seed)

    @property
    def on_policy(self) -> bool:
        """One update per rollout batch: the rollout policy is the policy being differentiated."""
        return self.mini_batches * self.ppo_epochs == 1


# ----------------------------------------------------------------------------- rollouts


@dataclass(frozen=True)
class Group:
    """The G rollouts of one (query, document) prompt; the later steps fill in the rest."""
    query: int  # index of the query within the step
    doc: int  # index of the document within the query
    grade: int
    prompt: list  # prompt token ids
    completions: list  # G lists of token ids (end token included when generated)
    texts: list  # G decoded completions
    scores: list  # G parsed scores (None = unparseable)
    rewards: list = None  # G rewards (reward_query)
    cases: list = None  # G reward cases ("pos", "neg_above", ...)
    advantages: torch.Tensor = None  # (G,) (with_advantages)
    old_logps: list = None  # G (len(completion),) log-probs of the rollout policy (logprobs_before_update)
    ref_logps: list = None  # the same under the reference


def rollout_seed(seed: int, step: int, key: str, doc_id: str, g: int) -> int:
    """The sampling seed of one rollout: a hash of (seed, step, query, document, g), so rollouts
    do not depend on batching, on the process count, or on anything sampled before them."""
    h = hashlib.sha256(f"{seed}|{step}|{key}|{doc_id}|{g}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@torch.no_grad()
def rollout_query(policy, tok, q: Query, j: int, prompts: list, sampling: Sampling, step: int, stop_ids) -> list:
    """G sampled completions for each of q's documents -> one Group per document. Generation
    works on whole documents (G rows sharing one prompt, prefilled once by model.generate)."""
    G, per_call = sampling.group_size, max(1, sampling.rows_per_call // sampling.group_size)
    groups = []
    for lo in range(0, len(q.docs), per_call):
        docs = range(lo, min(len(q.docs), lo + per_call))
        rows = [prompts[d] for d in docs for _ in range(G)]
        seeds = [rollout_seed(sampling.seed, step, q.key, q.docs[d]["id"], g) for d in docs for g in range(G)]
        out = M.generate(policy, rows, sampling.max_new_tokens, stop_ids=stop_ids, temperature=sampling.temperature,
                         top_p=sampling.top_p, seeds=seeds, pad_id=tok.pad_id)
        for n, d in enumerate(docs):
            comps, texts, scores = [], [], []
            for i in range(n * G, (n + 1) * G):
                ids = out.tokens[i][out.mask[i]].tolist()
                text = tok.decode(ids, skip_special_tokens=True)
                comps.append(ids), texts.append(text)
                # fast-mode prompts end with "<answer>": the completion continues it
                scores.append(parse_answer(text if sampling.thinking else "<answer>" + text))
            groups.append(Group(j, d, q.docs[d]["grade"], prompts[d], comps, texts, scores))
    return groups


# ----------------------------------------------------------------------------- one step, in named parts


def reward_query(reward: Reward, groups: list, t: list) -> list:
    """Rewards for one query's groups: all N*G rollouts are ranked together (query_rewards) and each
    group gets its G rewards and cases. t: the reference's score of each document (r_RR only)."""
    scores = [s for g in groups for s in g.scores]
    grades = [g.grade for g in groups for _ in g.scores]
    rewards, cases = query_rewards(reward, scores, grades, [t[g.doc] for g in groups for _ in g.scores])
    out, lo = [], 0
    for g in groups:
        hi = lo + len(g.scores)
        out.append(replace(g, rewards=rewards[lo:hi], cases=cases[lo:hi]))
        lo = hi
    return out


def rollout(policy, queries: list, step: int, sampling: Sampling, reward: Reward, prompter: Reranker,
            reference: Reference, autocast) -> list:
    """Steps 1 and 2: G sampled completions for every (query, document) of this process's queries
    (pairs (j, Query), j the query's index in the step), rewarded within each query's pooled
    ranking. prompter builds the policy's prompts (fast or thinking mode)."""
    prompts = [prompter.prompts_for(q.text, q.docs, None) for _, q in queries]
    # all sampling first, then all of t: a sharded policy, then reference, is gathered once for its
    # part (sharding.gathered), not once per token. Both run in the training dtype (bf16: ~2x faster on CPU)
    with gathered(policy), autocast():
        sampled = [rollout_query(policy, prompter.tok, q, j, p, sampling, step, prompter.stop_ids)
                   for (j, q), p in zip(queries, prompts)]
    ref_t = [[0.0] * len(q.docs) for _, q in queries]
    if reward.kind == "rr":
        with reference.network() as net, gathered(net), autocast():
            for n, (_, q) in enumerate(queries):
                fast = reference.scorer.prompts_for(q.text, q.docs, None) if sampling.thinking else prompts[n]
                ref_t[n] = reference.saved_t.fill(reference.scorer, q, fast)
    reference.saved_t.save()
    return [g for groups, t in zip(sampled, ref_t) for g in reward_query(reward, groups, t)]


def with_advantages(groups: list, eps: float) -> list:
    """Step 3: each group's advantages (group_advantages); only the groups whose G rewards differ
    are kept: the others carry no signal."""
    if not groups:
        return []
    adv, keep = group_advantages([g.rewards for g in groups], eps)
    return [replace(g, advantages=adv[n]) for n, g in enumerate(groups) if keep[n]]


@torch.no_grad()
def logprobs_before_update(policy, reference: Reference, groups: list, cfg: Update, autocast) -> list:
    """Step 4: log-probs of the rollout policy and of the frozen reference, before any update, into
    each group (old_logps, ref_logps), where needed. On policy (one update per rollout batch) the
    rollout policy IS the policy being differentiated: logp_old is then logp detached (rho = 1
    exactly) and needs no pass here. A sharded model is gathered once for its pass (processes hold
    different numbers of groups)."""

    def completion_logps(net):
        out, per_pass = [], max(1, cfg.micro_batch_size // len(groups[0].completions))  # groups a pass
        for lo in range(0, len(groups), per_pass):
            chunk = groups[lo:lo + per_pass]
            lp, _ = M.completion_logprobs(net, [g.prompt for g in chunk for _ in g.completions],
                                          [c for g in chunk for c in g.completions], cfg.temperature)
            rows = iter(lp)  # one row per (group, completion), in that order
            out += [[next(rows)[:len(c)] for c in g.completions] for g in chunk]
        return out

    with autocast():
        if not cfg.on_policy:
            with gathered(policy):
                groups = [replace(g, old_logps=lp) for g, lp in zip(groups, completion_logps(policy) if groups else [])]
        if cfg.beta > 0:
            with reference.network() as net, gathered(net):
                groups = [replace(g, ref_logps=lp) for g, lp in zip(groups, completion_logps(net) if groups else [])]
    return groups


def update_policy(policy, opt, groups: list, step: int, cfg: Update, procs, autocast) -> dict:
    """Step 5: the PPO-clipped updates of one rollout batch (--ppo-epochs passes, --mini-batches
    optimizer steps each). Mini-batches are fixed slices of a seeded permutation of the step's
    (query, document) slots, the same on every process; each process works on its own groups
    within a slice, and the loss is divided by the slice's global completion-token count.
    groups: those that carry signal, with their advantages and log-probs.
    -> this process's sums {"loss", "updates", "kl", "clipped", "tokens"}."""
    trainable = [p for group in opt.param_groups for p in group["params"]]
    device, sharded = procs.device, is_sharded(policy)  # the compute device (FSDP may offload to the CPU)
    at = {g.query * cfg.docs_per_query + g.doc: g for g in groups}  # slot -> its group
    sums = {"loss": 0.0, "updates": 0, "kl": 0.0, "clipped": 0.0, "tokens": 0.0}
    policy.train()
    for epoch in range(cfg.ppo_epochs):
        for slots in mini_batch_slots(step, epoch, cfg):
            rows = [(at[s], i) for s in slots if s in at for i in range(len(at[s].completions))]  # (group, rollout)
            n_tok = global_sum(sum(len(g.completions[i]) for g, i in rows), procs, device)
            if n_tok == 0:
                continue
            opt.zero_grad(set_to_none=True)
            objective = 0.0
            for mb in micro_batches(rows, cfg.micro_batch_size, procs if sharded else None, device):
                if not mb:  # sharded, and this process is out of rows
                    idle_pass(policy, autocast)
                    continue
                with autocast():
                    logp, mask = M.completion_logprobs(policy, [g.prompt for g, _ in mb], [g.completions[i] for g, i in mb],
                                                       cfg.temperature, shared_prefix=not sharded)
                C = logp.shape[1]
                padded = lambda ts: torch.stack([F.pad(x, (0, C - len(x))) for x in ts])  # (B, C)
                logp_old = logp.detach() if cfg.on_policy else padded([g.old_logps[i] for g, i in mb])
                logp_ref = padded([g.ref_logps[i] for g, i in mb]) if cfg.beta > 0 else None
                a = torch.stack([g.advantages[i] for g, i in mb]).to(logp.device)
                terms = grpo_token_sums(logp, logp_old, logp_ref, a, mask, cfg.clip_eps, cfg.beta)
                # T counts every process's tokens, so gradients must sum over processes; FSDP averages
                # them (as DDP would): scale by world
                (-terms["objective"] * (procs.world if sharded else 1) / n_tok).backward()
                objective += float(terms["objective"].detach())
                for k in ("kl", "clipped", "tokens"):
                    sums[k] += float(terms[k])
            if procs.ddp and not sharded:  # FSDP has reduced them in backward
                all_reduce_grads(trainable)
            for p in trainable:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            sums["loss"] += -objective / n_tok
            sums["updates"] += 1
    opt.zero_grad(set_to_none=True)
    return sums


def mini_batch_slots(step: int, epoch: int, cfg: Update) -> list:
    """The step's (query, document) slots, query * N + document, in a seeded permutation cut into
    --mini-batches (each sorted): the same on every process."""
    n = cfg.queries_per_step * cfg.docs_per_query
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1_009 + epoch))
    size = math.ceil(n / cfg.mini_batches)
    return [sorted(perm[m * size:(m + 1) * size].tolist()) for m in range(cfg.mini_batches)]


CASES = ("pos", "neg_above", "neg_tied", "neg_below", "neg", "unparsed")  # every reward's cases, in log order


def step_row(step: int, groups: list, kept: int, upd: dict, lr: float, seconds: float, procs, device) -> dict:
    """Step 6: the step's log row, summed over processes (one all_reduce of named sums)."""
    rewards = [r for g in groups for r in g.rewards]
    sums = {"reward": sum(rewards), "reward_sq": sum(r * r for r in rewards), "rollouts": len(rewards),
            "groups": len(groups), "zero_var": len(groups) - kept,
            "completion_tokens": sum(len(c) for g in groups for c in g.completions),
            **{k: upd[k] for k in ("loss", "kl", "clipped", "tokens")},
            **{"case_" + c: sum(x == c for g in groups for x in g.cases) for c in CASES}}
    if procs.ddp:
        keys = sorted(sums)
        packed = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(packed)
        sums = dict(zip(keys, packed.tolist()))
    n = max(1.0, sums["rollouts"])
    mean = sums["reward"] / n
    return {"step": step, "loss": sums["loss"] / max(1, upd["updates"]), "reward": mean,
            "reward_std": math.sqrt(max(0.0, sums["reward_sq"] / n - mean ** 2)),
            "cases": {c: int(sums["case_" + c]) for c in CASES if sums["case_" + c]},
            "unparsed": int(sums["case_unparsed"]), "groups": int(sums["groups"]), "zero_var": int(sums["zero_var"]),
            "kl": sums["kl"] / max(1.0, sums["tokens"]), "clip_frac": sums["clipped"] / max(1.0, sums["tokens"]),
            "resp_len": sums["completion_tokens"] / n, "lr": lr, "rollouts_s": n / seconds, "seconds": seconds}


def step_line(row: dict, total: int) -> str:
    """The greppable log line of a step."""
    counts = " ".join(f"{c} {v}" for c, v in row["cases"].items())
    dev = (f" | dev nDCG@10 {row['dev_ndcg10']:.4f} (expected score {row['dev_ndcg10_expected']:.4f})"
           if "dev_ndcg10" in row else "")
    return (f"step {row['step']:05d}/{total:05d} | loss {row['loss']:.4f} | reward {row['reward']:.3f}±"
            f"{row['reward_std']:.3f} | {counts} | zero-var {row['zero_var']}/{row['groups']} | kl {row['kl']:.2e} | "
            f"clip {row['clip_frac']:.3f} | len {row['resp_len']:.1f} | lr {row['lr']:.1e} | "
            f"{row['rollouts_s']:.1f} rollouts/s | {row['seconds']:.1f}s{dev}")


# -- processes: sums over all of them, and the lock step that sharding needs


def global_sum(x: float, procs, device) -> float:
    """x summed over processes (a float64 tensor on the device: NCCL reduces CUDA tensors only)."""
    total = torch.tensor([float(x)], dtype=torch.float64, device=device)
    if procs.ddp:
        dist.all_reduce(total)
    return total.item()


def all_reduce_grads(params):
    """Sum gradients over processes in one flat buffer (ranks may hold different numbers of rows
    in a mini-batch, even none, so DDP's per-backward hooks do not fit)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    n = 0
    for p in params:
        p.grad = flat[n:n + p.numel()].view_as(p).clone()
        n += p.numel()


def micro_batches(rows: list, size: int, lockstep=None, device=None) -> list:
    """rows cut into micro-batches of `size`. lockstep (the processes of a sharded policy): under
    FSDP every forward and backward is a collective, so every process makes as many passes as the
    busiest one; the extra ones are empty (see idle_pass)."""
    passes = math.ceil(len(rows) / size)
    if lockstep is not None:
        most = torch.tensor(passes, device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        passes = int(most)
    return [rows[lo:lo + size] for lo in range(0, passes * size, size)]


def idle_pass(policy, autocast):
    """A forward and backward with a zero loss: a sharded process out of rows keeps the others'
    collectives company, in one forward call, as the real passes make them."""
    with autocast():
        logp, _ = M.completion_logprobs(policy, [[0]], [[0]], shared_prefix=False)
    (logp.sum() * 0).backward()


# ----------------------------------------------------------------------------- training


def main(argv=None):
    args = parse_args(argv)
    procs = start_processes(args.device)
    args.device, log = procs.device, procs.log
    if args.queries_per_step < procs.world:
        raise SystemExit(f"--queries-per-step {args.queries_per_step} is below the process count {procs.world}")
    sharded = check_sharding(args, procs)

    # fp32 weights, LoRA and optimizer state everywhere; matrix products under autocast in the
    # chosen dtype (bf16 on CUDA by default; on CPU when asked)
    device, dtype = M.pick_device(args.device, args.dtype, verbose=procs.master)
    autocast = autocast_for(device, dtype)
    if not os.path.isdir(args.model):
        raise SystemExit(f"--model {args.model}: no such checkpoint directory (train one with sft.py, "
                         "or pass models/SmolLM2-135M-Instruct to try the pipeline)")
    adapter_sum = adapter_sha256(args.init_adapter)  # a file re-exported in place is another starting point
    seed_all(args.seed)

    # load: the policy (LoRA on the starting checkpoint) and the frozen reference
    policy, tok = load_start(args, procs, device, dtype, sharded)
    trainable = prepare_training(policy, args, procs)
    if args.lora_rank > 0:  # the reference is the same base weights with the adapters off
        ref_model, network = policy, lambda: adapters_off(policy)
    else:
        ref_model, _ = load_start(args, procs, device, dtype, sharded)
        model_fast.enable_fast_paths(ref_model)
        ref_model.requires_grad_(False)
        network = lambda: contextlib.nullcontext(ref_model)
    limits = {"max_doc_tokens": args.max_doc_tokens, "max_query_tokens": args.max_query_tokens, "verbose": False}
    prompter = Reranker((policy, tok), thinking=args.thinking, **limits)  # builds the rollout prompts
    # fast mode: "10</answer>" and the end token
    args.max_new_tokens = args.max_new_tokens or (1024 if args.thinking else len(tok.encode("10</answer>")) + 1)
    resolved = resolved_args(args, procs, device, dtype, init_adapter_sha256=adapter_sum)
    sampling, reward, update = Sampling.from_args(args), Reward.from_args(args), Update.from_args(args)

    # data, and t of r_RR: the reference's expected score in fast mode, cached per (query, document)
    data = TrainData(args.data.split(","), args.split, args.docs_per_query, args.positives, args.seed, args.bm25_cache,
                     args.match_length)
    total, warmup = args.steps, int(args.warmup * args.steps)
    log(f"data {args.data} ({args.split}): {len(data.keys)} queries; {args.queries_per_step} per step x "
        f"{args.docs_per_query} documents x {args.group_size} rollouts; schedule {total} steps, warmup {warmup}")
    saved_t = RefScores(args.out, procs.rank, {"model": os.path.abspath(args.model),
                                               "init_adapter": resolved["init_adapter_sha256"],
                                               "match_length": args.match_length, "max_doc_tokens": args.max_doc_tokens,
                                               "max_query_tokens": args.max_query_tokens,
                                               "autocast": resolved["autocast"]})
    reference = Reference(network, Reranker((ref_model, tok), score="expected", **limits), saved_t)

    # optimizer and (maybe) resume
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    run = Run(args.out, resolved, procs, args.keep_checkpoints)
    step, _ = start_or_resume(run, args.resume, total, policy, trainable, opt,
                              must_match=("lora_rank", "lora_layers", "init_adapter_sha256"),
                              warn_if_changed=("model", "init_adapter", "data", "match_length", "reward", "rr_ties",
                                               "lora_alpha", "group_size", "docs_per_query", "seed", "lr", "sharding",
                                               "device", "autocast"))

    dev_cache = {}

    def dev() -> dict:  # called by every process (a sharded policy is gathered); the first evaluates
        with gathered(policy), autocast():
            if not procs.master:
                return {}
            return dev_ndcg(policy, tok, args.dev_data, args.dev_split, args.dev_queries, args.dev_top_k,
                            args.max_doc_tokens, args.max_query_tokens, args.bm25_cache, dev_cache)

    if args.eval_every and step == 0:
        t0 = time.perf_counter()
        d = dev()
        if procs.master:
            log(f"eval  {0:05d}/{total:05d} | dev nDCG@10 {d['dev_ndcg10']:.4f} (expected score "
                f"{d['dev_ndcg10_expected']:.4f}) | {time.perf_counter() - t0:.1f}s", flush=True)
            run.write_log({"step": 0, "dev_ndcg10": d["dev_ndcg10"], "dev_ndcg10_expected": d["dev_ndcg10_expected"]})

    # loop: rollout -> rewards -> advantages -> log-probs -> update_policy -> log
    stop = min(total, args.max_steps) if args.max_steps else total
    while step < stop:
        t0 = time.perf_counter()
        policy.eval()
        queries = data.process_queries(step, args.queries_per_step, procs.rank, procs.world)
        groups = rollout(policy, queries, step, sampling, reward, prompter, reference, autocast)
        signal = with_advantages(groups, args.adv_eps)
        signal = logprobs_before_update(policy, reference, signal, update, autocast)
        lr = set_lr(opt, cosine_lr(step, total, warmup, args.lr))
        upd = update_policy(policy, opt, signal, step, update, procs, autocast)
        step += 1
        row = step_row(step, groups, len(signal), upd, lr, time.perf_counter() - t0, procs, device)
        if procs.master and args.sample_every and step % args.sample_every == 0 and groups:
            g = groups[0]
            tail = tok.decode(g.prompt)[-60:].replace("\n", "\\n")
            log(f"sample | ...{tail} -> {g.texts[0]!r} -> score {g.scores[0]} (grade {g.grade}) -> reward {g.rewards[0]:.3f}")
        if args.eval_every and (step % args.eval_every == 0 or step == total):
            row.update(dev())
        log(step_line(row, total), flush=True)
        run.write_log(row)
        if save_due(args, step, stop, total):
            save_step(run, step, policy, tok, train_state(run, step, total, policy, trainable, opt))
    finish_run(run, step, total, policy, tok)
    return policy


if __name__ == "__main__":
    run_cli(main)
