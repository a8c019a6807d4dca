"""Does SFT learn as fast per step under bf16 autocast as in fp32? Same records, same steps.

    python data/make_sft.py --datasets manpages --mapping binary --max-queries 4 --max-positives 1 \\
        --n-hard 1 --n-medium 0 --n-easy 0 --out runs/bf16/records.jsonl
    python bench/bf16_learning.py --data runs/bf16/records.jsonl --steps 6

Trains LoRA r16 on the built-in model over the same 8 records (two micro-batches of 4, AdamW lr
1e-3, clipping 1.0) from the same seed, three ways, and prints the loss of every step and the time:

    fp32           no autocast
    bf16           torch.autocast(bf16); LoRA's update added to the layer output in fp32 (sft.py)
    bf16, bf16 add the same, but the update added to the bf16 output in bf16

The third is what a plain `y + lora(x)` under autocast does: early in training the update is
small against y, and bf16 (8 bits of mantissa) rounds most of it away.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import model_fast  # noqa: E402
import sft  # noqa: E402
import training  # noqa: E402


def bf16_add_forward(self, x):  # the variant: the update added in bf16
    y = F.linear(x, self.weight, self.bias)
    return y.add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)


def run(path, records, steps, bf16, lora_layers, max_doc_tokens):
    torch.manual_seed(0)
    model, tok = M.load(path, device="cpu", dtype=torch.float32, verbose=False)
    model_fast.enable_fast_paths(model)  # as sft.py does
    params = training.add_lora(model, 16, 32, last_layers=lora_layers)
    enc = sft.encode_records(tok, records, max_doc_tokens)
    n_target = sum(len(c) for _, c in enc)
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        total = 0.0
        for j in range(0, len(enc), 4):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                lp, mask = M.completion_logprobs(model, [p for p, _ in enc[j:j + 4]], [c for _, c in enc[j:j + 4]])
            loss = -(lp * mask).sum() / n_target
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="SFT records (the first 8 are used)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the built-in base model)")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per variant")
    ap.add_argument("--lora-layers", type=int, default=0, help="LoRA on the last N blocks (0 = all)")
    ap.add_argument("--max-doc-tokens", type=int, default=64, help="document truncation")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from data.convert_smollm2 import ensure_base_model
        args.model = ensure_base_model()
    records = sft.read_records(args.data)[:8]
    plain = training.LoRALinear.forward
    for name, bf16, forward in (("fp32", False, plain), ("bf16", True, plain), ("bf16, bf16 add", True, bf16_add_forward)):
        training.LoRALinear.forward = forward
        losses, secs = run(args.model, records, args.steps, bf16, args.lora_layers, args.max_doc_tokens)
        print(f"{name:15s} " + " ".join(f"{x:.4f}" for x in losses) + f"   {secs:.1f} s", flush=True)
    training.LoRALinear.forward = plain


if __name__ == "__main__":
    main()
