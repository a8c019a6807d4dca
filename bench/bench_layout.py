"""What model_fast.py's CPU inference paths buy, in one process: cpu_inference_layout,
decode_attention (FastAttention) and FastMLP.forward_in_slices.

    python bench/bench_layout.py                 # built-in model, CPU fp32

1. Fast-mode scoring of a query's 20 prompts (Reranker.score_prompts) with the MLP run on the
   whole batch or in slices of at most 16 MB: wall time, and the process's minor page faults and
   system CPU time, which do not drift with the machine. It runs first, while malloc's state is a
   fresh process's, as in a rerank.py run (later sections free large tensors, which changes it).
2. Matrix products of the model's shapes, y = F.linear(x, W) for M rows of x, with W stored as
   usual (out, in) and stored transposed (in, out): same values, same call, other memory layout.
3. A decoding step of the built-in model (one new token for each of 20 rows after their prompts,
   BM25's top 20 for the first pyfaq test query, ~470 tokens), four ways: usual layout or
   transposed weights, times the fused attention kernel (model.Attention) or decode_attention
   (model_fast.FastAttention). One model is loaded; the variants switch its layout in place and
   the class of its attention modules.
Every variant runs once per round, the order reversed every other round (this machine's speed
drifts); the table shows each variant's fastest time and its speed relative to the first row.
"""
import argparse
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import model_fast  # noqa: E402
import rerank as R  # noqa: E402
from bench.bench_rerank import pairs_from_pyfaq  # noqa: E402


def best_of(fn, seconds=0.3):
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def set_layout(model, transposed):
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight.data
            m.weight.data = w.t().contiguous().t() if transposed else w.contiguous()


def use(model, base, cls):
    """Switch every `base` module of the model to the class `cls` (model.py's or model_fast.py's)."""
    for m in model.modules():
        if isinstance(m, base):
            m.__class__ = cls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rows", type=int, default=20, help="documents of the query: rows scored and decoded together")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, tok = M.load(R.default_model(), device="cpu", dtype=torch.float32)
    model_fast.enable_fast_paths(model, inference_layout=True)
    C, I, V = model.config.hidden_size, model.config.intermediate_size, model.config.vocab_size
    kv = model.config.num_key_value_heads * model.config.head_dim
    print(f"built-in model, cpu float32, torch threads {torch.get_num_threads()}")
    (query, docs), = pairs_from_pyfaq(1, args.rows)
    rr = R.Reranker((model, tok), max_doc_tokens=10**6, verbose=False)
    prompts = rr.prompts_for(query, [{"text": d} for d in docs], None)

    # 1. first, while malloc's state is that of a fresh process, as in a rerank.py run
    variants = [("MLP on the whole batch", M.MLP), ("MLP in slices of <= 16 MB (rerank.py on CPU)", model_fast.FastMLP)]
    got = {}
    for r in range(args.rounds):
        for name, mlp in variants if r % 2 == 0 else variants[::-1]:
            use(model, M.MLP, mlp)
            before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            rr.score_prompts(prompts)
            wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
            new = (wall, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime)
            got[name] = [min(a, b) for a, b in zip(got.get(name, new), new)]
    use(model, M.MLP, model_fast.FastMLP)
    base = variants[0][0]
    print(f"\nFast-mode scoring of {len(prompts)} prompts ({sum(map(len, prompts))} tokens, batches of "
          f"{[len(b) for b in rr.batches(prompts)]} prompts), best of {args.rounds} rounds\n")
    print("| variant | wall time | speed vs first row | minor page faults | system CPU time |")
    print("|---|---|---|---|---|")
    for name, _ in variants:
        wall, faults, sys_s = got[name]
        print(f"| {name} | {wall:.2f} s | {got[base][0] / wall:.2f}x | {faults:,} | {sys_s:.2f} s |")

    # 2.
    print("\n| x rows (M) | " + " | ".join(f"{k}→{n}" for k, n in [(C, C), (C, kv), (C, I), (I, C), (C, V)])
          + " |  (time with the usual layout / with transposed storage)")
    print("|---" * 6 + "|")
    for rows in (1, 8, 20, 48, 8000):
        cells = []
        for k, n in [(C, C), (C, kv), (C, I), (I, C), (C, V)]:
            if rows == 8000 and n == V:
                cells.append("-")  # never needed: logits are computed at a few positions
                continue
            x, w = torch.randn(rows, k), torch.randn(n, k)
            wt = w.t().contiguous().t()
            cells.append(f"{best_of(lambda: F.linear(x, w)) / best_of(lambda: F.linear(x, wt)):.2f}")
        print(f"| {rows} | " + " | ".join(cells) + " |")

    # 3.
    ids = torch.tensor([tok.token_id("7")] * len(prompts))
    variants = [("usual layout, fused attention kernel", False, M.Attention),
                ("usual layout, decode_attention", False, model_fast.FastAttention),
                ("transposed weights, fused attention kernel", True, M.Attention),
                ("transposed weights, decode_attention (rerank.py on CPU)", True, model_fast.FastAttention)]
    cache, _ = M.prefill(model, prompts, extra=1, pad_id=tok.pad_id)
    L = cache.length

    def one_step():
        cache.length = L  # the same step again, into the same cache slot
        return M.decode_one_token(model, cache, ids)

    step, outs = {}, {}
    for r in range(3 * args.rounds):  # a step is short: more rounds against the drift
        for name, transposed, attention in variants if r % 2 == 0 else variants[::-1]:
            set_layout(model, transposed)
            use(model, M.Attention, attention)
            step[name] = min(step.get(name, float("inf")), best_of(one_step, 1.0))
            outs[name] = one_step()
    base = variants[0][0]
    diff = max((outs[n] - outs[base]).abs().max().item() for n, _, _ in variants)
    print(f"\nA decoding step: {len(prompts)} rows after prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, best of {3 * args.rounds} rounds of 1 s; largest logit difference "
          f"between variants {diff:.1e}\n")
    print("| variant | decoding step | speed vs first row |")
    print("|---|---|---|")
    for name, _, _ in variants:
        print(f"| {name} | {step[name] * 1e3:.0f} ms | {step[base] / step[name]:.2f}x |")


if __name__ == "__main__":
    main()
