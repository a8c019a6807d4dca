"""Benchmark rerank.py against the straightforward transformers implementation, in one process.

    python bench/bench_rerank.py                         # built-in model, CPU fp32
    python bench/bench_rerank.py --model DIR --device cuda --dtype bfloat16

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
It prints pairs/s for each, the ratio, the largest score difference, and the achieved FLOP/s
(useful work: 2 * matmul parameters * prompt tokens per pair) against this machine's measured
fp32 matmul peak. Pairs: BM25 top-20 of the first pyfaq test queries, documents cut to ~200 words.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import rerank as R  # noqa: E402


def pairs_from_pyfaq(n_queries, n_docs, words=200):
    from data.beir import load_corpus, load_queries, load_qrels
    from data.bm25 import BM25

    d = "data/beir/pyfaq"
    if not os.path.isdir(d):
        sys.exit(f"{d} is missing: build it first with `python data/build_datasets.py --only pyfaq`")
    corpus, queries = load_corpus(d), load_queries(d)
    qids = sorted(load_qrels(d, "test"))[:n_queries]
    bm25 = BM25.from_dir(d)
    out = []
    for q in qids:
        docs = [" ".join(corpus[i]["text"].split()[:words]) for i, _ in bm25.search(queries[q], n_docs)]
        out.append((queries[q], docs))
    return out


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


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint directory (default: the built-in base model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--queries", type=int, default=10, help="queries (20 documents each) in fast mode")
    ap.add_argument("--docs", type=int, default=20, help="documents per query")
    ap.add_argument("--thinking-queries", type=int, default=1, help="queries in thinking mode (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens decoded per pair, fixed-length run")
    ap.add_argument("--stop-limit", type=int, default=256, help="token limit of the end-of-turn run (0: skip)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    path = args.model or R.default_model()
    dtype = getattr(torch, args.dtype)
    model, tok = M.load(path, device=args.device, dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    torch.set_grad_enabled(False)
    data = pairs_from_pyfaq(args.queries, args.docs)
    rr = R.Reranker((model, tok), max_doc_tokens=10**6, verbose=False)
    prompts = [rr.prompts_for(q, [{"text": d} for d in docs], None) for q, docs in data]
    n_pairs = sum(len(p) for p in prompts)
    n_tokens = sum(len(x) for p in prompts for x in p)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    flops = 2 * params * n_tokens  # useful work: every prompt token through every matmul once
    peak = matmul_peak(args.device, dtype)
    print(f"{path}: {n_pairs} pairs, {n_tokens / n_pairs:.0f} prompt tokens per pair, "
          f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s")

    def ours_fast(queries=prompts):
        return [s for p in queries for s in rr.score_prompts(p)]

    def ref_fast(queries=prompts):
        scores = []
        for p in queries:  # one query's documents per batch, left-padded, full logits
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
            scores += [(int(10 if t else f), float(pr)) for t, f, pr in zip(ten, first, prob)]
        return scores

    rows = []
    ref_fast(prompts[:1])  # warm-up (first-call allocations) on both sides
    ours_fast(prompts[:1])
    a, t_ours = timed(ours_fast, args.device)
    b, t_ref = timed(ref_fast, args.device)
    diff = max(abs(x.answer * x.prob - s * p) for x, (s, p) in zip(a, b))
    agree = sum(x.answer == s for x, (s, _) in zip(a, b))
    rows.append(("fast", n_pairs, t_ours, t_ref, f"max |score diff| {diff:.1e}, same answer {agree}/{n_pairs}"))

    if args.thinking_queries:
        tp = [x for p in prompts[:args.thinking_queries] for x in p]
        n = args.max_new_tokens

        def ours_think():
            return M.generate(model, tp, n, stop_ids=(), pad_id=tok.pad_id).tokens

        def ref_think():
            ids, mask = M._left_pad(tp, tok.pad_id, args.device)
            out = ref.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=tok.pad_id)
            return out[:, ids.shape[1]:]

        a, t_ours_t = timed(ours_think, args.device)
        b, t_ref_t = timed(ref_think, args.device)
        same = sum(x.tolist() == y.tolist() for x, y in zip(a, b))
        rows.append((f"thinking, fixed length ({n} new tokens)", len(tp), t_ours_t, t_ref_t,
                     f"identical outputs {same}/{len(tp)}"))

    if args.thinking_queries and args.stop_limit:
        n, stops = args.stop_limit, rr.stop_ids

        def upto_stop(row):  # a completion through its first stop token
            row = row.tolist()
            return row[:next((i + 1 for i, t in enumerate(row) if t in stops), len(row))]

        def ours_stop():
            out = M.generate(model, tp, n, stop_ids=stops, pad_id=tok.pad_id)
            return [upto_stop(r[m]) for r, m in zip(out.tokens, out.mask)]

        def ref_stop():
            ids, mask = M._left_pad(tp, tok.pad_id, args.device)
            out = ref.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=n, do_sample=False,
                               eos_token_id=stops, pad_token_id=tok.pad_id)
            return [upto_stop(r) for r in out[:, ids.shape[1]:]]

        a, t_ours_s = timed(ours_stop, args.device)
        b, t_ref_s = timed(ref_stop, args.device)
        same = sum(x == y for x, y in zip(a, b))
        lens = sorted(len(x) for x in a)
        rows.append((f"thinking, to the end of turn (limit {n})", len(tp), t_ours_s, t_ref_s,
                     f"identical outputs {same}/{len(tp)}; tokens per pair (ours) min {lens[0]}, "
                     f"median {lens[len(lens) // 2]}, max {lens[-1]}; total ours {sum(lens)}, "
                     f"transformers {sum(len(y) for y in b)}"))

    print(f"\n| mode | pairs | rerank.py pairs/s | transformers pairs/s | speed-up | achieved GFLOP/s (ours / ref) | check |")
    print("|---|---|---|---|---|---|---|")
    for mode, n, to, tr, check in rows:
        fl = f"{flops / to / 1e9:.0f} / {flops / tr / 1e9:.0f} ({flops / to / peak:.0%} of peak)" if mode == "fast" else "-"
        print(f"| {mode} | {n} | {n / to:.2f} | {n / tr:.2f} | {tr / to:.2f}x | {fl} | {check} |")


if __name__ == "__main__":
    main()
