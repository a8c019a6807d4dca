"""Where fast-mode scoring spends its time, by part of the model, and A/Bs of the alternatives tried
for the parts that do not speed up in bf16 (docs/speed.md, "Inference in bf16").

    python bench/profile_bf16.py                    # profile in bf16 and fp32, then the A/Bs
    python bench/profile_bf16.py --skip-ab --dtypes bfloat16

Profile: torch.profiler over Reranker.score_prompts on one query's prompts (BM25 top 20 of the first
pyfaq test query, documents cut to 200 words, as bench/bench_rerank.py), the built-in model with
rerank.py's speed paths, after one warm-up call; each part's time includes what it calls.
A/Bs: each variant on the tensors of one batch (11 rows of 407 tokens after a 79-token prefix, the
built-in model's 9 query and 3 key/value heads of 64), timed in turns in one process, best and
median of --rounds rounds (this machine's speed drifts, so only ratios within a round mean much).
"""
import argparse
import functools
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import model_fast as MF  # noqa: E402
import rerank as R  # noqa: E402

PARTS = [(M.Attention, "forward", "attention block (projections, RoPE, kernel)"),
         (MF.FastAttention, "attend", "attention: the kernel (SDPA)"), (MF.FastAttention, "rope", "attention: RoPE"),
         (MF.FastMLP, "forward", "MLP (products, SiLU, product)"), (M.RMSNorm, "forward", "RMSNorm"),
         (R.Reranker, "answer_logits", "answer logits")]


def label(cls, name, text):
    """Wrap cls.name in a profiler range called text."""
    f = getattr(cls, name)

    @functools.wraps(f)
    def g(*a, **k):
        with record_function(text):
            return f(*a, **k)
    setattr(cls, name, g)


def profile_parts(dtype):
    from bench_rerank import pairs_from_pyfaq

    model, tok = M.load(R.default_model(), device="cpu", dtype=dtype, verbose=False)
    MF.enable_fast_paths(model, inference_layout=True)  # as rerank.py
    rr = R.Reranker((model, tok), max_doc_tokens=10**6, verbose=False)
    (q, docs), = pairs_from_pyfaq(1, 20)
    prompts = rr.prompts_for(q, [{"text": d} for d in docs], None)
    rr.score_prompts(prompts)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as p:
        t = time.perf_counter()
        rr.score_prompts(prompts)
        t = time.perf_counter() - t
    ev = p.key_averages()
    total = sum(e.self_cpu_time_total for e in ev) / 1e6
    print(f"\n{str(dtype)[6:]}: {len(prompts)} prompts of {sum(map(len, prompts)) / len(prompts):.0f} tokens, "
          f"{t:.2f} s profiled\n\n| part | s | share |\n|---|---|---|")
    texts = [t for *_, t in PARTS]
    for e in sorted((e for e in ev if e.key in texts), key=lambda e: texts.index(e.key)):
        print(f"| {e.key} | {e.cpu_time_total / 1e6:.2f} | {e.cpu_time_total / 1e6 / total:.0%} |")
    print("\n| operator (self time) | s | share |\n|---|---|---|")
    for e in sorted((e for e in ev if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:9]:
        print(f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / 1e6 / total:.0%} |")


def attend_in_chunks(q, k, v, mask, n):
    """The fused kernel on n chunks of queries, each given only the keys it can see (causal)."""
    Tq, S = q.shape[2], k.shape[2]
    out, step = torch.empty_like(q), -(-Tq // n)
    for a in range(0, Tq, step):
        b = min(Tq, a + step)
        e = S - Tq + b  # the last key the chunk's last query sees
        out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :e], v[:, :, :e],
                                                        attn_mask=mask[:, :, a:b, :e], enable_gqa=True)
    return out


def attend_explicit(q, k, v, mask):
    """Grouped matrix products (decode_attention's form for many queries), fp32 softmax, row by row."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    out = torch.empty_like(q)
    for i in range(B):
        s = (q[i].reshape(Hkv, H // Hkv * T, D) @ k[i].transpose(-1, -2)).view(Hkv, H // Hkv, T, -1)
        p = (s.float() * D ** -0.5 + mask[i, :, None]).softmax(-1).to(v.dtype)
        out[i] = (p.view(Hkv, H // Hkv * T, -1) @ v[i]).view(H, T, D)
    return out


def rope_no_copy(x, cos, sin):
    """rope_in_halves without the fp32 copy of x: bf16 x fp32 products are computed in fp32."""
    d = x.shape[-1] // 2
    x1, x2, c, s = x[..., :d], x[..., d:], cos[:, None, :, :d], sin[:, None, :, :d]
    out = torch.empty_like(x)
    torch.sub(x1 * c, x2 * s, out=out[..., :d])
    torch.add(x2 * c, x1 * s, out=out[..., d:])
    return out


def ab(rounds):
    torch.manual_seed(0)
    bf = torch.bfloat16
    B, P, T, H, Hkv, D, C = 11, 79, 407, 9, 3, 64, 576
    S = P + T
    x = (torch.randn(B, T, C) * 3).to(bf)
    norm = M.RMSNorm(C, 1e-5).to(bf)
    norm.weight.data = (1 + 0.1 * torch.randn(C)).to(bf)  # a trained norm's weight is not all ones
    q = (torch.randn(B, T, H, D) * 2).to(bf).transpose(1, 2)  # (B, H, T, D), a view as Attention has it
    cos, sin = M.rope_cos_sin(torch.arange(P, S)[None].expand(B, T), D, 1e4)
    k, v = torch.randn(B, Hkv, S, D).to(bf), torch.randn(B, Hkv, S, D).to(bf)
    visible = (torch.arange(S)[None] <= torch.arange(P, S)[:, None])[None, None].repeat(B, 1, 1, 1)
    visible[:3, :, :, P:P + 30] = False  # three left-padded rows
    visible |= (torch.arange(S)[None] == torch.arange(P, S)[:, None])
    mask = torch.zeros(visible.shape, dtype=bf).masked_fill_(~visible, float("-inf"))
    qr = MF.rope_in_halves(q, cos, sin)
    # a decoding step: 20 rows, one query each, the cache's first 500 of 530 slots
    qd = torch.randn(20, 1, H, D).transpose(1, 2)
    kd, vd = torch.randn(20, Hkv, 530, D), torch.randn(20, Hkv, 530, D)
    md = torch.zeros(20, 1, 1, 500)
    md[:4, ..., :30] = float("-inf")

    def sdpa(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)

    groups = {
        "RMSNorm (11 x 407 x 576)": [("model.RMSNorm", lambda: norm(x)),
                                     ("F.rms_norm (fused kernel)", lambda: F.rms_norm(x, (C,), norm.weight, 1e-5))],
        "RoPE, queries (11 x 9 x 407 x 64)": [("model.apply_rope", lambda: M.apply_rope(q, cos, sin)),
                                              ("rope_in_halves (rerank.py)", lambda: MF.rope_in_halves(q, cos, sin)),
                                              ("rope_in_halves without the fp32 copy", lambda: rope_no_copy(q, cos, sin))],
        "attention, prompts (11 x 9 x 407 queries, 486 keys)": [
            ("fused kernel with the mask (rerank.py)", lambda: sdpa(qr, k, v, mask)),
            ("fused kernel, no mask (timing only)", lambda: F.scaled_dot_product_attention(qr, k, v, enable_gqa=True)),
            ("fused kernel, 2 chunks of queries", lambda: attend_in_chunks(qr, k, v, mask, 2)),
            ("fused kernel, 8 chunks of queries", lambda: attend_in_chunks(qr, k, v, mask, 8)),
            ("grouped matrix products, fp32 softmax", lambda: attend_explicit(qr, k, v, mask))],
    }
    for dt in (bf, torch.float32):
        d = str(dt)[6:]
        a = (qd.to(dt), kd.to(dt)[:, :, :500], vd.to(dt)[:, :, :500], md.to(dt))  # k, v: slices of the cache
        groups[f"attention, a decoding step (20 x 9 queries, 500 keys), {d}"] = [
            ("fused kernel", functools.partial(sdpa, *a)), ("decode_attention", functools.partial(MF.decode_attention, *a))]
    print("\n| part | variant | max diff against the first | best ms | median ms |\n|---|---|---|---|---|")
    for name, variants in groups.items():
        ref = variants[0][1]().float()
        times = {name_: [] for name_, _ in variants}
        for _ in range(rounds):
            for name_, f in variants:
                t = time.perf_counter()
                for _ in range(3):
                    f()
                times[name_].append((time.perf_counter() - t) / 3 * 1e3)
        for name_, f in variants:
            ts = sorted(times[name_])
            diff = (f().float() - ref).abs().max().item()
            print(f"| {name} | {name_} | {diff:.2g} | {ts[0]:.2f} | {ts[len(ts) // 2]:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"], help="profile in these dtypes")
    ap.add_argument("--skip-ab", action="store_true", help="profile only")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for cls, name, text in PARTS:
        label(cls, name, text)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for d in args.dtypes:
        profile_parts(getattr(torch, d))
    if not args.skip_ab:
        ab(args.rounds)


if __name__ == "__main__":
    main()
