"""ERank inference: score each (query, document) pair with an integer 0-10 and sort.

    python rerank.py query.json                       # built-in reranker, fast mode
    python rerank.py query.json --thinking            # generate <think>...</think><answer>s</answer>
    python rerank.py q.jsonl --model Alibaba-NLP/ERank-4B --output ranked.json --trec run.txt
    python rerank.py --run bm25.trec --beir data/beir/pyfaq --top-k 100 --trec reranked.trec
    cat queries.jsonl | python rerank.py - --quiet --output ranked.json     # - reads standard input

Input: a JSON object {"query", "instruction"?, "documents": [str | {"id", "text", "title"?,
"score"?}]}, a list of them, or JSONL of them; or a TREC run plus a BEIR directory. Queries are
scored in groups whose pairs share batches (Reranker.rerank_many); serve.py serves the same
scores over HTTP. From another program: `pip install -e /path/to/clone`, then
`from erank import Reranker` (erank/__init__.py).

How a score is made (ERank, arXiv 2509.00520: the paper's inference score, s x P(s)):
  - thinking mode: greedy generation of <think>...</think><answer>s</answer>; final = s * P(s),
    where P(s) is the product of the probabilities of the tokens that spell s. Qwen3 splits
    "10" into "1" and "0", so P(10) = P("1") * P("0" | "1") (the paper does not say; this is the
    probability of the generated answer, the same rule for every s).
  - fast mode (default): the prompt already ends with the empty think block and "<answer>", so
    one forward pass gives the next-token distribution. s is the answer greedy decoding would
    give (restricted to 0-10), P(s) the same product, final = s * P(s); equal to what greedy
    generation from that prompt reports. `--score expected` instead gives sum_s s * P'(s) over
    0..10, P' renormalised over the eleven answers (P'(1) excludes "1" followed by a digit),
    which divided by 10 is a calibrated 0-1 relevance.
  - an output with no parseable score gets -1, below every parsed score, and is counted.
  - an empty or whitespace-only document (text and title) is not scored: it is ranked last, after
    every scored document, and a warning names it.
  - ties (frequent with integer scores; scores equal to 6 decimals count as tied) are broken by
    the expected score (every answer 0 scores 0, but an unsure 0 has a higher expected score than
    a sure one), then by input position (the first-stage rank), so rankings are deterministic;
    TREC files get strictly decreasing scores (see write_trec).
  - optional fusion with first-stage scores: w * z(first) + (1 - w) * z(rerank), z-normalised
    per query over the scored candidates; the paper uses w = 0.2 (`--fusion 0.2`).
"""
import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch
from tqdm import tqdm

import files
import model as M
import model_fast

PROMPT = """Given a query and a document, please give a relevance score of 0~10.
The goal or relevance definition is: {instruction}

Here is the query:
{query}

Here is the document:
{doc}

After thinking, directly choose a relevance score from [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].
- 0 represents completely not related
- 10 means perfectly related.

Desired output format:
<think>put your thinking here</think><answer>Only allows an integer here</answer>

Your output:"""

# The paper's instruction per benchmark (its Table 7).
INSTRUCTIONS = {
    "beir": "Given a query, retrieval relevant passage.",
    "bright": "A document is relevant if it contains information that helps answer or address the "
              "query. A document is not relevant if it doesn't contain information that helps "
              "answer the query, even if it mentions similar topics.",
    "followir": "Retrieval the relevant passage for the given query. Be careful about the extra "
                "requirements about relevance in the query.",
}
DEFAULT_INSTRUCTION = INSTRUCTIONS["beir"]
DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype's choices (model.pick_device reads them)
UNPARSED = -1.0  # final score of an output with no extractable answer: below every real score
EMPTY = -2.0  # score of an empty document: not scored, ranked after every scored document
HUB_URL = os.environ.get("ERANK_HUB_URL", "https://huggingface.co")
CACHE = os.environ.get("ERANK_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "erank"))


class InputError(Exception):
    """Bad user input; the CLI prints the message (file, record, field) and exits with status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type for counts and budgets that must be at least 1 (--top-k 0 would score nothing)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def fusion_weight(text: str) -> float:
    """argparse type for --fusion: the first-stage weight w in [0, 1]."""
    try:
        w = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= w <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {w}")
    return w


# ----------------------------------------------------------------------------- prompt and parsing


def build_prompt(tok, query: str, doc: str, instruction: str | None = None, thinking=False) -> str:
    """The full chat text up to where the model writes. Fast mode ends with '<answer>'."""
    return "".join(prompt_parts(tok, query, doc, instruction, thinking))


def prompt_parts(tok, query: str, doc: str, instruction: str | None = None, thinking=False) -> list[str]:
    """build_prompt's text as Tokenizer.chat_parts cuts it (text between the chat markers), for
    Tokenizer.encode_parts: the query and the document are then encoded as plain text, so a
    "<|im_end|>" written inside them is ordinary characters and cannot end the turn."""
    user = PROMPT.format(instruction=instruction or DEFAULT_INSTRUCTION, query=query, doc=doc)
    parts = tok.chat_parts([{"role": "user", "content": user}], enable_thinking=thinking)
    if not thinking:
        parts[-1] += "<answer>"
    return parts


def completion_text(score: int, reasoning: str | None = None) -> str:
    """What the model is trained to write after build_prompt (without the end-of-turn token).
    No reasoning: the prompt (thinking off) already holds the empty think block and <answer>."""
    if reasoning is None:
        return f"{score}</answer>"
    return f"<think>{reasoning}</think><answer>{score}</answer>"


ANSWER = re.compile(r"<answer>\s*(\d+)\s*(?:</answer>|$)")


def parse_answer(text: str) -> int | None:
    """The integer of the last <answer>...</answer> (closing tag optional at the very end);
    None when absent or outside 0..10."""
    found = ANSWER.findall(text)
    if not found:
        return None
    s = int(found[-1])
    return s if 0 <= s <= 10 else None


def truncate_batch(tok, texts: list[str], max_tokens: int, keep="start") -> list[tuple[str, bool]]:
    """Each text cut to its first (keep="start") or last (keep="end") `max_tokens` tokens, decoded
    back to text, and whether it was cut. The one truncation of queries and documents, for inference
    here and for training (sft.py), so the model trains on the same tokens it is later given. One
    encode_batch call over the distinct texts: training records repeat their queries and documents.
    Documents keep their start (a passage's title and first sentences say what it is about). A
    query keeps its start by default too, as training cut it: with faqs-heldout's queries cut to
    8 tokens, keeping the end ranked no better (nDCG@10 +0.013 over 100 queries, 95 % interval
    -0.033..+0.060; docs/serving.md), so --query-keep end is there for queries known to end with
    their question, not the default."""
    if keep not in ("start", "end"):
        raise ValueError(f"keep: expected 'start' or 'end', got {keep!r}")
    distinct = list(dict.fromkeys(texts))
    cut = {}
    for text, ids in zip(distinct, tok.encode_batch(distinct, plain=True)):  # counted as the prompt encodes them
        if len(ids) <= max_tokens:
            cut[text] = (text, False)
        else:
            cut[text] = (tok.decode(ids[:max_tokens] if keep == "start" else ids[-max_tokens:]), True)
    return [cut[t] for t in texts]


def truncate(tok, text: str, max_tokens: int, keep="start") -> tuple[str, bool]:
    """truncate_batch for one text."""
    return truncate_batch(tok, [text], max_tokens, keep)[0]


def zscore(xs):
    xs = [float(x) for x in xs]
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))
    return [(x - mu) / sd if sd > 0 else 0.0 for x in xs]


# ----------------------------------------------------------------------------- final score and order
# Shared with eval.py, which keeps each pair's answer, P(answer) and expected score in its cache
# and makes the final score, the fusion and the order with these functions.


def final_score(rec: dict, score="answer") -> float:
    """A record's final score from its "answer", "prob" and "expected" (and "empty")."""
    if rec.get("empty"):
        return EMPTY
    if rec["answer"] is None:
        return UNPARSED
    return rec["expected"] if score == "expected" else rec["answer"] * rec["prob"]


def fuse(records: list[dict], first: list[float], weight: float):
    """In place: score = w * z(first) + (1 - w) * z(score), z-normalised over the scored records
    (empty documents stay below all of them); the reranker's own score moves to "rerank_score"."""
    scored = [(r, f) for r, f in zip(records, first) if not r.get("empty")]
    if not scored:
        return
    zf, zr = zscore([f for _, f in scored]), zscore([r["score"] for r, _ in scored])
    for (r, _), a, b in zip(scored, zf, zr):
        r["rerank_score"], r["score"] = r["score"], weight * a + (1 - weight) * b
    lowest = min(r["score"] for r, _ in scored)
    for r in records:  # fused scores can go below EMPTY: keep empty documents below every scored one
        if r.get("empty"):
            r["score"] = min(EMPTY, lowest - 1.0)


def sort_records(records: list[dict]) -> list[dict]:
    """Best first, ranks from 1. Scores equal to 6 decimals are ties (so float noise from batching
    cannot reorder them), broken by the expected score (every answer 0 scores 0 at s * P(s), but an
    unsure 0 has more mass on the higher answers than a sure one), then by input position, i.e. the
    first-stage rank; empty documents last. Thinking mode has no expected score: position alone."""
    def expected(r):
        e = r.get("expected")
        return 0.0 if e is None or math.isnan(e) else round(e, 6)

    records.sort(key=lambda r: (bool(r.get("empty")), -round(r["score"], 6), -expected(r), r["position"]))
    for rank, r in enumerate(records, 1):
        r["rank"] = rank
    return records


# ----------------------------------------------------------------------------- model resolution


ROOT = os.path.dirname(os.path.abspath(__file__))
TRAINED_ADAPTER = os.path.join(ROOT, "weights", "erank-135m", "adapter.safetensors")


def default_model() -> str:
    """The project's best built-in reranker: the base model plus the committed ERank-135M
    adapter (merged once into models/ERank-135M), or the base model alone when there is none."""
    import hashlib

    from data.convert_smollm2 import ensure_base_model

    base = ensure_base_model()
    if not os.path.exists(TRAINED_ADAPTER):
        return base
    out = os.path.join(ROOT, "models", "ERank-135M")
    digest = hashlib.sha256(open(TRAINED_ADAPTER, "rb").read()).hexdigest()
    stamp = os.path.join(out, "adapter.sha256")
    if not (os.path.exists(stamp) and json.load(open(stamp)) == digest):
        print(f"merging {os.path.relpath(TRAINED_ADAPTER, ROOT)} into the base model -> {out}", file=sys.stderr)
        model, tok = M.load(base, device="cpu", dtype=torch.float32)
        files.apply_adapter(model, TRAINED_ADAPTER)
        M.save(model, tok, out, extra={"adapter.sha256": digest})
    return out


def hub_download(repo_id: str, cache: str = CACHE, base_url: str = HUB_URL) -> str:
    """Fetch an HF-layout checkpoint `org/name` over HTTPS into the cache; resumable (.part files
    continue with an HTTP Range request). ERANK_HUB_URL overrides the server."""
    out = os.path.join(cache, "hub", repo_id.replace("/", "--"))
    os.makedirs(out, exist_ok=True)

    def fetch(name, required=True):
        dest = os.path.join(out, name)
        if os.path.exists(dest):
            return True
        url = f"{base_url.rstrip('/')}/{repo_id}/resolve/main/{name}"
        part = dest + ".part"
        have = os.path.getsize(part) if os.path.exists(part) else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            if e.code == 404 and not required:
                return False
            if e.code == 416:  # the .part is already whole
                os.replace(part, dest)
                return True
            raise InputError(f"{url}: HTTP {e.code} ({e.reason}); is {repo_id!r} a public model?") from None
        except (urllib.error.URLError, OSError) as e:
            raise InputError(f"cannot download {repo_id!r} from {base_url} ({e}); offline? Download the "
                             "checkpoint elsewhere and pass its directory to --model") from None
        if have and resp.status != 206:  # the server ignored Range: start over
            have = 0
        total = int(resp.headers.get("Content-Length", 0)) + have
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B",
                                                            unit_scale=True, desc=name) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
        os.replace(part, dest)
        return True

    try:
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            fetch(name)
        fetch("generation_config.json", required=False)
        if fetch("model.safetensors.index.json", required=False):
            index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
            for shard in sorted(set(index["weight_map"].values())):
                fetch(shard)
        else:
            fetch("model.safetensors")
    except BaseException:
        if not os.listdir(out):  # nothing arrived: leave no empty folder (files that did stay, to resume)
            os.rmdir(out)
        raise
    return out


def check_model_arg(name: str | None):
    """Refuse a --model that cannot load, before anything slow happens: a directory must hold an
    HF-layout checkpoint; anything else must look like a hub id org/name."""
    if name is None:
        return
    if os.path.isdir(name):
        missing = [f for f in ("config.json", "tokenizer.json") if not os.path.isfile(os.path.join(name, f))]
        if not any(os.path.isfile(os.path.join(name, f)) for f in ("model.safetensors", "model.safetensors.index.json")):
            missing.append("model.safetensors")
        if missing:
            raise InputError(f"--model {name}: not a checkpoint directory ({', '.join(missing)} missing; "
                             "expected config.json, tokenizer.json and model.safetensors)")
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or os.path.exists(name):
        raise InputError(f"--model {name}: no such checkpoint directory (nor an org/name hub id)")


def resolve_model(name: str | None) -> str:
    check_model_arg(name)
    if name is None:
        return default_model()
    return name if os.path.isdir(name) else hub_download(name)


# ----------------------------------------------------------------------------- the engine


@dataclass
class Scored:
    answer: int | None  # the integer the model gave (None: unparseable)
    prob: float  # P(answer), product over its tokens
    expected: float  # sum_s s * P'(s) (fast mode), nan in thinking mode
    text: str  # generated completion (thinking mode) or ''


@dataclass
class Prepared:
    """One query checked and made into prompts (Reranker.prepare), ready for Reranker.rank."""
    query: str
    docs: list[dict]  # the documents, normalised, in input order
    full: list[int]  # positions of the documents that are scored (the others are empty)
    prompts: list[list[int]]  # their prompts' token ids
    query_cut: bool  # the query was truncated
    docs_cut: int  # how many documents were truncated


class Reranker:
    """Load once, then `rerank(query, documents)` -> records sorted best first, or
    `rerank_many([{"query", "documents"}, ...])` for many queries batched together."""

    def __init__(self, model=None, device=None, dtype=None, thinking=False, max_new_tokens=1024,
                 max_query_tokens=256, max_doc_tokens=512, batch_tokens=16384, score="answer",
                 instruction=None, fusion=None, verbose=True, query_keep="start"):
        if score not in ("answer", "expected"):
            raise InputError(f"--score {score}: expected 'answer' or 'expected'")
        if score == "expected" and thinking:
            raise InputError("--score expected needs fast mode (the distribution over 0..10); drop --thinking")
        if query_keep not in ("start", "end"):
            raise InputError(f"--query-keep {query_keep}: expected 'start' or 'end'")
        if not (dtype is None or isinstance(dtype, torch.dtype) or dtype in DTYPES):
            raise InputError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)} (or a torch.dtype)")
        check_device(device)
        path = resolve_model(model) if model is None or isinstance(model, str) else None
        if path is not None:
            try:
                self.model, self.tok = M.load(path, device=device, dtype=dtype, verbose=verbose)
            except ValueError as e:  # a config or weights model.py does not support, named by load
                raise InputError(f"--model {path}: {e}") from None
            model_fast.enable_fast_paths(self.model, inference_layout=True)  # faster CPU decoding; see model_fast.py
        else:  # an already loaded (model, tokenizer) pair
            self.model, self.tok = model
        self.path = path
        self.thinking, self.max_new_tokens, self.score = thinking, max_new_tokens, score
        self.max_query_tokens, self.max_doc_tokens, self.query_keep = max_query_tokens, max_doc_tokens, query_keep
        self.batch_tokens, self.instruction, self.fusion = batch_tokens, instruction, fusion
        self.verbose = verbose
        # seconds and pairs of the first rerank() call too: it includes one-time warm-up (memory
        # allocation, kernel selection), so the steady rate is measured without it
        self.stats = {"pairs": 0, "unparsed": 0, "empty": 0, "truncated_docs": 0, "truncated_queries": 0,
                      "seconds": 0.0, "first_pairs": 0, "first_seconds": 0.0}
        # token ids of the eleven answers: "0".."9" must be single tokens; "10" one or two tokens
        self.digit_ids = [self.tok.token_id(str(d)) for d in range(10)]
        self.ten_ids = self.tok.encode("10")
        assert len(self.ten_ids) == 1 or self.ten_ids == [self.digit_ids[1], self.digit_ids[0]], self.ten_ids
        self.stop_ids = sorted({i for i in (self.tok.im_end, self.model.config.eos_token_id) if isinstance(i, int)})

    # -- batching: sort by length, then fill a batch until the next prompt would take it over the
    # token budget (bounded memory) or make padding more than a tenth of it (wasted work)
    def batches(self, prompts):
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        extra = self.max_new_tokens if self.thinking else 2
        batch, real = [], 0
        for i in order:
            n = len(prompts[i]) + extra
            padded = (len(batch) + 1) * n  # every row padded to this, the longest so far
            if batch and (padded > self.batch_tokens or padded > 1.1 * (real + n)):
                yield batch
                batch, real = [], 0
            batch.append(i)
            real += n
        if batch:
            yield batch

    def answer_logits(self, h):
        """fp32 logits (B, V) from final hidden states h (B, C), the answer tokens' columns computed
        in fp32. A bf16 lm_head rounds a logit between 16 and 32 to a multiple of 1/8, which moves
        P(10) against P(0) by up to 13 % and flips answers where the two are close
        (docs/speed.md); the other logits only enter the softmax's normaliser."""
        logits = self.model.lm_head(h).float()
        if h.dtype != torch.float32:
            ids = sorted(set(self.digit_ids) | set(self.ten_ids))
            logits[:, ids] = h.float() @ self.model.lm_head.weight[ids].float().T
        return logits

    @torch.no_grad()
    def score_fast(self, prompts) -> list[Scored]:
        """One prefill per batch; the answer distribution is read at the last prompt position."""
        cache, h = M.cache_prompts(self.model, prompts, extra=1, pad_id=self.tok.pad_id)  # h (B, C)
        p = torch.softmax(self.answer_logits(h), -1)  # (B, V)
        pd = p[:, self.digit_ids]  # (B, 10): P(first token = d)
        first = pd.argmax(-1)  # greedy restricted to the eleven answers
        if len(self.ten_ids) == 1:
            p10 = p[:, self.ten_ids[0]]
            dist = torch.cat([pd, p10[:, None]], -1)  # (B, 11)
            answer = dist.argmax(-1)
            prob = dist.gather(1, answer[:, None])[:, 0]
        else:  # one more step with "1" appended: P("0" | "1") and P(another digit | "1")
            one = torch.full((len(prompts), 1), self.digit_ids[1], device=h.device)
            h1 = self.model(one, cache=cache, last_only=True, head=False)[:, -1]  # decode_one_token's step
            q = torch.softmax(self.answer_logits(h1), -1)
            q0, qd = q[:, self.digit_ids[0]], q[:, self.digit_ids].sum(-1)
            p10 = pd[:, 1] * q0
            dist = torch.cat([pd, p10[:, None]], -1)
            dist[:, 1] = pd[:, 1] * (1 - qd)  # "1" that is not followed by another digit
            ten = (first == 1) & (q.argmax(-1) == self.digit_ids[0])  # greedy would write "10"
            answer = torch.where(ten, 10, first)
            prob = torch.where(ten, p10, pd.gather(1, first[:, None])[:, 0])
        dist = dist / dist.sum(-1, keepdim=True)
        expected = (dist * torch.arange(11, device=dist.device)).sum(-1)
        return [Scored(int(a), float(pr), float(e), "") for a, pr, e in zip(answer, prob, expected)]

    @torch.no_grad()
    def score_thinking(self, prompts) -> list[Scored]:
        # progress within the batch: a forward hook counts the decoding steps (one per new token).
        # No total: most rows stop long before --max-new-tokens, so a bar to that limit would show a
        # wildly long time left; the count and the rate (tokens/s) are what can be known.
        bar = tqdm(desc=f"generating ({len(prompts)} pairs, at most {self.max_new_tokens} tokens)", unit="token",
                   leave=False, disable=not self.verbose)

        def count_step(module, args, output):  # a decoding step feeds one token per row
            if args and args[0].shape[1] == 1:
                bar.update()

        hook = self.model.register_forward_hook(count_step)
        try:
            out = M.generate(self.model, prompts, self.max_new_tokens, stop_ids=self.stop_ids, pad_id=self.tok.pad_id)
        finally:
            hook.remove()
            bar.close()
        results = []
        for toks, mask, logps in zip(out.tokens, out.mask, out.logprobs):
            ids = toks[mask].tolist()
            text = self.tok.decode(ids, skip_special_tokens=True)
            s = parse_answer(text)
            results.append(Scored(s, self.answer_prob(ids, logps[mask].tolist(), s), float("nan"), text))
        return results

    def answer_prob(self, ids, logps, s) -> float:
        """P(s): product of the probabilities of the last run of tokens that spells s."""
        if s is None:
            return 0.0
        target = str(s)
        digit = set(self.digit_ids) | set(self.ten_ids)
        end = len(ids)
        while end > 0:
            while end > 0 and ids[end - 1] not in digit:
                end -= 1
            start = end
            while start > 0 and ids[start - 1] in digit:
                start -= 1
            if start < end and self.tok.decode(ids[start:end]) == target:
                return math.exp(sum(logps[start:end]))
            end = start
        return 1.0  # the digits were spelled by tokens outside the digit set: no probability to use

    def score_prompts(self, prompts) -> list[Scored]:
        results = [None] * len(prompts)
        batches = list(self.batches(prompts))
        bar = tqdm(total=len(prompts), desc="pairs", unit="pair", leave=False,
                   disable=not self.verbose or len(batches) < 2)
        for batch in batches:
            fn = self.score_thinking if self.thinking else self.score_fast
            for i, r in zip(batch, fn([prompts[i] for i in batch])):
                results[i] = r
            bar.update(len(batch))
        bar.close()
        return results

    def build_prompts(self, query, docs, instruction) -> tuple[list[list[int]], bool, int]:
        """(prompt token ids, whether the query was cut, how many documents were cut). The query and
        the documents are encoded as plain text (see prompt_parts). Changes no state."""
        query, query_cut = truncate(self.tok, query, self.max_query_tokens, self.query_keep)
        bodies = [(d["title"] + "\n" + d["text"]) if d.get("title") else d["text"] for d in docs]
        parts, docs_cut = [], 0
        for body, cut in truncate_batch(self.tok, bodies, self.max_doc_tokens):
            docs_cut += cut
            parts.append(prompt_parts(self.tok, query, body, instruction or self.instruction, self.thinking))
        return self.tok.encode_parts(parts), query_cut, docs_cut

    def prompts_for(self, query, docs, instruction):
        """build_prompts' ids, counting the truncations in self.stats."""
        prompts, query_cut, docs_cut = self.build_prompts(query, docs, instruction)
        self.stats["truncated_queries"] += query_cut
        self.stats["truncated_docs"] += docs_cut
        return prompts

    def prepare(self, query: str, documents: list, instruction: str | None = None, where: str = "") -> "Prepared":
        """Check one query's input (errors name `where`, the field and the document) and build its
        prompts. No model call and no shared state changed, so threads can prepare at once (serve.py)."""
        at = f"{where}: " if where else ""
        if not isinstance(query, str):
            raise InputError(f"{at}query: expected a string, got {type(query).__name__}")
        check_text(query, f"{at}query")
        if instruction is not None:
            if not isinstance(instruction, str):
                raise InputError(f"{at}instruction: expected a string, got {type(instruction).__name__}")
            check_text(instruction, f"{at}instruction")
        if not isinstance(documents, list):
            raise InputError(f"{at}documents: expected a list, got {type(documents).__name__}")
        docs = [normalise_doc(d, i, f"{at}documents") for i, d in enumerate(documents)]
        check_unique_ids(docs, f"{at}documents")
        if self.fusion is not None:
            missing = [i for i, d in enumerate(docs) if "score" not in d]
            if missing:
                raise InputError(f"{at}documents[{missing[0]}].score: missing; --fusion needs a first-stage "
                                 "score on every document")
        full = [i for i, d in enumerate(docs) if not is_empty(d)]
        if not full:
            return Prepared(query, docs, full, [], False, 0)
        prompts, query_cut, docs_cut = self.build_prompts(query, [docs[i] for i in full], instruction)
        return Prepared(query, docs, full, prompts, query_cut, docs_cut)

    def rank(self, prepared: list["Prepared"]) -> list[list[dict]]:
        """Score the prompts of all the prepared queries together, batched across queries (one list,
        sorted by length and cut by the token budget), and return each query's records best first.
        A pair's score does not depend on the pairs it is batched with (tested)."""
        prompts = [p for job in prepared for p in job.prompts]
        t0 = time.perf_counter()
        scored = iter(self.score_prompts(prompts) if prompts else [])
        seconds = time.perf_counter() - t0
        if not self.stats["first_pairs"]:
            self.stats["first_pairs"], self.stats["first_seconds"] = len(prompts), seconds
        self.stats["seconds"] += seconds
        self.stats["pairs"] += len(prompts)
        return [self.records(job, [next(scored) for _ in job.full]) for job in prepared]

    def records(self, job: "Prepared", scored: list[Scored]) -> list[dict]:
        """One query's output records, best first, from the scores of its non-empty documents."""
        docs = job.docs
        self.stats["truncated_queries"] += job.query_cut
        self.stats["truncated_docs"] += job.docs_cut
        records = [{"id": d["id"], "position": i, "answer": None, "prob": 0.0, "empty": True} for i, d in enumerate(docs)]
        for i, r in zip(job.full, scored):
            records[i] = {"id": docs[i]["id"], "position": i, "answer": r.answer, "prob": r.prob}
            if not self.thinking:
                records[i]["expected"] = r.expected
            else:
                records[i]["output"] = r.text
            self.stats["unparsed"] += r.answer is None
        for r in records:
            r["score"] = final_score(r, self.score)
        empty = [r["id"] for r in records if r.get("empty")]
        self.stats["empty"] += len(empty)
        if empty and self.verbose:
            print(f"warning: query {job.query[:60]!r}: {len(empty)} empty document(s) not scored, ranked last: "
                  f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}", file=sys.stderr)
        if self.fusion is not None:
            fuse(records, [d["score"] for d in docs], self.fusion)
        return sort_records(records)

    def rerank(self, query: str, documents: list, instruction: str | None = None) -> list[dict]:
        """documents: strings or {"id", "text", "title"?, "score"?}. Returns records best first.
        Empty documents are not scored: they come last with "empty": True (and a warning)."""
        return self.rank([self.prepare(query, documents, instruction)])[0]

    def rerank_many(self, queries: list[dict]) -> list[list[dict]]:
        """Many queries in one call: [{"query", "documents", "instruction"?}, ...] -> one list of
        records per query, in order. Their pairs share batches, which fills them when each query has
        few documents. Errors name the query by its position (queries[3]: documents[1].text ...)."""
        if not isinstance(queries, list):
            raise InputError(f"queries: expected a list of {{'query', 'documents'}} objects, "
                             f"got {type(queries).__name__}")
        jobs = []
        for n, q in enumerate(queries):
            if not isinstance(q, dict):
                raise InputError(f"queries[{n}]: expected an object with 'query' and 'documents'")
            if "query" not in q or "documents" not in q:
                raise InputError(f"queries[{n}]: field '{'query' if 'query' not in q else 'documents'}' is missing")
            jobs.append(self.prepare(q["query"], q["documents"], q.get("instruction"), where=f"queries[{n}]"))
        return self.rank(jobs)


# ----------------------------------------------------------------------------- input and output


def check_text(text: str, where: str):
    """JSON can spell strings that are not Unicode text ("\\ud800", a lone surrogate), which the
    tokenizer cannot take: refuse them here, where the record and field are known."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where}: not valid Unicode text (lone surrogate {text[e.start]!r} "
                         f"at character {e.start})") from None


def check_id(value, where: str) -> str:
    """Ids are strings or numbers (null, true or a list would become a misleading docid)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{where}: expected a string or a number, got {json.dumps(value)}")
    if isinstance(value, str):
        check_text(value, where)
    return str(value)


def is_empty(doc: dict) -> bool:
    return not (doc["text"].strip() or doc.get("title", "").strip())


def normalise_doc(d, i, where="documents"):
    if isinstance(d, str):
        check_text(d, f"{where}[{i}]")
        return {"id": str(i), "text": d}
    if not isinstance(d, dict):
        raise InputError(f"{where}[{i}]: expected a string or an object with 'text', got {type(d).__name__}")
    if not isinstance(d.get("text"), str):
        raise InputError(f"{where}[{i}].text: missing or not a string")
    check_text(d["text"], f"{where}[{i}].text")
    if d.get("title") is not None and not isinstance(d["title"], str):
        raise InputError(f"{where}[{i}].title: expected a string, got {json.dumps(d['title'])}")
    check_text(d.get("title") or "", f"{where}[{i}].title")
    out = {"id": check_id(d["id"], f"{where}[{i}].id") if "id" in d else str(i),
           "text": d["text"], "title": d.get("title") or ""}
    if d.get("score") is not None:
        s = d["score"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise InputError(f"{where}[{i}].score: expected a finite number, got {json.dumps(s)}")
        out["score"] = float(s)
    return out


def check_unique_ids(docs: list[dict], where="documents"):
    """Duplicate ids would give a TREC run duplicate docids and the printed table the wrong text."""
    seen = {}
    for i, d in enumerate(docs):
        if d["id"] in seen:
            raise InputError(f"{where}[{seen[d['id']]}].id and [{i}].id: the same document id {d['id']!r} (ids must "
                             "be unique; a string document's id is its position)")
        seen[d["id"]] = i


def read_queries(path: str) -> list[dict]:
    """A JSON object, a JSON list of objects, or JSONL; each checked and normalised. The path "-"
    reads standard input (named "<stdin>" in messages)."""
    try:
        if path == "-":
            path, data = "<stdin>", sys.stdin.buffer.read()
        else:
            data = open(path, "rb").read()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = data.decode("utf-8-sig")  # a UTF-8 byte order mark is allowed
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                         f"{column}); save the file as UTF-8") from None
    try:
        data = json.loads(raw)
        records = data if isinstance(data, list) else [data]
        where = (lambda n: f"{path}: record {n}") if isinstance(data, list) else (lambda n: path)
    except json.JSONDecodeError as e:
        lines = [(n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
        if len(lines) < 2:
            raise InputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        records = []
        for n, line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e2:
                raise InputError(f"{path}: line {n}: invalid JSON ({e2.msg} at column {e2.colno})") from None
        numbers = [n for n, _ in lines]
        where = lambda n: f"{path}: line {numbers[n]}"
    if not records:
        raise InputError(f"{path}: no queries (empty list)")
    out, seen = [], {}
    for n, r in enumerate(records):
        w = where(n)
        if not isinstance(r, dict):
            raise InputError(f"{w}: expected an object with 'query' and 'documents'")
        if not isinstance(r.get("query"), str) or not r["query"].strip():
            raise InputError(f"{w}: field 'query' is missing or empty")
        check_text(r["query"], f"{w}: field 'query'")
        if not isinstance(r.get("documents"), list):
            raise InputError(f"{w}: field 'documents' is missing or not a list")
        if not r["documents"]:
            raise InputError(f"{w}: field 'documents' is an empty list")
        if r.get("instruction") is not None:
            if not isinstance(r["instruction"], str):
                raise InputError(f"{w}: field 'instruction' must be a string")
            check_text(r["instruction"], f"{w}: field 'instruction'")
        docs = [normalise_doc(d, i, f"{w}: documents") for i, d in enumerate(r["documents"])]
        check_unique_ids(docs, f"{w}: documents")
        qid = check_id(r["id"], f"{w}: field 'id'") if "id" in r else str(n)
        if qid in seen:
            raise InputError(f"{w}: field 'id': duplicate query id {qid!r} (also {seen[qid]})")
        seen[qid] = w
        out.append({"id": qid, "query": r["query"], "instruction": r.get("instruction"),
                    "documents": docs, "where": w})
    return out


def check_fusion_scores(items: list[dict], source: str):
    """--fusion needs a first-stage score on every document: say so before the model loads."""
    for item in items:
        for i, d in enumerate(item["documents"]):
            if "score" not in d:
                where = item.get("where", f"{source}: query {item['id']}")
                raise InputError(f"{where}: documents[{i}].score: missing; --fusion needs a first-stage "
                                 "score on every document")


def read_run_and_beir(run_path: str, beir_dir: str, top_k: int) -> list[dict]:
    """Each query of a TREC run with its top_k documents' text from a BEIR directory."""
    from data.beir import DataFormatError, load_corpus, load_queries, read_trec_run

    if not os.path.isfile(run_path):
        raise InputError(f"--run {run_path}: no such file")
    if not os.path.isdir(beir_dir):
        raise InputError(f"--beir {beir_dir}: no such directory")
    try:
        run, queries, corpus = read_trec_run(run_path), load_queries(beir_dir), load_corpus(beir_dir)
    except (DataFormatError, FileNotFoundError) as e:  # both name the file and line
        raise InputError(str(e)) from None
    if not run:
        raise InputError(f"{run_path}: no run lines (expected 'qid Q0 docid rank score tag')")
    out = []
    for qid in sorted(run):
        if qid not in queries:
            raise InputError(f"{run_path}: query {qid} is not in {beir_dir}/queries.jsonl")
        ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        docs = []
        for did, s in ranked:
            if did not in corpus:
                raise InputError(f"{run_path}: query {qid}: document {did} is not in {beir_dir}/corpus.jsonl")
            docs.append({"id": did, "text": corpus[did]["text"], "title": corpus[did].get("title", ""), "score": s})
        out.append({"id": qid, "query": queries[qid], "instruction": None, "documents": docs})
    return out


def trec_lines(qid: str, records: list[dict], tag: str) -> list[str]:
    """TREC run lines with strictly decreasing scores: score - 1e-6 * rank keeps the order we
    chose (ties already broken by the expected score, then first-stage position) so trec_eval cannot
    re-break ties by id."""
    return [f"{qid} Q0 {r['id']} {r['rank']} {r['score'] - 1e-6 * r['rank']:.6f} {tag}" for r in records]


def rate_line(stats: dict) -> str:
    """'N pairs in Ts (R pairs/s ...)': the rate without the first call's warm-up when there were
    later calls, else the rate of the one call, said to include it."""
    n, t = stats["pairs"], stats["seconds"]
    line = f"{n} pairs in {t:.1f}s"
    rest_n, rest_t = n - stats["first_pairs"], t - stats["first_seconds"]
    if rest_n and rest_t > 0:
        return (line + f" ({rest_n / rest_t:.1f} pairs/s after the first query; "
                f"{n / max(t, 1e-9):.1f} pairs/s with its warm-up)")
    return line + f" ({n / max(t, 1e-9):.1f} pairs/s, including the warm-up of the first call)"


def print_ranking(item, records, width=70):
    fused = any("rerank_score" in r for r in records)  # --fusion: the model's own score under "model"
    print(f"\nquery {item['id']}: {item['query']}")
    print(f"{'rank':>4} {'score':>7} " + (f"{'model':>7} " if fused else "") + f"{'answer':>6} {'P':>5}  id: text")
    texts = {d["id"]: d["text"] for d in item["documents"]}
    for r in records:
        snippet = " ".join(texts[r["id"]].split())[:width]
        ans = "-" if r["answer"] is None else r["answer"]
        own = (f"{'-':>7} " if r.get("empty") else f"{r['rerank_score']:>7.3f} ") if fused else ""
        print(f"{r['rank']:>4} {r['score']:>7.3f} {own}{ans:>6} {r['prob']:>5.2f}  {r['id']}: {snippet}")


def check_device(device: str | None):
    """Refuse a --device this machine does not have before the model loads (torch would fail
    later, with an AssertionError about how it was compiled)."""
    if device is None:
        return
    try:
        d = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device (expected cpu, cuda or cuda:N)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InputError(f"--device {device}: {why}; use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device}: not supported (expected cpu, cuda or cuda:N)")


def check_output_path(flag: str, path: str | None):
    """Refuse an output path that cannot be written before anything is scored: an existing
    directory, or a parent that is a file or not writable."""
    if path is None:
        return
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # missing directories are created when the file is written
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def add_model_args(ap):
    """--model, --device, --dtype (rerank.py and serve.py)."""
    g = ap.add_argument_group("model")
    g.add_argument("--model", help="HF-layout directory or hub id org/name (default: built-in reranker)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    g.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto: bf16 on CUDA and on CPUs with native bf16 matrix instructions "
                   "(AVX512-BF16, AMX-BF16), else fp32 (docs/speed.md)")
    return g


def add_scoring_args(ap):
    """How pairs are scored (rerank.py and serve.py)."""
    g = ap.add_argument_group("scoring")
    g.add_argument("--thinking", action="store_true", help="generate reasoning before the answer (slow)")
    g.add_argument("--max-new-tokens", type=positive_int, default=1024, help="generation limit in thinking mode")
    g.add_argument("--score", default="answer", choices=["answer", "expected"],
                   help="answer: s*P(s) (ERank); expected: sum_s s*P(s) over 0..10 (fast mode only)")
    g.add_argument("--instruction", help="relevance definition (default: the BEIR one)")
    g.add_argument("--task", choices=sorted(INSTRUCTIONS), help="use the paper's instruction for a benchmark")
    g.add_argument("--max-query-tokens", type=positive_int, default=256,
                   help="query truncation budget; a longer query keeps its first tokens (see --query-keep)")
    g.add_argument("--query-keep", default="start", choices=["start", "end"],
                   help="which end of a query over --max-query-tokens is kept (start: as in training; end "
                        "measured no better: docs/serving.md); end: for queries that end with their question")
    g.add_argument("--max-doc-tokens", type=positive_int, default=512,
                   help="document truncation budget; a longer document keeps its start")
    g.add_argument("--batch-tokens", type=positive_int, default=16384, help="tokens per batch (memory bound)")
    return g


def check_model_args(args):
    """The checks of add_model_args' and add_scoring_args' flags that need no model."""
    if args.score == "expected" and args.thinking:
        raise InputError("--score expected needs fast mode (the distribution over 0..10); drop --thinking")
    check_device(args.device)
    check_model_arg(args.model)


def reranker_from_args(args, verbose=True) -> "Reranker":
    instruction = args.instruction or (INSTRUCTIONS[args.task] if args.task else None)
    return Reranker(args.model, args.device, args.dtype, thinking=args.thinking, max_new_tokens=args.max_new_tokens,
                    max_query_tokens=args.max_query_tokens, max_doc_tokens=args.max_doc_tokens,
                    batch_tokens=args.batch_tokens, score=args.score, instruction=instruction,
                    fusion=getattr(args, "fusion", None), verbose=verbose, query_keep=args.query_keep)


def query_chunks(items: list[dict], pairs=256):
    """The queries in groups for Reranker.rerank_many: the first alone (its time includes the
    one-time warm-up, which rate_line reports apart), then groups of at most `pairs` documents
    (at least one query each), so queries with few documents still fill the batches."""
    chunk, n = [], 0
    for i, item in enumerate(items):
        k = len(item["documents"])
        if chunk and (i == 1 or n + k > pairs):
            yield chunk
            chunk, n = [], 0
        chunk.append(item)
        n += k
    if chunk:
        yield chunk


def main(argv=None):
    ap = argparse.ArgumentParser(description="Rerank documents for queries with an ERank model.",
                                 formatter_class=HelpFormatter)
    g = ap.add_argument_group("input")
    g.add_argument("input", nargs="?", help="JSON / JSONL file of queries with documents; - reads standard input")
    g.add_argument("--run", help="TREC run to rerank (with --beir)")
    g.add_argument("--beir", help="BEIR directory holding the run's queries and corpus")
    g.add_argument("--top-k", type=positive_int, help="documents per query taken from --run (default: 100)")
    add_model_args(ap)
    g = add_scoring_args(ap)
    g.add_argument("--fusion", type=fusion_weight, metavar="W",
                   help="W*z(first-stage score) + (1-W)*z(rerank score), per query (paper: 0.2; default: off)")
    g = ap.add_argument_group("output")
    g.add_argument("--output", help="also write JSON records here (the rankings are printed as well)")
    g.add_argument("--trec", help="also write a TREC run here")
    g.add_argument("--tag", default="erank", help="run tag in the TREC file")
    g.add_argument("--quiet", action="store_true", help="do not print rankings")
    args = ap.parse_args(argv)
    if not (args.run or args.beir or args.input):
        ap.error("give an input file, or --run with --beir")
    try:
        # every check that needs no model comes first, so bad input fails in a second
        check_model_args(args)
        check_output_path("--output", args.output)
        check_output_path("--trec", args.trec)
        if args.run or args.beir:
            if not (args.run and args.beir):
                raise InputError("--run and --beir go together")
            if args.input:
                raise InputError(f"{args.input}: give an input file or --run with --beir, not both")
            items = read_run_and_beir(args.run, args.beir, args.top_k or 100)
        else:
            if args.top_k is not None:
                raise InputError("--top-k applies to --run only (the documents of an input file are all ranked)")
            items = read_queries(args.input)
        if args.fusion is not None:
            check_fusion_scores(items, args.input or args.run)
        rr = reranker_from_args(args)
        results, lines = [], []
        with tqdm(total=len(items), desc="queries", unit="query", disable=len(items) < 2) as bar:
            for chunk in query_chunks(items):
                for item, records in zip(chunk, rr.rerank_many(chunk)):
                    results.append({"query_id": item["id"], "query": item["query"], "results": records})
                    lines += trec_lines(item["id"], records, args.tag)
                    if not args.quiet:
                        print_ranking(item, records)
                bar.update(len(chunk))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = rr.stats
    if s["truncated_docs"] or s["truncated_queries"]:
        print(f"warning: truncated {s['truncated_docs']} documents to {args.max_doc_tokens} tokens and "
              f"{s['truncated_queries']} queries to {args.max_query_tokens} tokens (keeping each query's "
              f"{args.query_keep})", file=sys.stderr)
    if s["unparsed"]:
        print(f"warning: {s['unparsed']} of {s['pairs']} outputs had no parseable score "
              f"(scored {UNPARSED})", file=sys.stderr)
    print(rate_line(s), file=sys.stderr)
    if args.output:
        files.write_atomic(args.output, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    if args.trec:
        files.write_atomic(args.trec, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
