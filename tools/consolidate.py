"""Turn a sharded training checkpoint into an HF-layout model directory.

    python tools/consolidate.py runs/sft-4b/step-00050 --out runs/sft-4b/step-00050-hf
    python rerank.py --model runs/sft-4b/step-00050-hf ...      # or transformers' from_pretrained

sft.py and rl.py with --sharding fsdp write step-N/ and last/ as shards: sharded/ holds each
process's slice of every weight and of the AdamW state (torch.distributed.checkpoint), beside
config.json, the tokenizer and train_state.pt; --resume reads them back into any number of
processes. This gathers the weights (not the optimizer state) into one model.safetensors, in
one process without a process group; the whole model must fit in CPU memory (fp32: 4 bytes a
parameter). final/ needs none of this: it is written in HF layout at the end of training.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sharding import consolidate  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description="A --sharding fsdp checkpoint (step-N/, last/) -> an HF-layout model.")
    ap.add_argument("checkpoint", help="checkpoint directory with sharded/ inside (e.g. runs/x/step-00050)")
    ap.add_argument("--out", required=True, help="output directory (HF layout: config.json, model.safetensors, "
                    "tokenizer files; written atomically)")
    args = ap.parse_args(argv)
    try:
        consolidate(args.checkpoint, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
