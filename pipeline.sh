#!/usr/bin/env bash
# ERank-135M end to end on this CPU: datasets -> SFT records -> SFT -> RL (rr, ndcg) -> evaluation
# -> the shipped adapter -> plots. Run it in the background:
#
#     nohup bash pipeline.sh > runs/pipeline.log 2>&1 &
#
# Every step skips itself when its output exists and the training steps pass --resume when a
# checkpoint is there, so running it again after an interruption continues where it stopped.
# Settings are sized for a 2-core CPU (see README, "Training ERank-135M"); on a GPU raise the
# record count, --docs-per-query, --group-size and --steps.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p runs/logs runs/results

step() { echo "== $(date +%H:%M:%S) $*"; }
resume_flag() { [ -d "$1/last" ] && echo --resume || true; }

step "datasets"
[ -d data/beir/pyfaq ] && [ -d data/beir/manpages ] && [ -d data/beir/foldoc ] || python data/build_datasets.py

step "SFT records"
[ -f runs/sft/train.jsonl ] || python data/make_sft.py --max-queries 70 --max-positives 2 --out runs/sft/train.jsonl

step "SFT"
[ -d runs/sft/final ] || python sft.py --data runs/sft/train.jsonl --max-doc-tokens 128 --batch-size 16 \
    --micro-batch-size 4 --lr 2e-4 --eval-every 1000 --dev-queries 10 --dev-top-k 10 --save-every 5 \
    --sample-every 10 --out runs/sft $(resume_flag runs/sft)

for reward in rr ndcg; do
    step "RL ($reward)"
    [ -d runs/rl-$reward/final ] || python rl.py --model runs/sft/final --reward $reward --docs-per-query 8 \
        --group-size 4 --queries-per-step 1 --max-doc-tokens 128 --steps 12 --lr 3e-5 --save-every 2 \
        --eval-every 12 --dev-queries 10 --dev-top-k 10 --sample-every 2 --out runs/rl-$reward \
        $(resume_flag runs/rl-$reward)
done

step "shipped adapter: SFT + RL (rr)"
[ -f weights/erank-135m/adapter.safetensors ] || python data/export_adapter.py runs/sft/final runs/rl-rr/final

step "evaluation (first 88 pyfaq test queries, BM25 top-20; the scored-pair cache makes it resumable)"
evaluate() {  # name model
    [ -f runs/results/pyfaq-test88-$1.json ] || python eval.py --data data/beir/pyfaq --split test --top-k 20 \
        --max-doc-tokens 160 --limit 88 --name $1 --model $2 --json runs/results/pyfaq-test88-$1.json
}
evaluate base models/SmolLM2-135M-Instruct
evaluate sft runs/sft/final
evaluate sft-rl-rr runs/rl-rr/final
evaluate sft-rl-ndcg runs/rl-ndcg/final

step "plots"
python bench/plot.py --sft runs/sft --rl runs/rl-rr runs/rl-ndcg --tables runs/results/pyfaq-test88-*.json || true
step "done"
