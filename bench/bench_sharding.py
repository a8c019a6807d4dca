"""Benchmark: memory per process of DDP against FSDP (sft.py --sharding), and what gathering the
weights once per rollout batch saves (sharding.gathered).

    python bench/bench_sharding.py                          # built-in SmolLM2-135M, 2 CPU processes
    python bench/bench_sharding.py --model tests/fixtures/llama --max-doc-tokens 32   # seconds
    python bench/bench_sharding.py --part rollouts --model tests/fixtures/llama

--part memory (the default): the same few full-fine-tuning steps of sft.py (--lora-rank 0) on the
same synthetic records, under `torchrun --nproc_per_node N` once with --sharding ddp and once with
--sharding fsdp, each run in fresh processes. Per process: the resident set after loading (model,
DDP or FSDP set up, optimizer built; its state is allocated at the first step) and the peak
resident set during training (the kernel's high-water mark, VmHWM in /proc/self/status, reset by
writing "5" to /proc/self/clear_refs just before the first step, so loading does not count),
the mean step time and the loss of each step (the two modes train the same model: the losses
agree to fp32 rounding). sft.py's saving is switched off (the bench measures training).
Resident sets include the Python and torch runtime of each process (a few hundred MB).

--part rollouts: the model sharded over N processes generates the same rows on every process
(no stop token, so all make the same number of steps: without gathering, every process must run
every forward in lockstep), once as it is (the blocks' weights gathered in every forward: one
all-gather per block per token) and once inside sharding.gathered (one all-gather per FSDP unit
for the whole batch). Prints the all-gathers counted (calls of torch.distributed.all_gather_single,
what FSDP uses) and the time of each.
"""
import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = ("list directory contents copy files archive search tree remove link shell print process "
         "memory network socket kernel module user group permission file system mount disk").split()


def rss_mb(field="VmRSS") -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_records(path: str, n: int, doc_words: int, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"query": " ".join(rng.choice(WORDS) for _ in range(4)),
                                "doc": " ".join(rng.choice(WORDS) for _ in range(doc_words)),
                                "score": rng.choice([0, 10])}) + "\n")


# ----------------------------------------------------------------------------- workers (under torchrun)


def memory_worker(args):
    import sft
    import training

    rank = int(os.environ.get("RANK", "0"))
    measured = {}
    start_or_resume = sft.start_or_resume

    def start_then_mark(*a, **k):  # called right before the first step: loading is done
        out = start_or_resume(*a, **k)
        measured["rss_after_load_mb"] = rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            measured["peak_reset"] = True
        except OSError:
            measured["peak_reset"] = False
        measured["t0"] = time.perf_counter()
        return out

    sft.start_or_resume = start_then_mark
    sft.save_step = training.save_final = lambda *a, **k: None
    argv = ["--model", args.model, "--data", os.path.join(args.work, "records.jsonl"), "--out",
            os.path.join(args.work, args.worker), "--lora-rank", "0", "--sharding", args.worker,
            "--batch-size", str(args.batch_size), "--micro-batch-size", str(args.micro_batch_size),
            "--steps", str(args.steps), "--max-doc-tokens", str(args.max_doc_tokens), "--save-every", "0",
            "--sample-every", "0", "--eval-every", "0", "--lr", "1e-5"]
    sft.main(argv)
    measured["seconds_per_step"] = (time.perf_counter() - measured.pop("t0")) / args.steps
    measured["peak_rss_mb"] = rss_mb("VmHWM")
    with open(os.path.join(args.work, f"{args.worker}.{rank}.json"), "w") as f:
        json.dump(measured, f)


def rollouts_worker(args):
    import torch
    import torch.distributed as dist

    import model as M
    import model_fast
    from sharding import gathered, load_sharded
    from training import start_processes

    torch.manual_seed(0)
    procs = start_processes("cpu")
    model, tok = load_sharded(args.model, procs, torch.device("cpu"), torch.float32)
    model_fast.enable_fast_paths(model)
    calls = [0]
    all_gather = dist.all_gather_single

    def counted(*a, **k):
        calls[0] += 1
        return all_gather(*a, **k)

    dist.all_gather_single = counted
    prompt = tok.encode(tok.chat([{"role": "user", "content": " ".join(WORDS[:20])}]))
    rows = [prompt] * args.rows

    def run(gather: bool):
        model.reshard()  # every run starts sharded (the root unit stays gathered after a forward)
        dist.barrier()
        calls[0], t0 = 0, time.perf_counter()
        with torch.no_grad(), (gathered(model) if gather else contextlib.nullcontext()):
            M.generate(model, rows, args.new_tokens, temperature=1.0, seeds=range(len(rows)), pad_id=tok.pad_id)
        return calls[0], time.perf_counter() - t0

    run(True)  # warm-up (and FSDP's lazy initialisation)
    result = {"per_forward": run(False), "gathered": run(True)}
    if procs.master:
        with open(os.path.join(args.work, "rollouts.json"), "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- the parent


def launch(args, worker: str, work: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", str(args.port), os.path.abspath(__file__), "--worker", worker, "--work", work,
           *sys.argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{worker} run failed:\n{done.stderr[-4000:]}")


def memory(args, work):
    import torch

    import model as M

    write_records(os.path.join(work, "records.jsonl"), args.batch_size * args.steps, args.max_doc_tokens)
    cfg = M.load_config(args.model)
    with torch.device("meta"):
        n = sum(p.numel() for p in M.Transformer(cfg).parameters())
    res, losses = {}, {}
    for mode in ("ddp", "fsdp"):
        launch(args, mode, work)
        res[mode] = [json.load(open(os.path.join(work, f"{mode}.{r}.json"))) for r in range(args.nproc)]
        losses[mode] = [json.loads(line)["loss"] for line in open(os.path.join(work, mode, "log.jsonl"))]
    per = lambda mode, key, fmt: " / ".join(fmt.format(r[key]) for r in res[mode])
    print(f"\n{args.model}: {n:,} parameters, {args.nproc} processes, {args.steps} full fine-tuning steps of "
          f"{args.batch_size} synthetic records (micro-batch {args.micro_batch_size}, documents of "
          f"{args.max_doc_tokens} words), fp32, {args.threads} thread(s) a process")
    print(f"weights + gradients + AdamW moments, fp32: {16 * n / 2**20:,.0f} MB whole, "
          f"{16 * n / args.nproc / 2**20:,.0f} MB as 1/{args.nproc} shards\n")
    print("| per process (rank 0 / rank 1 ...) | --sharding ddp | --sharding fsdp |")
    print("|---|---|---|")
    print(f"| resident set after loading (MB) | {per('ddp', 'rss_after_load_mb', '{:,.0f}')} | "
          f"{per('fsdp', 'rss_after_load_mb', '{:,.0f}')} |")
    print(f"| peak resident set in training (MB) | {per('ddp', 'peak_rss_mb', '{:,.0f}')} | "
          f"{per('fsdp', 'peak_rss_mb', '{:,.0f}')} |")
    print(f"| seconds a step | {per('ddp', 'seconds_per_step', '{:.2f}')} | "
          f"{per('fsdp', 'seconds_per_step', '{:.2f}')} |")
    print(f"| loss of each step | {', '.join(f'{x:.4f}' for x in losses['ddp'])} | "
          f"{', '.join(f'{x:.4f}' for x in losses['fsdp'])} |")
    if not all(r["peak_reset"] for mode in res for r in res[mode]):
        print("(/proc/self/clear_refs was not writable: the peaks include loading)")


def rollouts(args, work):
    launch(args, "rollouts", work)
    r = json.load(open(os.path.join(work, "rollouts.json")))
    print(f"\n{args.model} sharded over {args.nproc} processes: {args.rows} rows x {args.new_tokens} new tokens")
    print("| weights | all-gathers | seconds |")
    print("|---|---|---|")
    print(f"| gathered by each forward (per token) | {r['per_forward'][0]} | {r['per_forward'][1]:.3f} |")
    print(f"| sharding.gathered, once for the batch | {r['gathered'][0]} | {r['gathered'][1]:.3f} |")


def main():
    ap = argparse.ArgumentParser(description="DDP vs FSDP memory per process; gathered rollouts.")
    ap.add_argument("--part", default="memory", choices=["memory", "rollouts"], help="what to measure")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"),
                    help="HF-layout checkpoint (default: the built-in model)")
    ap.add_argument("--nproc", type=int, default=2, help="processes")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads a process")
    ap.add_argument("--steps", type=int, default=3, help="memory: training steps")
    ap.add_argument("--batch-size", type=int, default=8, help="memory: global batch (sequences)")
    ap.add_argument("--micro-batch-size", type=int, default=2, help="memory: sequences a forward on one process")
    ap.add_argument("--max-doc-tokens", type=int, default=128, help="memory: words a synthetic document")
    ap.add_argument("--rows", type=int, default=8, help="rollouts: rows generated")
    ap.add_argument("--new-tokens", type=int, default=16, help="rollouts: tokens generated a row")
    ap.add_argument("--port", type=int, default=29561, help="torchrun --master_port")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = os.path.abspath(args.model)
    if args.worker == "rollouts":
        return rollouts_worker(args)
    if args.worker:
        return memory_worker(args)
    if not os.path.isdir(args.model):
        sys.exit(f"error: --model {args.model}: no such checkpoint directory")
    with tempfile.TemporaryDirectory() as work:
        (memory if args.part == "memory" else rollouts)(args, work)


if __name__ == "__main__":
    main()
