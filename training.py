"""What sft.py and rl.py share: the flags of the model and checkpoints, the processes, autocast,
LoRA, the starting model, the schedule, and checkpoints with exact resume. Each training script
reads as its algorithm and calls these.

    add_model_args(ap, default, help)                 # --model, --dtype, --lora-rank, --init-adapter ...
    procs = start_processes(args.device)              # torchrun: gloo on CPU, nccl on CUDA
    autocast = autocast_for(device, dtype)            # bf16/fp16 matrix products; fp32 weights
    model, tok = load_start(args, procs, device, dtype, sharded)  # --model + --init-adapter
    trainable = prepare_training(model, args, procs)  # speed paths, LoRA, gradient checkpointing
    step, state = start_or_resume(run, resume, total, model, trainable, opt)  # <out>/last, or a fresh log
    lr = set_lr(opt, cosine_lr(step, total, warmup, peak))
    save_step(run, step, model, tok, state)           # step-N/ + last/, old step-N/ pruned
    finish_run(run, step, total, model, tok)          # final/: HF layout, LoRA merged

Data parallelism: under torchrun each process trains on its share of the batch. Replicated
(DDP, the default): every process holds the whole model, and DistributedDataParallel sums the
gradients in backward; it prepares that in its forward, which is why model.py's callers that
apply lm_head themselves still go through forward. Sharded (--sharding fsdp): sharding.py.
"""
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import files
import model as M
import model_fast
from sharding import full_state_dict, is_sharded, load_sharded, load_sharded_checkpoint, save_sharded_checkpoint

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ----------------------------------------------------------------------------- command line: the flags both trainers take


def add_model_args(ap, model_default: str | None, model_help: str):
    """The "model" group: the checkpoint to start from (--model, with the script's default), device,
    dtype, sharding, LoRA, the adapter to start from, gradient checkpointing."""
    g = ap.add_argument_group("model")
    g.add_argument("--model", default=model_default, help=model_help)
    g.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if available)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="autocast dtype; auto: bf16 on CUDA and on CPUs with native bf16 matrix instructions "
                   "(measured to learn as fp32 does: docs/speed.md), else fp32. Weights, LoRA, optimizer state, "
                   "losses, rewards and log-probs stay fp32 either way")
    g.add_argument("--sharding", default="ddp", choices=["ddp", "fsdp"],
                   help="under torchrun: ddp = every process holds the whole model (RL: and the reference), its "
                   "gradients and AdamW state; fsdp = each holds 1/N of them (FSDP2, sharding.py; all parameters "
                   "only, --lora-rank 0): the paper's 4B-32B models")
    g.add_argument("--cpu-offload", action="store_true", help="with --sharding fsdp on CUDA: the shards of the "
                   "weights, gradients and AdamW state live in CPU memory (slower; for when they do not fit)")
    g.add_argument("--lora-rank", type=int, default=16, help="LoRA rank on all linear layers; 0 = all parameters train")
    g.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA scale is alpha / rank")
    g.add_argument("--lora-layers", type=int, default=0, help="LoRA on the last N decoder blocks only (0 = all); "
                   "backward then stops at the first adapted block")
    g.add_argument("--init-adapter", default=None, help="adapter.safetensors merged into --model before training: "
                   "continue from a committed adapter (RL: the policy and the reference are --model plus it); the "
                   "new run's adapter is the delta on top (tools/export_adapter.py adds the two)")
    g.add_argument("--gradient-checkpointing", type=int, nargs="?", const=-1, default=0, metavar="N",
                   help="recompute the MLP half of the first N blocks in backward (no N: all blocks): "
                   "less memory, slower")


def add_dev_args(g):
    """Into a script's evaluation group: the dev set that dev_ndcg reranks."""
    g.add_argument("--dev-data", default="data/beir/manpages", help="BEIR directory whose dev qrels give dev nDCG@10")
    g.add_argument("--dev-split", default="dev", help="qrels split used for evaluation (never pyfaq)")
    g.add_argument("--dev-queries", type=int, default=20, help="queries evaluated (the first N by id)")
    g.add_argument("--dev-top-k", type=int, default=20, help="BM25 candidates reranked per query")


def add_checkpoint_args(ap, out: str, save_every: int):
    """The "checkpoints" group."""
    g = ap.add_argument_group("checkpoints")
    g.add_argument("--out", default=out, help="output directory")
    g.add_argument("--save-every", type=int, default=save_every, help="write step-N/ and last/ every N steps "
                   "(0 = never)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="step-N/ directories kept (the newest; "
                   "older ones are deleted; 0 = keep all). last/ and final/ are always kept")
    g.add_argument("--resume", action="store_true", help="continue exactly from <out>/last, with the arguments "
                   "it was started with (flags given again override them; a switch saved on stays on)")


def parse_resuming(ap, argv=None):
    """Parse the command line; with --resume, the arguments saved in <out>/last/args.json fill in
    every flag not given again, so `--resume --out DIR` alone continues a run. Not carried over:
    --max-steps (where the last invocation chose to stop), --device and --cpu-offload (where this one
    runs). A switch saved on (store_true) stays on. start_or_resume then checks that what was given
    again still matches the checkpoint."""
    args = ap.parse_args(argv)
    saved_path = os.path.join(args.out, "last", "args.json")
    if not args.resume or not os.path.exists(saved_path):
        return args  # start_or_resume says what is missing
    try:
        with open(saved_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{saved_path}: cannot read the saved arguments ({e})")
    if not isinstance(saved, dict):
        raise SystemExit(f"{saved_path}: the saved arguments are not a JSON object")
    keep = set(vars(args)) - {"resume", "out", "max_steps", "device", "cpu_offload"}
    ap.set_defaults(**{k: v for k, v in saved.items() if k in keep})
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- processes and autocast


@dataclass
class Processes:
    world: int  # process count (1 without torchrun)
    rank: int
    device: str | None  # the --device to use (cuda:<local rank> under torchrun on CUDA)

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def log(self, *a, **k):
        """print on the first process only."""
        if self.master:
            print(*a, **k)


def start_processes(device: str | None) -> Processes:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; with more than one process the process group
    starts here (nccl on CUDA, each process on its own GPU; gloo on CPU)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
    return Processes(world, rank, device)


def finish_processes(procs: Processes):
    if procs.ddp:
        dist.barrier()
        dist.destroy_process_group()


def resolved_args(args, procs: Processes, device: torch.device, dtype: torch.dtype, **extra) -> dict:
    """The resolved arguments (the command line, the process count, device and autocast dtype, and
    `extra`), logged once and saved beside every checkpoint."""
    amp = dtype in (torch.bfloat16, torch.float16)
    resolved = {**vars(args), "world_size": procs.world, "device": str(device),
                "autocast": str(dtype) if amp else "none (fp32)", **extra}
    procs.log("args " + json.dumps(resolved, sort_keys=True))
    return resolved


def replicated(model, procs: Processes, device: torch.device):
    """The model wrapped for replicated data parallelism (DDP): every process holds all of it, and
    backward sums the gradients over processes. Pass the wrapper where the loss is computed."""
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def seed_all(seed: int):
    """Python's, numpy's and torch's global generators (LoRA's init, data order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, dtype: torch.dtype):
    """-> a function returning the context for forward passes: autocast to bf16/fp16 (matrix
    products in that dtype; weights, LoRA, optimizer state, losses and log-probs stay fp32), or
    nothing for fp32."""
    if dtype in (torch.bfloat16, torch.float16):
        return lambda: torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext


# ----------------------------------------------------------------------------- LoRA



class LoRALinear(nn.Linear):
    """y = x W^T + b + (x A^T B^T) * alpha / r. Keeps the base layer's `weight` / `bias` tensors
    (shared, frozen), so state-dict names stay HF's; B starts at zero, so the model is unchanged
    until trained. A gets nn.Linear's default (Kaiming-uniform) init, as in the LoRA paper."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        # under bf16 autocast y is bf16, and the update (small against y early in training) would
        # lose its low bits in a bf16 add: it is added in fp32 (.float() is a no-op for fp32 y).
        # In place: the linear's backward does not need y.
        y = F.linear(x, self.weight, self.bias).float()
        return y.add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)

    def delta(self):
        return (self.lora_B @ self.lora_A) * self.scale  # (out, in)


def add_lora(model, rank: int, alpha: float, targets=LORA_TARGETS, last_layers: int = 0) -> list:
    """Freeze every parameter, then swap each target nn.Linear for a LoRALinear sharing its
    weight (in the last `last_layers` decoder blocks only, when > 0). Returns the new trainable
    parameters (A, B of each layer, in module order)."""
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = model.model.layers
    scope = blocks[len(blocks) - last_layers:] if 0 < last_layers < len(blocks) else model
    swaps = [(parent, name, child) for parent in scope.modules() for name, child in parent.named_children()
             if name in targets and type(child) is nn.Linear]
    params = []
    for parent, name, child in swaps:
        lora = LoRALinear(child, rank, alpha)
        setattr(parent, name, lora)
        params += [lora.lora_A, lora.lora_B]
    return params


def merged_state_dict(model) -> dict:
    """HF-named weights with each LoRA update folded in (W + scale * B @ A); no lora_ keys.
    The model itself is left as it is."""
    deltas = {name + ".weight": m.delta() for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        v = v.detach()
        out[k] = (v + deltas[k].to(v.dtype)) if k in deltas else v.clone()
    return out


def adapter_state_dict(model) -> dict:
    """{module + ".lora_A": A, module + ".lora_B": B * scale}: apply as W + B @ A."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[name + ".lora_A"] = m.lora_A.detach().clone()
            out[name + ".lora_B"] = (m.lora_B.detach() * m.scale).contiguous()
    return out

# ----------------------------------------------------------------------------- the starting model


def adapter_sha256(path: str | None) -> str | None:
    """The --init-adapter file's sha256 (None without one): a run records what it started from
    by content, since a file re-exported in place is another starting point."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise SystemExit(f"error: --init-adapter {path}: no such file")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_start(args, procs: Processes, device: torch.device, dtype: torch.dtype, sharded: bool):
    """--model as a run starts from it -> (model, tok). The weights are fp32 (the master copy that
    AdamW updates; autocast sets the dtype of the matrix products), sharded over the processes with
    --sharding fsdp, with --init-adapter's low-rank delta merged in: a run continues from a
    committed adapter, and its own adapter is the delta on top (tools/export_adapter.py adds them)."""
    if sharded:  # each process keeps 1/world of the weights (and of their gradients, AdamW state)
        return load_sharded(args.model, procs, device, dtype, args.cpu_offload)
    model, tok = M.load(args.model, device=device, dtype=torch.float32)
    if args.init_adapter:
        try:
            files.apply_adapter(model, args.init_adapter)
        except ValueError as e:
            raise SystemExit(f"error: --init-adapter {e}") from None
        procs.log(f"added {args.init_adapter} to the weights of {args.model} in memory (the files on disk are unchanged)")
    return model, tok


def prepare_training(model, args, procs: Processes) -> list:
    """The measured speed paths on (model_fast: less memory in backward, faster CPU decoding in
    rollouts and dev evaluation), LoRA (--lora-rank 0: every parameter trains) and
    --gradient-checkpointing (-1: every block) -> the trainable parameters."""
    model_fast.enable_fast_paths(model)
    if args.lora_rank > 0:
        trainable = add_lora(model, args.lora_rank, args.lora_alpha, last_layers=args.lora_layers)
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
    n = args.gradient_checkpointing
    model.gradient_checkpointing = len(model.model.layers) if n < 0 else n
    what = f"LoRA r{args.lora_rank} alpha {args.lora_alpha:g}" if args.lora_rank else "all parameters"
    if args.lora_rank and args.lora_layers:
        what += f", last {args.lora_layers} blocks"
    procs.log(f"trainable parameters {sum(p.numel() for p in trainable):,} of "
              f"{sum(p.numel() for p in model.parameters()):,} ({what})")
    return trainable


# ----------------------------------------------------------------------------- schedule


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Learning rate for 0-based `step`: linear warmup to peak over warmup_steps, then cosine to 0
    at total_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(opt, lr: float) -> float:
    """The optimizer's learning rate for the coming step -> lr."""
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


# ----------------------------------------------------------------------------- checkpoints and resume



def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: str, model, tok, args: dict, train_state: dict | None, full: bool = True):
    """One atomic directory: the HF-layout model (LoRA merged in) + args.json, adapter.safetensors
    when LoRA is on, and train_state.pt (skipped when train_state is None). With full=False and
    LoRA on (a LoRA run's step-N/ and last/), the merged model is left out: the adapter and the
    train state are all --resume needs (tens of MB instead of ~540 MB); final/ is always full."""
    info = {k: train_state[k] for k in ("step", "total_steps") if train_state and k in train_state}
    adapter = adapter_state_dict(model)
    with files.atomic_output(path) as staging:
        if full or not adapter:
            M.save(model, tok, staging, state=merged_state_dict(model), extra={"args.json": args, "train_info.json": info})
        else:
            os.makedirs(staging)
            for name, obj in (("args.json", args), ("train_info.json", info)):
                with open(os.path.join(staging, name), "w") as f:
                    json.dump(obj, f, indent=2)
        if adapter:
            files.save_tensors({k: v.cpu().contiguous() for k, v in adapter.items()},
                               os.path.join(staging, "adapter.safetensors"),
                               metadata={"format": "pt", "rank": str(args.get("lora_rank")),
                                         "alpha": str(args.get("lora_alpha"))})
        if train_state is not None:
            torch.save(train_state, os.path.join(staging, "train_state.pt"))


def load_train_state(path: str) -> dict:
    f = os.path.join(path, "train_state.pt")
    if not os.path.exists(f):
        raise FileNotFoundError(f"{f}: missing; --resume needs a checkpoint written during training (<out>/last)")
    return torch.load(f, map_location="cpu", weights_only=False)


def copy_checkpoint(src: str, dst: str):
    """dst: the same files as src, hard-linked where the filesystem allows (no second copy on disk:
    a 32B model's sharded checkpoint is ~0.5 TB), copied otherwise. Checkpoint files are never
    changed once written (a new checkpoint is a new directory), so the links are safe."""
    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with files.atomic_output(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy)


def prune_checkpoints(out: str, keep: int, started: float):
    """Delete all but the newest `keep` step-N/ directories of a run (each is a full model), and
    the .tmp-PID-*/.old-PID-* leftovers of a write that a killed process left (files.atomic_output):
    only those older than `started`, the time this run started, so a write of this run (on another
    node: its process id means nothing here) is never touched."""
    steps = sorted(d for d in os.listdir(out) if d.startswith("step-") and d[5:].isdigit())
    for d in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    for d in os.listdir(out):
        kind, _, rest = d.partition("-")
        pid = rest.partition("-")[0]
        path = os.path.join(out, d)
        if kind in (".tmp", ".old") and pid.isdigit() and not _process_alive(int(pid)) \
                and os.path.getmtime(path) < started:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


@dataclass
class Run:
    """A training run's output directory: log.jsonl, step-N/, last/ and final/."""
    out: str
    args: dict  # the resolved arguments, saved beside every checkpoint
    procs: Processes
    keep_checkpoints: int = 2
    started: float = field(default_factory=time.time)  # older leftovers of killed writes are pruned

    @property
    def last_dir(self) -> str:
        return os.path.join(self.out, "last")

    @property
    def log_path(self) -> str:
        return os.path.join(self.out, "log.jsonl")

    def write_log(self, row: dict):
        """One JSON object per step, appended by the first process."""
        if self.procs.master:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")


def train_state(run: Run, step: int, total: int, model, trainable: list, opt, **extra) -> dict:
    """What --resume needs besides the model it starts from: the trainable weights (by name), the
    optimizer, the step and the schedule length; `extra` adds a script's own (RNG states...).
    A sharded model's weights and optimizer are not copied here: save_step has every process
    write its own shards of them."""
    if is_sharded(model):
        return {"step": step, "total_steps": total, "args": run.args, "sharded": {"model": model, "optimizer": opt},
                **extra}
    names = {id(p): n for n, p in model.named_parameters()}
    return {"step": step, "total_steps": total, "args": run.args, "optimizer": opt.state_dict(),
            "trainable": {names[id(p)]: p.detach().cpu() for p in trainable}, **extra}


def start_or_resume(run: Run, resume: bool, total: int, model, trainable: list, opt, must_match=(),
                    warn_if_changed=(), schedule_flags="--steps"):
    """A fresh run starts at step 0 with an empty log. With --resume, the trainable weights and the
    optimizer come back from <out>/last: arguments that define the trainable weights (`must_match`)
    must be the same, others that changed (`warn_if_changed`) are reported, the schedule must have
    the same length, and log lines of steps after the checkpoint are dropped.
    -> (step, the loaded train state or None)."""
    if not resume:
        if run.procs.master:
            if os.path.exists(run.log_path):
                os.remove(run.log_path)
            os.makedirs(run.out, exist_ok=True)
        return 0, None
    st = load_train_state(run.last_dir)
    saved, now = st["args"], run.args
    for k in must_match:
        if saved.get(k) != now.get(k):
            if k == "init_adapter_sha256":  # the starting weights are known by content: a moved file is the same
                was = (f"an --init-adapter file with sha256 {saved[k]} ({saved.get('init_adapter')})" if saved.get(k)
                       else "no --init-adapter")
                now_ = f"{now[k]} ({now.get('init_adapter')})" if now.get(k) else "no --init-adapter"
                raise SystemExit(f"{run.last_dir}: started from {was}, now {now_}; resume from the same adapter")
            raise SystemExit(f"{run.last_dir}: --{k.replace('_', '-')} was {saved.get(k)!r}, now {now.get(k)!r}; "
                             "resume with the same value")
    for k in warn_if_changed:
        if saved.get(k) != now.get(k):
            run.procs.log(f"warning: --{k.replace('_', '-')} was {saved.get(k)!r} in {run.last_dir}, now {now.get(k)!r}")
    if st["total_steps"] != total:
        raise SystemExit(f"{run.last_dir}: schedule was {st['total_steps']} steps, now {total}; resume with the same "
                         f"{schedule_flags}")
    if os.path.isdir(os.path.join(run.last_dir, "sharded")):  # written by --sharding fsdp
        load_sharded_checkpoint(run.last_dir, model, opt)
        rngs = st.get("rng_by_rank")
        if rngs and len(rngs) == run.procs.world:  # each process continues its own random streams
            st["rng"] = rngs[run.procs.rank]
    elif is_sharded(model):
        raise SystemExit(f"{run.last_dir}: written by an unsharded run; resume it with --sharding ddp")
    else:
        names = {id(p): n for n, p in model.named_parameters()}
        with torch.no_grad():
            for p in trainable:
                p.copy_(st["trainable"][names[id(p)]].to(p.device))
        opt.load_state_dict(st["optimizer"])
    step = st["step"]
    run.procs.log(f"resumed from {run.last_dir} at step {step}")
    if run.procs.master and os.path.exists(run.log_path):
        keep = [line for line in open(run.log_path) if line.strip() and json.loads(line)["step"] <= step]
        files.write_atomic(run.log_path, "".join(keep))
    return step, st


def save_step(run: Run, step: int, model, tok, state: dict):
    """step-N/ (adapter + train state for a LoRA run, the whole model otherwise), copied to last/;
    step-N/ beyond the newest --keep-checkpoints are deleted. Called on every process: the first
    writes it, or, for a sharded model, each process its own shards."""
    path = os.path.join(run.out, f"step-{step:05d}")
    if "sharded" in state:
        save_sharded_checkpoint(path, run, tok, state)
    elif run.procs.master:
        save_checkpoint(path, model, tok, run.args, state, full=False)
    if not run.procs.master:
        return
    copy_checkpoint(path, run.last_dir)
    prune_checkpoints(run.out, run.keep_checkpoints, run.started)
    run.procs.log(f"saved {path} and {run.last_dir}")


def save_final(run: Run, model, tok):
    """final/: the HF-layout model with LoRA merged (rerank.py and transformers load it) + adapter.
    A sharded model is gathered whole onto the first process's CPU first (call it on all)."""
    path = os.path.join(run.out, "final")
    if is_sharded(model):
        state = full_state_dict(model)
        if run.procs.master:
            M.save(model, tok, path, state=state, extra={"args.json": run.args, "train_info.json": {}})
    elif run.procs.master:
        save_checkpoint(path, model, tok, run.args, None)
    run.procs.log(f"saved {path}")


def save_due(args, step: int, stop: int, total: int) -> bool:
    """Whether step-N/ and last/ are written after this step: every --save-every steps, and when
    --max-steps stops the run before its schedule ends (so --resume can continue it)."""
    return bool(args.save_every and step % args.save_every == 0) or (step == stop and stop < total)


def finish_run(run: Run, step: int, total: int, model, tok):
    """final/ once the schedule is done (a run stopped by --max-steps has saved last/ instead), then
    the process group ends."""
    if step == total:
        save_final(run, model, tok)
    finish_processes(run.procs)


def run_cli(main):
    """main() from the command line: bad input (a dataset, a record file, a checkpoint) stops with
    one line naming it, exit status 2. A run of several processes ends with os._exit once main()
    is done: gloo has no shutdown, so its worker threads outlive the process group, and the
    interpreter's teardown can stop one of them mid-way through freeing a tensor, which aborts
    the process (SIGABRT) after a run that succeeded. Every file is renamed into place by then."""
    from data.beir import DataFormatError

    try:
        main()
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
