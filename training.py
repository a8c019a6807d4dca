"""What sft.py and rl.py share: the processes, autocast, LoRA, the schedule, and checkpoints
with exact resume. Each training script reads as its algorithm and calls these.

    procs = start_processes(args.device)              # torchrun: gloo on CPU, nccl on CUDA
    autocast = autocast_for(device, dtype)            # bf16/fp16 matrix products; fp32 weights
    trainable = add_lora(model, rank, alpha, last_layers=10)
    step, state = start_or_resume(run, resume, total, model, trainable, opt)  # <out>/last, or a fresh log
    save_step(run, step, model, tok, state)           # step-N/ + last/, old step-N/ pruned
    save_final(run, model, tok)                       # final/: HF layout, LoRA merged

--sharding fsdp (full-parameter training at sizes one device cannot hold):
    model, tok = load_sharded(path, procs, device, dtype)  # each process keeps 1/world (FSDP2)
    with gathered(model): generate(model, ...)        # whole weights for a while: local forwards
    norm = clip_grad_norm(params, 1.0)                # the global norm over all shards
    consolidate("runs/x/step-00050", "out")           # a sharded checkpoint -> HF layout
"""
import contextlib
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import model as M

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


def autocast_for(device: torch.device, dtype: torch.dtype):
    """-> a function returning the context for forward passes: autocast to bf16/fp16 (matrix
    products in that dtype; weights, LoRA, optimizer state, losses and log-probs stay fp32), or
    nothing for fp32."""
    if dtype in (torch.bfloat16, torch.float16):
        return lambda: torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext


# ----------------------------------------------------------------------------- sharding (FSDP2)
#
# --sharding fsdp: each process keeps 1/world of every weight, gradient and AdamW moment
# (torch.distributed.fsdp.fully_shard); DDP, the default, keeps all of them on every process, 16
# bytes a parameter, which the paper's 4B-32B models do not fit (README, "Training at the paper's
# sizes"). Each decoder block is one FSDP unit, gathered whole just before it runs and freed after;
# the root unit is the rest (embeddings, final norm, lm_head: a tied lm_head stays one tensor).
# Every forward and backward is a collective: all processes must make the same calls, in the same
# order. Where they cannot (generation: rows stop at different tokens; a process with fewer rows),
# `gathered` gathers the whole model once, and the forwards inside need no collectives.


def check_sharding(args, procs: Processes) -> bool:
    """--sharding and --cpu-offload against the rest of the command line -> whether to shard:
    --sharding fsdp with more than one process (with one, there is nothing to shard)."""
    if args.sharding == "fsdp":
        if args.lora_rank > 0:
            raise SystemExit("--sharding fsdp trains all parameters: add --lora-rank 0 (LoRA's trainable state is "
                             "small; the default --sharding ddp fits it)")
        if getattr(args, "init_adapter", None):
            raise SystemExit("--init-adapter is for LoRA runs; it does not combine with --sharding fsdp")
        if not procs.ddp:
            procs.log("--sharding fsdp with one process: nothing to shard, the model stays whole")
    if args.cpu_offload:
        cuda = (procs.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if args.sharding != "fsdp" or not cuda:
            raise SystemExit("--cpu-offload moves FSDP's shards off the GPU: it needs --sharding fsdp on CUDA")
    return args.sharding == "fsdp" and procs.ddp


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def load_sharded(path: str, procs: Processes, device: torch.device, dtype: torch.dtype, cpu_offload: bool = False):
    """-> (model, tok): the HF-layout checkpoint at `path`, sharded over all processes. The model
    is built on the meta device (no memory), sharded, and each process then reads from the
    safetensors files only its own slice of each weight, one tensor at a time: no process holds
    the whole model. Weights stay fp32 (the master copy AdamW updates). With a bf16 `dtype` they
    are gathered and computed in bf16 and gradients reduced in fp32 (FSDP's mixed precision);
    cpu_offload keeps the shards (weights, gradients, AdamW state) in CPU memory, CUDA only."""
    from safetensors import safe_open
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from torch.distributed.tensor import distribute_tensor

    cfg, tok = M.load_config(path), M.Tokenizer(path)
    with torch.device("meta"):
        model = M.Transformer(cfg)
    mesh = init_device_mesh(device.type, (procs.world,))
    # RoPE tables and the additive mask stay as the model makes them (fp32 tables, as unsharded)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False) \
        if dtype == torch.bfloat16 else MixedPrecisionPolicy(cast_forward_inputs=False)
    kw = {"mesh": mesh, "mp_policy": mp, "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    for block in model.model.layers:
        fully_shard(block, reshard_after_forward=True, **kw)
    # the root stays gathered after forward: backward needs it at once, and completion_logprobs
    # applies lm_head to forward's output (outside forward)
    fully_shard(model, reshard_after_forward=False, **kw)
    model.to_empty(device="cpu" if cpu_offload else device)
    where = {}
    for f in M.weight_files(path):
        with safe_open(f, framework="pt") as r:
            where.update({k: f for k in r.keys()})
    params = dict(model.named_parameters())  # a tied lm_head.weight is listed once, as embed_tokens
    missing = sorted(set(params) - set(where))
    if missing:
        raise ValueError(f"{path}: checkpoint does not match config.json ({cfg.model_type}); "
                         f"missing keys {missing[:8]}")
    with torch.no_grad():
        for name, p in params.items():
            with safe_open(where[name], framework="pt") as r:
                w = r.get_tensor(name).to(p.device, torch.float32)
            if w.shape != p.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(w.shape)}, config says {tuple(p.shape)}")
            mine = distribute_tensor(w, p.device_mesh, p.placements, src_data_rank=None)  # a local slice, no traffic
            p.to_local().copy_(mine.to_local())
    return model.eval(), tok


@contextlib.contextmanager
def gathered(model):
    """The whole weights of a sharded model on every process for the duration: one all-gather per
    FSDP unit on entry, none in the forwards inside, so each process may then run as many as it
    needs (generation: one per token, until its own rows stop). Every process must enter it
    together. Costs the whole model's memory (bf16 under mixed precision) while it lasts. Nothing
    for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in units:  # back to load_sharded's setting: the root stays gathered after forward
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)


def clip_grad_norm(params, max_norm: float) -> float:
    """clip_grad_norm_ -> the norm before clipping, as a float. Under FSDP each process holds a
    slice of each gradient (a DTensor) and the norm is computed over all of them (an all-reduce)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


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

# ----------------------------------------------------------------------------- schedule


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Learning rate for 0-based `step`: linear warmup to peak over warmup_steps, then cosine to 0
    at total_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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
    from safetensors.torch import save_file

    info = {k: train_state[k] for k in ("step", "total_steps") if train_state and k in train_state}
    adapter = adapter_state_dict(model)
    with M.atomic_output(path) as staging:
        if full or not adapter:
            M.save(model, tok, staging, state=merged_state_dict(model), extra={"args.json": args, "train_info.json": info})
        else:
            os.makedirs(staging)
            for name, obj in (("args.json", args), ("train_info.json", info)):
                with open(os.path.join(staging, name), "w") as f:
                    json.dump(obj, f, indent=2)
        if adapter:
            save_file({k: v.cpu().contiguous() for k, v in adapter.items()}, os.path.join(staging, "adapter.safetensors"),
                      metadata={"format": "pt", "rank": str(args.get("lora_rank")), "alpha": str(args.get("lora_alpha"))})
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

    with M.atomic_output(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy)


STARTED = time.time()  # when this process started: see prune_checkpoints


def prune_checkpoints(out: str, keep: int):
    """Delete all but the newest `keep` step-N/ directories of a run (each is a full model), and
    the .tmp-PID-*/.old-PID-* leftovers of a write that a killed process left (model.atomic_output):
    only those older than this process, so a write of this run (on another node: its process id
    means nothing here) is never touched."""
    steps = sorted(d for d in os.listdir(out) if d.startswith("step-") and d[5:].isdigit())
    for d in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    for d in os.listdir(out):
        kind, _, rest = d.partition("-")
        pid = rest.partition("-")[0]
        path = os.path.join(out, d)
        if kind in (".tmp", ".old") and pid.isdigit() and not _process_alive(int(pid)) \
                and os.path.getmtime(path) < STARTED:
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
        M.write_atomic(run.log_path, "".join(keep))
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
    prune_checkpoints(run.out, run.keep_checkpoints)
    run.procs.log(f"saved {path} and {run.last_dir}")


def save_final(run: Run, model, tok):
    """final/: the HF-layout model with LoRA merged (rerank.py and transformers load it) + adapter.
    A sharded model is gathered whole onto the first process's CPU first (call it on all)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    path = os.path.join(run.out, "final")
    if is_sharded(model):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if run.procs.master:
            M.save(model, tok, path, state=state, extra={"args.json": run.args, "train_info.json": {}})
    elif run.procs.master:
        save_checkpoint(path, model, tok, run.args, None)
    run.procs.log(f"saved {path}")


# -- sharded checkpoints (--sharding fsdp), through torch.distributed.checkpoint (DCP)


@contextlib.contextmanager
def atomic_output_all(path: str, procs: Processes):
    """model.atomic_output for a directory that every process writes into: the first process makes
    the temporary directory and tells the others; once all have written, the first renames it onto
    `path`, and nobody goes on before that. If any process fails writing, all of them raise (none
    waits forever for a write that will not come) and the temporary directory is removed."""
    failed = None

    def all_ok() -> bool:  # every process learns whether any process failed
        flags = [None] * procs.world
        dist.all_gather_object(flags, failed is not None)
        return not any(flags)

    if procs.master:
        with M.atomic_output(path) as staging:
            os.makedirs(staging)
            dist.broadcast_object_list([staging])
            try:
                yield staging
            except BaseException as e:
                failed = e
            if not all_ok():
                raise failed or RuntimeError(f"{path}: another process failed writing its shards")
    else:
        box = [None]
        dist.broadcast_object_list(box)
        try:
            yield box[0]
        except BaseException as e:
            failed = e
        if not all_ok():
            raise failed or RuntimeError(f"{path}: another process failed writing its shards")
    dist.barrier()  # renamed: every process may read `path` now


def save_sharded_checkpoint(path: str, run: Run, tok, state: dict):
    """One atomic directory written by all processes:
        sharded/          the weights and the AdamW state by parameter name, each process writing
                          its own shards (DCP; it reads them back into any number of processes)
        train_state.pt    the rest of `state` (step, schedule, ...) + every process's RNG state
        config.json, tokenizer files, args.json, train_info.json: what consolidate needs to turn
                          sharded/ into an HF-layout model (tools/consolidate.py)"""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt = state["sharded"]["model"], state["sharded"]["optimizer"]
    weights, optim = get_state_dict(model, opt)  # this process's shards, by name
    rngs = [None] * run.procs.world
    dist.all_gather_object(rngs, state.get("rng"))
    with atomic_output_all(path, run.procs) as staging:
        dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=os.path.join(staging, "sharded"))
        if run.procs.master:
            rest = {k: v for k, v in state.items() if k != "sharded"}
            if rest.get("rng") is not None:
                rest["rng_by_rank"] = rngs
            torch.save(rest, os.path.join(staging, "train_state.pt"))
            info = {k: state[k] for k in ("step", "total_steps")}
            M.save_config(model.config, tok, staging, torch.float32, {"args.json": run.args, "train_info.json": info})


def load_sharded_checkpoint(path: str, model, opt):
    """The weights and optimizer state of save_sharded_checkpoint, into this process's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, opt)
    dcp.load({"model": weights, "optimizer": optim}, checkpoint_id=os.path.join(path, "sharded"))
    set_state_dict(model, opt, model_state_dict=weights, optim_state_dict=optim)


def consolidate(path: str, out: str):
    """A sharded checkpoint directory (step-N/ or last/ of a --sharding fsdp run) -> an HF-layout
    model at `out` that rerank.py, model.load and transformers open. One process, no process
    group; the whole model in CPU memory (fp32)."""
    import torch.distributed.checkpoint as dcp

    if not os.path.isdir(os.path.join(path, "sharded")):
        raise FileNotFoundError(f"{path}/sharded: missing; expected a checkpoint of a --sharding fsdp run")
    cfg, tok = M.load_config(path), M.Tokenizer(path)
    with torch.device("meta"):
        model = M.Transformer(cfg)
    model.to_empty(device="cpu")
    model.tie_weights()
    state = model.state_dict()  # a tied lm_head.weight is the embed_tokens tensor: loaded once, under both names
    with warnings.catch_warnings():  # "loading in a single process": as intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": state}, checkpoint_id=os.path.join(path, "sharded"), no_dist=True)
    extra = {n: json.load(open(os.path.join(path, n))) for n in ("args.json", "train_info.json")
             if os.path.exists(os.path.join(path, n))}
    M.save(model, tok, out, extra=extra)
