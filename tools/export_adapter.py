"""Combine training adapters into the one small file the default reranker ships with.

    python tools/export_adapter.py runs/sft/final runs/rl-rr/final --out weights/erank-135m
    python tools/export_adapter.py weights/erank-135m/adapter.safetensors runs/sft2/final runs/rl2/final
                                  # a run continued with sft.py --init-adapter: the old delta first

Each checkpoint written by sft.py / rl.py with LoRA holds `adapter.safetensors`: pairs
'<module>.lora_A' (r, in) and '<module>.lora_B' (out, r) with the LoRA scale folded into B, a
delta W += B @ A relative to the model that run started from. SFT starts from the base model and
RL from the SFT model, so the total delta is B1 @ A1 + B2 @ A2, which is exactly one adapter of
rank r1 + r2: A = [A1; A2] stacked along r, B = [B1, B2]. Stored in fp16 (half the bytes); the
README's numbers for the default model are measured on this file, not on the run it came from.
"""
import argparse
import hashlib
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from files import apply_adapter, atomic_output, save_tensors  # noqa: E402


def adapter_file(path: str) -> str:
    """A checkpoint directory's adapter.safetensors, or an adapter file given directly."""
    return path if path.endswith(".safetensors") else os.path.join(path, "adapter.safetensors")


def combine(paths: list[str]) -> dict:
    parts = [load_file(adapter_file(p)) for p in paths]
    keys = sorted({k for part in parts for k in part})
    out = {}
    for k in keys:
        have = [part[k] for part in parts if k in part]
        out[k] = torch.cat(have, dim=0 if k.endswith(".lora_A") else 1).to(torch.float16).contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="training checkpoints (or adapter files, e.g. the one a run was "
                    "started from with --init-adapter) in the order they were trained")
    ap.add_argument("--out", default="weights/erank-135m", help="directory for adapter.safetensors")
    ap.add_argument("--model-out", default=None, help="also write the base model with the adapter merged, an "
                    "HF-layout checkpoint for rerank.py / eval.py --model (e.g. to evaluate an intermediate step)")
    args = ap.parse_args()
    for p in args.checkpoints:
        if not os.path.exists(adapter_file(p)):
            sys.exit(f"{p}: no adapter.safetensors (was it trained with LoRA?)")
    adapter = combine(args.checkpoints)
    with atomic_output(args.out) as tmp:
        os.makedirs(tmp)
        save_tensors(adapter, os.path.join(tmp, "adapter.safetensors"))
        info = {"base": "SmolLM2-135M-Instruct (data/convert_smollm2.py)", "checkpoints": args.checkpoints,
                "rank": int(next(v for k, v in adapter.items() if k.endswith(".lora_A")).shape[0]),
                "dtype": "float16",
                "sha256": hashlib.sha256(open(os.path.join(tmp, "adapter.safetensors"), "rb").read()).hexdigest()}
        for p in args.checkpoints:  # keep the training arguments next to the shipped weights
            if os.path.exists(os.path.join(p, "args.json")):
                info.setdefault("args", {})[p] = json.load(open(os.path.join(p, "args.json")))
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(info, f, indent=2)
    size = os.path.getsize(os.path.join(args.out, "adapter.safetensors"))
    print(f"wrote {args.out}/adapter.safetensors: rank {info['rank']}, {size / 2**20:.1f} MiB")
    if args.model_out:
        import model as M
        from data.convert_smollm2 import ensure_base_model

        model, tok = M.load(ensure_base_model(), device="cpu", dtype=torch.float32)
        apply_adapter(model, os.path.join(args.out, "adapter.safetensors"))
        M.save(model, tok, args.model_out)
        print(f"wrote {args.model_out}: the base model with it merged")


if __name__ == "__main__":
    main()
