"""Benchmark rerank.py against the straightforward transformers implementation, in one process.

    python bench/bench_rerank.py                         # built-in model, CPU fp32
    python bench/bench_rerank.py --dtype bfloat16 --fp32-row   # CPU bf16, and our fp32 beside it
    python bench/bench_rerank.py --threads 1 --clock cpu  # on a machine shared with other jobs
    python bench/bench_rerank.py --model DIR --device cuda --dtype bfloat16
    python bench/bench_rerank.py --random qwen3-0.6b --device cuda --dtype bfloat16

Both sides score the same (query, document) pairs with the same checkpoint, dtype and prompt:
  - fast mode: ours = Reranker.score_prompts (length-sorted batches with little padding, the
    query prefix computed once per batch, logits only at the last position); reference =
    AutoModelForCausalLM on each query's left-padded batch of full prompts, logits[:, -1] -> the
    same s*P(s).
  - thinking mode, two ways; ours = model.generate, reference = transformers' batched greedy
    `generate` on each query's documents:
      fixed length: no stop token on either side, both decode exactly --max-new-tokens tokens
        (the per-token cost of the two engines);
      to the end of turn: both stop a row at <|im_end|> (as rerank.py --thinking does) with a
        limit of --stop-limit tokens; transformers keeps finished rows in the batch until all
        are done, ours drops them.
Each query is timed on both sides back to back, alternating which side goes first, --rounds times,
and each side's fastest time counts, so a drift in the machine's speed falls on both alike. It
prints pairs/s for each, the ratio, the largest score difference, and the achieved FLOP/s (useful
work: 2 * matmul parameters * prompt tokens per pair) against a matmul of the same dtype measured in
the same process (its peak). --bf16-row / --fp32-row add our fast mode in the other dtype, timed
back to back with --dtype's. Pairs: BM25 top-20 of the first pyfaq test queries, documents cut to
~200 words.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import model_fast  # noqa: E402
import rerank as R  # noqa: E402


def pairs_from_pyfaq(n_queries, n_docs, words=200):
    from data.beir import load_corpus, load_queries, load_qrels
    from data.bm25 import BM25
    from eval import dataset_problem

    d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "beir", "pyfaq")
    if problem := dataset_problem(d, "dataset"):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    corpus, queries = load_corpus(d), load_queries(d)
    qids = sorted(load_qrels(d, "test"))[:n_queries]
    bm25 = BM25.from_dir(d)
    out = []
    for q in qids:
        docs = [" ".join(corpus[i]["text"].split()[:words]) for i, _ in bm25.search(queries[q], n_docs)]
        out.append((queries[q], docs))
    return out


# a real model's shapes, for timing with random weights where the checkpoint itself is not at hand
SHAPES = {"qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                             num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                             rope_theta=1e6, tie_word_embeddings=True, qk_norm=True)}


def random_checkpoint(shape, dtype, tokenizer, out):
    """Write a randomly initialised model with SHAPES[shape] and the tokenizer of directory
    `tokenizer` (its ids must fit the vocabulary)."""
    torch.manual_seed(0)
    model = M.Transformer(M.Config(**SHAPES[shape]))
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 0.02)
    M.save(model.to(dtype), M.Tokenizer(tokenizer), out)
    return out


SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def matmul_peak(device, dtype, n=2048, reps=5):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, clock=time.perf_counter):
    sync(device)
    t = clock()
    out = fn()
    sync(device)
    return out, clock() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: the built-in base model)")
    ap.add_argument("--random", choices=sorted(SHAPES), help="random weights with these shapes instead")
    ap.add_argument("--tokenizer", help="directory with tokenizer.json for --random (default: the built-in model's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--queries", type=int, default=10, help="queries (20 documents each) in fast mode")
    ap.add_argument("--docs", type=int, default=20, help="documents per query")
    ap.add_argument("--thinking-queries", type=int, default=1, help="queries in thinking mode (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens decoded per pair, fixed-length run (0: skip)")
    ap.add_argument("--rounds", type=int, default=2, help="timings per query and side; the fastest counts")
    ap.add_argument("--stop-limit", type=int, default=256, help="token limit of the end-of-turn run (0: skip)")
    ap.add_argument("--bf16-row", action="store_true", help="also time rerank.py in fast mode with the weights in "
                    "bf16, back to back with fp32 (--dtype float32 only)")
    ap.add_argument("--fp32-row", action="store_true", help="also time rerank.py in fast mode with the weights in "
                    "fp32, back to back with bf16 (--dtype bfloat16 only)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: elapsed time; cpu: the process's CPU time, for a machine shared with other "
                    "jobs (with --threads 1 it counts the work done, not the time spent waiting for a core)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    dtype = getattr(torch, args.dtype)
    other = torch.bfloat16 if args.bf16_row else torch.float32 if args.fp32_row else None
    if other is not None and other == dtype or args.bf16_row and args.fp32_row:
        ap.error("--bf16-row goes with --dtype float32, --fp32-row with --dtype bfloat16")
    tmp = tempfile.TemporaryDirectory()
    if args.random:
        path = random_checkpoint(args.random, dtype, args.tokenizer or R.default_model(), tmp.name)
    else:
        path = args.model or R.default_model()
    model, tok = M.load(path, device=args.device, dtype=dtype)
    model_fast.enable_fast_paths(model, inference_layout=True)  # as rerank.py does with a model it loads
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    torch.set_grad_enabled(False)
    data = pairs_from_pyfaq(args.queries, args.docs)
    rr = R.Reranker((model, tok), max_doc_tokens=10**6, verbose=False)
    prompts = [rr.prompts_for(q, [{"text": d} for d in docs], None) for q, docs in data]
    n_pairs = sum(len(p) for p in prompts)
    n_tokens = sum(len(x) for p in prompts for x in p)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    flops = 2 * params * n_tokens  # useful work: every prompt token through every matmul once
    peak = {d: matmul_peak(args.device, d) for d in (dtype, other) if d is not None}
    print(f"{args.random or path}: {n_pairs} pairs, {n_tokens / n_pairs:.0f} prompt tokens per pair, "
          f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}, {args.clock} clock")
    print("measured matmul peak: " + ", ".join(f"{str(d)[6:]} {p / 1e9:.1f} GFLOP/s" for d, p in peak.items()))

    def paired(ours, ref, queries):
        """Time ours(p) and ref(p) back to back for each query's prompts p, alternating which goes
        first, --rounds times, and keep each side's fastest time per query: this machine's speed
        drifts (a shared host), and the drift should fall on both sides alike."""
        out, secs = ([], []), [0.0, 0.0]
        for p in queries:
            best, got = [float("inf")] * 2, [None, None]
            for r in range(args.rounds):
                for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                    got[side], dt = timed(lambda: (ours, ref)[side](p), args.device, clock)
                    best[side] = min(best[side], dt)
            for side in (0, 1):
                out[side].extend(got[side])
                secs[side] += best[side]
        return out[0], out[1], secs[0], secs[1]

    def ref_fast(p):  # one query's documents in one batch, left-padded, full logits
        ids, mask = M._left_pad(p, tok.pad_id, args.device)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding needs explicit positions
        out = ref(input_ids=ids, attention_mask=mask.long(), position_ids=pos, use_cache=True)
        probs = torch.softmax(out.logits[:, -1].float(), -1)
        pd = probs[:, rr.digit_ids]
        first = pd.argmax(-1)
        # "10" is two tokens: one cached decode step with "1" appended gives P("0" | "1")
        one = torch.full_like(ids[:, :1], rr.digit_ids[1])
        m1 = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        step = ref(input_ids=one, attention_mask=m1.long(), position_ids=pos[:, -1:] + 1,
                   past_key_values=out.past_key_values)
        q = torch.softmax(step.logits[:, -1].float(), -1)
        ten = (first == 1) & (q.argmax(-1) == rr.digit_ids[0])
        prob = torch.where(ten, pd[:, 1] * q[:, rr.digit_ids[0]], pd.gather(1, first[:, None])[:, 0])
        return [(int(10 if t else f), float(pr)) for t, f, pr in zip(ten, first, prob)]

    rows = []
    ref_fast(prompts[0])  # warm-up (first-call allocations) on both sides
    rr.score_prompts(prompts[0])
    a, b, t_ours, t_ref = paired(rr.score_prompts, ref_fast, prompts)
    diff = max(abs(x.answer * x.prob - s * p) for x, (s, p) in zip(a, b))
    agree = sum(x.answer == s for x, (s, _) in zip(a, b))
    rows.append(("fast", n_pairs, t_ours, t_ref, f"max score diff {diff:.1e}, same answer {agree}/{n_pairs}", dtype))

    if other is not None:
        # the same prompts, our side only: the weights in the other dtype against the model above, back to back
        m2, _ = M.load(path, device=args.device, dtype=other)
        model_fast.enable_fast_paths(m2, inference_layout=True)
        rr2 = R.Reranker((m2, tok), max_doc_tokens=10**6, verbose=False)
        rr2.score_prompts(prompts[0])  # warm-up
        c, d, t2, t1 = paired(rr2.score_prompts, rr.score_prompts, prompts)
        agree2 = sum(x.answer == y.answer for x, y in zip(c, d))
        diff2 = max(abs(x.answer * x.prob - y.answer * y.prob) for x, y in zip(c, d))
        one, two = SHORT.get(dtype, args.dtype), SHORT.get(other)
        rows.append((f"fast, {two} weights", n_pairs, t2, t_ref,
                     f"{t1 / t2:.2f}x the {one} side timed beside it; against {one}: max score diff "
                     f"{diff2:.1e}, same answer {agree2}/{n_pairs}", other))

    tq = prompts[:args.thinking_queries]
    n_think = sum(len(p) for p in tq)
    stops = rr.stop_ids

    def upto_stop(row):  # a completion through its first stop token
        row = row.tolist()
        return row[:next((i + 1 for i, t in enumerate(row) if t in stops), len(row))]

    def ours_think(p, n, stop_ids):
        out = M.generate(model, p, n, stop_ids=stop_ids, pad_id=tok.pad_id)
        return [upto_stop(r[m]) if stop_ids else r.tolist() for r, m in zip(out.tokens, out.mask)]

    def ref_think(p, n, stop_ids):
        ids, mask = M._left_pad(p, tok.pad_id, args.device)
        kw = dict(eos_token_id=stop_ids) if stop_ids else dict(min_new_tokens=n)
        out = ref.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=n, do_sample=False,
                           pad_token_id=tok.pad_id, **kw)[:, ids.shape[1]:]
        return [upto_stop(r) if stop_ids else r.tolist() for r in out]

    if tq and args.max_new_tokens:
        n = args.max_new_tokens
        a, b, to, tr = paired(lambda p: ours_think(p, n, ()), lambda p: ref_think(p, n, None), tq)
        same = sum(x == y for x, y in zip(a, b))
        rows.append((f"thinking, fixed length ({n} new tokens)", n_think, to, tr, f"identical outputs {same}/{n_think}",
                     None))

    if tq and args.stop_limit:
        n = args.stop_limit
        a, b, to, tr = paired(lambda p: ours_think(p, n, stops), lambda p: ref_think(p, n, stops), tq)
        same = sum(x == y for x, y in zip(a, b))
        lens = sorted(len(x) for x in a)
        rows.append((f"thinking, to the end of turn (limit {n})", n_think, to, tr,
                     f"identical outputs {same}/{n_think}; tokens per pair (ours) min {lens[0]}, "
                     f"median {lens[len(lens) // 2]}, max {lens[-1]}; total ours {sum(lens)}, "
                     f"transformers {sum(len(y) for y in b)}", None))

    print(f"\n| mode | pairs | rerank.py pairs/s | transformers pairs/s | speed-up | achieved GFLOP/s (ours / ref) | check |")
    print("|---|---|---|---|---|---|---|")
    for mode, n, to, tr, check, d in rows:
        # fast rows: useful work per second, and its share of the matmul peak of the row's dtype.
        # (The other dtype's row has no reference of its own: its transformers column is the one of
        # the fast row, in --dtype.)
        ref_fl = f"{flops / tr / 1e9:.0f}" if d == dtype else "-"
        fl = "-" if d is None else f"{flops / to / 1e9:.0f} / {ref_fl} ({flops / to / peak[d]:.0%} of the {SHORT[d]} peak)"
        print(f"| {mode} | {n} | {n / to:.2f} | {n / tr:.2f} | {tr / to:.2f}x | {fl} | {check} |")


if __name__ == "__main__":
    main()
