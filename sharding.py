"""--sharding fsdp: full-parameter training at sizes one device cannot hold, beside training.py
(as model_fast.py sits beside model.py). sft.py and rl.py call it; a learner can skip it.

Each process keeps 1/world of every weight, gradient and AdamW moment (PyTorch's FSDP2,
torch.distributed.fsdp.fully_shard); DDP, the default, keeps all of them on every process, 16
bytes a parameter, which the paper's 4B-32B models do not fit (docs/scaling.md). Each decoder
block is one FSDP unit, gathered whole just before it runs and freed after (its forward hooks do
that); the root unit is the rest (embeddings, final norm, lm_head: a tied lm_head stays one
tensor), and it stays gathered from forward to backward, so model.completion_logits may apply
lm_head to forward's output outside forward. Every forward and backward is a collective: all
processes must make the same calls, in the same order. Where they cannot (generation: rows stop
at different tokens; a process with fewer rows), `gathered` gathers the whole model once, and the
forwards inside need no collectives.

    sharded = check_sharding(args, procs)            # --sharding fsdp with more than one process
    model, tok = load_sharded(path, procs, device, dtype)  # each process keeps 1/world
    with gathered(model): generate(model, ...)        # whole weights for a while: local forwards
    norm = clip_grad_norm(params, 1.0)                # the global norm over all shards
    consolidate("runs/x/step-00050", "out")           # a sharded checkpoint -> HF layout

`procs` is training.Processes and `run` training.Run (this module imports nothing of training.py,
which calls its checkpoint functions).
"""
import contextlib
import json
import os
import warnings

import torch
import torch.distributed as dist

import files
import model as M


# ----------------------------------------------------------------------------- the sharded model


def check_sharding(args, procs) -> bool:
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


def load_sharded(path: str, procs, device: torch.device, dtype: torch.dtype, cpu_offload: bool = False):
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


def full_state_dict(model) -> dict:
    """The whole weights of a sharded model, gathered onto the CPU (every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ----------------------------------------------------------------------------- sharded checkpoints
#
# Through torch.distributed.checkpoint (DCP): every process writes and reads its own shards.


@contextlib.contextmanager
def atomic_output_all(path: str, procs):
    """files.atomic_output for a directory that every process writes into: the first process makes
    the temporary directory and tells the others; once all have written, the first renames it onto
    `path`, and nobody goes on before that. If any process fails writing, all of them raise (none
    waits forever for a write that will not come) and the temporary directory is removed."""
    failed = None

    def all_ok() -> bool:  # every process learns whether any process failed
        flags = [None] * procs.world
        dist.all_gather_object(flags, failed is not None)
        return not any(flags)

    if procs.master:
        with files.atomic_output(path) as staging:
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


def save_sharded_checkpoint(path: str, run, tok, state: dict):
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
