"""Benchmark: sft.py's training step against a plain transformers training loop.

    python bench/bench_sft.py                          # built-in SmolLM2-135M, fp32, CPU
    python bench/bench_sft.py --seqs 8 --steps 3 --variants sft-lora sft-full hf-full

Every variant trains the SAME model (the built-in checkpoint directory) on the SAME micro-batch of
real SFT records (runs/sft/train.jsonl, made by data/make_sft.py; the first --seqs records,
documents cut to --max-doc-tokens as sft.py does), with the same optimizer (AdamW, lr 1e-4,
gradient clipping 1.0), one micro-batch per step:

    sft-lora     model.completion_logprobs + LoRA r16 on all linear layers (sft.py's default)
    sft-lora-gc  the same with gradient checkpointing (model.gradient_checkpointing)
    sft-full     model.completion_logprobs, full fine-tuning
    sft-full-gc  the same with gradient checkpointing
    sft-lora10   LoRA r16 on the last 10 decoder blocks only (--lora-layers 10: no backward below)
    hf-full      transformers AutoModelForCausalLM.from_pretrained(same dir), right padding,
                 labels -100 on prompt and padding, loss = model(input_ids, attention_mask,
                 labels).loss, full fine-tuning (the baseline)
    ...-bf16     any of them under torch.autocast(bf16) (fp32 weights, optimizer and loss), as
                 sft.py --dtype bfloat16 runs

sft.py's step computes logits only at the positions that predict completion tokens (a handful
per sequence in fast mode) instead of (B, T, 49152) logits at every position.

Measurements, each variant in a fresh child process (so allocations do not leak between them):
  - tokens/s: real (non-padding) tokens of the micro-batch x timed steps / wall time of the timed
    steps; one untimed warm-up step first (it also allocates the optimizer state);
  - peak memory: the process's peak resident set size during training minus its resident set
    size just before the first step (model loaded, optimizer built). The kernel's high-water mark
    (VmHWM in /proc/self/status) is reset by writing "5" to /proc/self/clear_refs right before
    the first step, so loading the checkpoint does not count. It includes gradients, optimizer
    state, activations and logits (everything a training step adds on top of the weights).
The CPU may be shared with other jobs, so tokens/s is noisy: the variants run in turn, --rounds
times, and each reports its best round (the least disturbed one); compare ratios from one run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = ("sft-lora", "sft-lora-gc", "sft-full", "sft-full-gc", "sft-lora10", "hf-full")
VARIANTS += tuple(v + "-bf16" for v in VARIANTS)
DEFAULT = ("sft-lora", "sft-lora-gc", "sft-full", "hf-full")


def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = json.load(open(args.batch_file))
    prompts, comps = batch["prompts"], batch["completions"]
    real_tokens = sum(len(p) + len(c) for p, c in zip(prompts, comps))
    bf16 = args.child.endswith("-bf16")
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    if args.child.startswith("sft"):
        import model as M
        import model_fast
        import training

        model, tok = M.load(args.model, device="cpu", dtype=torch.float32)
        model_fast.enable_fast_paths(model)  # as sft.py does
        last = 10 if args.child.startswith("sft-lora10") else 0
        params = (training.add_lora(model, 16, 32, last_layers=last) if args.child.startswith("sft-lora")
                  else list(model.parameters()))
        if args.child.removesuffix("-bf16").endswith("-gc"):  # the MLP half of the first N blocks recomputed
            model.gradient_checkpointing = args.checkpoint_layers or len(model.model.layers)

        def step():
            with autocast():
                logps, mask = M.completion_logprobs(model, prompts, comps)
            loss = -(logps * mask).sum() / mask.sum()
            loss.backward()
            return loss
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        params = list(model.parameters())
        T = max(len(p) + len(c) for p, c in zip(prompts, comps))
        ids = torch.zeros(len(prompts), T, dtype=torch.long)
        attn = torch.zeros(len(prompts), T, dtype=torch.long)
        labels = torch.full((len(prompts), T), -100, dtype=torch.long)
        for i, (p, c) in enumerate(zip(prompts, comps)):  # right padding, the usual training layout
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            attn[i, :len(p) + len(c)] = 1
            labels[i, len(p):len(p) + len(c)] = torch.tensor(c)

        def step():
            with autocast():
                loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            return loss

    model.train()
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)

    def train_step():
        loss = step()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark: loading does not count
    rss0 = rss_kb("VmRSS")
    losses = [train_step()]  # warm-up (also allocates AdamW's state)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        losses.append(train_step())
    dt = time.perf_counter() - t0
    peak = rss_kb("VmHWM")
    print(json.dumps({"variant": args.child, "tok_s": real_tokens * args.steps / dt, "step_s": dt / args.steps,
                      "peak_mb": (peak - rss0) / 1024, "rss_before_mb": rss0 / 1024, "losses": losses}))


def main():
    ap = argparse.ArgumentParser(description="sft.py step vs a transformers training loop (tokens/s, peak memory).",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the built-in SmolLM2-135M)")
    ap.add_argument("--data", default="runs/sft/train.jsonl", help="SFT records (made if missing)")
    ap.add_argument("--seqs", type=int, default=8, help="sequences in the micro-batch")
    ap.add_argument("--max-doc-tokens", type=int, default=192, help="document truncation, as sft.py")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--checkpoint-layers", type=int, default=0, help="-gc variants: blocks whose MLP half is "
                    "recomputed in backward (0 = all)")
    ap.add_argument("--rounds", type=int, default=2, help="run every variant this many times, keep the best")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT), choices=VARIANTS, help="what to run")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--batch-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        from data.convert_smollm2 import ensure_base_model
        args.model = ensure_base_model()
    if args.child:
        return child(args)

    import model as M
    import sft

    if not os.path.exists(args.data):
        from data.make_sft import main as make_sft
        make_sft(["--max-queries", "20", "--out", args.data])
    tok = M.Tokenizer(args.model)
    records = sft.read_records(args.data)[:args.seqs]
    enc = [sft.encode_record(tok, r, args.max_doc_tokens) for r in records]
    lengths = [len(p) + len(c) for p, c in enc]
    print(f"model {args.model}, CPU, {args.threads} threads; micro-batch {len(enc)} sequences, "
          f"lengths {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}), "
          f"{sum(len(c) for _, c in enc)} target tokens; {args.steps} timed steps after 1 warm-up")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"prompts": [p for p, _ in enc], "completions": [c for _, c in enc]}, f)
    results = {}
    try:
        for v in [v for _ in range(args.rounds) for v in args.variants]:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", v, "--batch-file", f.name, "--model",
                   args.model, "--steps", str(args.steps), "--threads", str(args.threads),
                   "--checkpoint-layers", str(args.checkpoint_layers)]
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{v}: failed\n{r.stderr[-2000:]}")
                continue
            x = json.loads(r.stdout.strip().splitlines()[-1])
            if v not in results or x["tok_s"] > results[v]["tok_s"]:
                results[v] = x
            print(f"{v:17s} {x['tok_s']:8.1f} tok/s  {x['step_s']:6.1f} s/step  peak +{x['peak_mb']:7.0f} MB  "
                  f"loss {x['losses'][0]:.4f} -> {x['losses'][-1]:.4f}", flush=True)
    finally:
        os.remove(f.name)
    base = results.get("hf-full")
    if base:
        print("\nbest of %d rounds" % args.rounds)
        for v, x in results.items():
            print(f"{v:17s} {x['tok_s']:8.1f} tok/s  peak +{x['peak_mb']:7.0f} MB")
        print("\nratios against hf-full (targets: tokens/s >= 1.5x, peak memory <= 0.6x)")
        for v, x in results.items():
            if v != "hf-full":
                print(f"{v:17s} tokens/s x{x['tok_s'] / base['tok_s']:.2f}   peak memory x{x['peak_mb'] / base['peak_mb']:.2f}")
    pairs = [(v, v.removesuffix("-bf16")) for v in results if v.endswith("-bf16") and v.removesuffix("-bf16") in results]
    if pairs:
        print("\nbf16 autocast against the same variant in fp32 (and against hf-full-bf16 when run)")
        ref = results.get("hf-full-bf16")
        for v, fp in pairs:
            x, y = results[v], results[fp]
            vs_ref = f"   tokens/s vs hf-full-bf16 x{x['tok_s'] / ref['tok_s']:.2f}" if ref and v != "hf-full-bf16" else ""
            print(f"{v:17s} tokens/s x{x['tok_s'] / y['tok_s']:.2f}   peak memory x{x['peak_mb'] / y['peak_mb']:.2f}   "
                  f"losses {y['losses'][-1]:.4f} (fp32) / {x['losses'][-1]:.4f} (bf16){vs_ref}")


if __name__ == "__main__":
    main()
