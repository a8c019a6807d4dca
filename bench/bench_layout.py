"""What model.cpu_inference_layout and model.decode_attention buy on CPU, in one process.

    python bench/bench_layout.py                 # built-in model, CPU fp32

1. Matrix products of the model's shapes, y = F.linear(x, W) for M rows of x, with W stored as
   usual (out, in) and stored transposed (in, out): same values, same call, other memory layout.
2. A decoding step of the built-in model (one new token for each of 20 rows after their prompts,
   BM25's top 20 for the first pyfaq test query, ~470 tokens), four ways: usual layout or
   transposed weights, times the fused attention kernel or decode_attention. One model is
   loaded; the variants switch its layout in place and pick the attention function.
Every variant runs once per round, the order reversed every other round (this machine's speed
drifts); the table shows each variant's fastest time and its speed relative to the first row.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
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


def fused_attention(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=20, help="rows decoded together")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, tok = M.load(R.default_model(), device="cpu", dtype=torch.float32)
    C, I, V = model.config.hidden_size, model.config.intermediate_size, model.config.vocab_size
    kv = model.config.num_key_value_heads * model.config.head_dim
    print(f"built-in model, cpu float32, torch threads {torch.get_num_threads()}\n")

    print("| x rows (M) | " + " | ".join(f"{k}→{n}" for k, n in [(C, C), (C, kv), (C, I), (I, C), (C, V)])
          + " |  (usual / transposed storage, time ratio)")
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

    (query, docs), = pairs_from_pyfaq(1, args.rows)
    rr = R.Reranker((model, tok), max_doc_tokens=10**6, verbose=False)
    prompts = rr.prompts_for(query, [{"text": d} for d in docs], None)
    ids = torch.tensor([[tok.token_id("7")]] * len(prompts))
    variants = [("usual layout, fused attention kernel", False, fused_attention),
                ("usual layout, decode_attention", False, M.decode_attention),
                ("transposed weights, fused attention kernel", True, fused_attention),
                ("transposed weights, decode_attention (rerank.py on CPU)", True, M.decode_attention)]
    cache, _ = M.prefill(model, prompts, extra=1, pad_id=tok.pad_id)
    L = cache.length

    def one_step():
        cache.length = L  # the same step again, into the same cache slot
        return model(ids, cache=cache, logits_at="last")

    step, outs = {}, {}
    keep = M.decode_attention
    try:
        for r in range(args.rounds):
            for name, transposed, attention in variants if r % 2 == 0 else variants[::-1]:
                set_layout(model, transposed)
                M.decode_attention = attention
                step[name] = min(step.get(name, float("inf")), best_of(one_step, 1.0))
                outs[name] = one_step()
    finally:
        M.decode_attention = keep
    base = variants[0][0]
    diff = max((outs[n] - outs[base]).abs().max().item() for n, _, _ in variants)
    print(f"\nA decoding step: {len(prompts)} rows after prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, best of {args.rounds} rounds; largest logit difference "
          f"between variants {diff:.1e}\n")
    print("| variant | decoding step | speed vs first row |")
    print("|---|---|---|")
    for name, _, _ in variants:
        print(f"| {name} | {step[name] * 1e3:.0f} ms | {step[base] / step[name]:.2f}x |")


if __name__ == "__main__":
    main()
