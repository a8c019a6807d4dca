"""Teacher labelling as in ERank: reasoning + integer score for (query, document) pairs.

    python tools/label.py --model TEACHER_DIR --input pairs.jsonl --out runs/sft/labelled.jsonl
    python tools/label.py --model TEACHER_DIR --input runs/sft/train.jsonl --samples 3 --limit 200

Input: JSONL of {"query", "doc", "instruction"?} (other fields are carried over, so the output of
data/make_sft.py works as input). For each pair the teacher writes `--samples` completions of the
thinking-mode ERank prompt (rerank.build_prompt(thinking=True)), sampled with --temperature, each
row from its own seeded generator (seed = --seed * 1_000_003 + pair index * samples + sample).

Consensus rule (ERank, arXiv 2509.00520, the SFT data of the paper's first stage: 3 samples, keep
the one whose score is closest to their mean):
  - a sample that hits --max-new-tokens without the end token is dropped ("too long"; the paper
    drops outputs over 2,048 tokens);
  - a sample with no answer in 0..10 (rerank.parse_answer) is dropped ("unparsed");
  - among the remaining samples, the one whose score is closest to the mean of their scores is
    kept; ties go to the earliest sample;
  - a pair with no remaining sample is dropped and counted.
Output: sft.py records {"query", "doc", "instruction"?, "score", "reasoning", "samples"} where
"reasoning" is the text inside <think>...</think> (the text before <answer> when the teacher wrote
no think tags) and "samples" lists every sample's parsed score (null = dropped). The counts are
printed at the end, and written to <out>.stats.json.

Where this deviates from the paper: any HF-layout checkpoint can be the teacher (the paper:
QwQ-32B); the default limit is 1,024 new tokens; pairs are processed in order, and the output is
written (atomically) every --save-every pairs so an interrupted run can continue with --resume.
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import files  # noqa: E402
import model as M  # noqa: E402
import model_fast  # noqa: E402
from data.beir import DataFormatError, read_jsonl  # noqa: E402
from rerank import (HelpFormatter, InputError, build_prompt, check_model_arg, parse_answer, positive_int,  # noqa: E402
                    truncate)

THINK = re.compile(r"<think>(.*?)</think>", re.S)


def consensus(scores: list) -> int | None:
    """Index of the sample whose score is closest to the mean of the parsed scores (None entries
    are dropped samples); ties -> the earliest. None when no sample has a score."""
    kept = [(i, s) for i, s in enumerate(scores) if s is not None]
    if not kept:
        return None
    mean = sum(s for _, s in kept) / len(kept)
    return min(kept, key=lambda t: (abs(t[1] - mean), t[0]))[0]


def reasoning_of(text: str) -> str:
    """The text inside <think>...</think>; without think tags, the text before the last <answer>."""
    m = THINK.search(text)
    if m:
        return m.group(1).strip()
    return text[:text.rfind("<answer>")].strip() if "<answer>" in text else text.strip()


def read_pairs(path: str) -> list[dict]:
    """The JSONL input, checked by data.beir.read_jsonl; a bad line raises DataFormatError naming the
    file, the line and the field. Fields other than query, doc and instruction are carried over."""
    if not os.path.isfile(path):
        raise InputError(f"--input {path}: no such file")
    pairs = [r for _, r in read_jsonl(path, ("query", "doc"), optional=("instruction",), non_empty=("query", "doc"))]
    if not pairs:
        raise DataFormatError(f"{path}: no pairs (expected JSONL of {{query, doc, instruction?}})")
    return pairs


def label(model, tok, pairs, samples=3, temperature=0.7, top_p=1.0, max_new_tokens=1024,
          max_doc_tokens=512, batch_pairs=4, seed=0, start=0, stats=None, on_batch=None):
    """Yield (pair index, record or None) for pairs[start:], in order. `stats` counts outcomes."""
    stats = stats if stats is not None else {}
    for k in ("pairs", "kept", "dropped_pairs", "samples", "too_long", "unparsed"):
        stats.setdefault(k, 0)
    stop_ids = sorted({i for i in (tok.im_end, model.config.eos_token_id) if isinstance(i, int)})
    for b in range(start, len(pairs), batch_pairs):
        idx = list(range(b, min(b + batch_pairs, len(pairs))))
        prompts, seeds = [], []
        for i in idx:
            doc, _ = truncate(tok, pairs[i]["doc"], max_doc_tokens)
            ids = tok.encode(build_prompt(tok, pairs[i]["query"], doc, pairs[i].get("instruction"), thinking=True))
            prompts += [ids] * samples  # identical prompts are prefilled once by model.generate
            seeds += [seed * 1_000_003 + i * samples + j for j in range(samples)]
        out = M.generate(model, prompts, max_new_tokens, stop_ids=stop_ids, temperature=temperature,
                         top_p=top_p, seeds=seeds, pad_id=tok.pad_id)
        for n, i in enumerate(idx):
            scores, texts = [], []
            for j in range(samples):
                row = n * samples + j
                ids = out.tokens[row][out.mask[row]].tolist()
                ended = bool(ids) and ids[-1] in stop_ids
                text = tok.decode(ids, skip_special_tokens=True)
                s = parse_answer(text) if ended else None
                stats["samples"] += 1
                stats["too_long"] += not ended
                stats["unparsed"] += ended and s is None
                scores.append(s)
                texts.append(text)
            stats["pairs"] += 1
            c = consensus(scores)
            if c is None:
                stats["dropped_pairs"] += 1
                yield i, None
                continue
            stats["kept"] += 1
            rec = {k: v for k, v in pairs[i].items() if k not in ("score", "reasoning")}
            rec.update(score=scores[c], reasoning=reasoning_of(texts[c]), samples=scores)
            yield i, rec
        if on_batch:
            on_batch(idx[-1] + 1)


def main(argv=None):
    """Returns the exit status: 0, or 2 after one line naming the bad input."""
    ap = argparse.ArgumentParser(description="Label (query, document) pairs with a teacher's reasoning and score.",
                                 formatter_class=HelpFormatter)
    g = ap.add_argument_group("input and output")
    g.add_argument("--input", required=True, help="JSONL of {query, doc, instruction?}")
    g.add_argument("--out", default="runs/sft/labelled.jsonl", help="JSONL of sft.py records")
    g.add_argument("--limit", type=int, default=0, help="label only the first N pairs (0 = all)")
    g.add_argument("--save-every", type=positive_int, default=50, help="rewrite the output every N pairs")
    g.add_argument("--resume", action="store_true", help="continue after the pairs already in <out>.stats.json")
    g = ap.add_argument_group("teacher")
    g.add_argument("--model", default=None, help="teacher checkpoint (default: the built-in model)")
    g.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if available)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--samples", type=positive_int, default=3, help="samples per pair (paper: 3)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (paper: not stated)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--max-new-tokens", type=positive_int, default=1024, help="longer outputs are dropped (paper: 2,048)")
    g.add_argument("--max-doc-tokens", type=positive_int, default=512, help="documents are truncated to this many tokens")
    g.add_argument("--batch-pairs", type=positive_int, default=4, help="pairs generated together (x samples rows)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = ap.parse_args(argv)
    if args.limit < 0:
        ap.error(f"argument --limit: must be 0 (all) or more, got {args.limit}")
    if args.temperature < 0:
        ap.error(f"argument --temperature: must be 0 (greedy) or more, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        ap.error(f"argument --top-p: must be in (0, 1], got {args.top_p}")

    try:  # every check that needs no model comes first
        pairs = read_pairs(args.input)
        check_model_arg(args.model)
        stats_path = args.out + ".stats.json"
        records, stats, start = [], {}, 0
        if args.resume and os.path.exists(stats_path):
            saved = json.load(open(stats_path))
            stats, start = saved["stats"], saved["done"]
            records = [json.loads(line) for line in open(args.out, encoding="utf-8") if line.strip()]
            print(f"resuming after {start} pairs ({len(records)} records)", file=sys.stderr)
        if args.limit:
            pairs = pairs[:args.limit]
        if args.model is None:
            from data.convert_smollm2 import ensure_base_model
            args.model = ensure_base_model()
        try:
            model, tok = M.load(args.model, device=args.device, dtype=args.dtype, verbose=True)
        except ValueError as e:  # a config or weights model.py does not support, named by load
            raise InputError(f"--model {args.model}: {e}") from None
    except (InputError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_fast.enable_fast_paths(model, inference_layout=True)
    print("args " + json.dumps(vars(args), sort_keys=True), file=sys.stderr)

    def flush(done):
        files.write_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        files.write_atomic(stats_path, json.dumps({"done": done, "stats": stats, "args": vars(args)}, indent=1) + "\n")

    from tqdm import tqdm
    bar = tqdm(total=len(pairs), initial=start, desc="label")
    last_flush = start

    def on_batch(done):
        nonlocal last_flush
        bar.update(done - bar.n)
        if done - last_flush >= args.save_every:
            flush(done)
            last_flush = done

    for _, rec in label(model, tok, pairs, args.samples, args.temperature, args.top_p, args.max_new_tokens,
                        args.max_doc_tokens, args.batch_pairs, args.seed, start, stats, on_batch):
        if rec is not None:
            records.append(rec)
    bar.close()
    flush(len(pairs))
    print(f"{stats['pairs']} pairs: kept {stats['kept']}, dropped {stats['dropped_pairs']} with no usable sample; "
          f"{stats['samples']} samples: {stats['too_long']} too long (> {args.max_new_tokens} tokens), "
          f"{stats['unparsed']} unparsed", file=sys.stderr)
    print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
