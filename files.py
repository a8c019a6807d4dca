"""Two small helpers that touch the disk, kept out of the file a learner reads for the model.

    with atomic_output(path) as tmp: ...      # a file or directory appears whole or not at all
    write_atomic(path, text)                  # one file, the same way
    apply_adapter(model, "adapter.safetensors")  # W += B @ A for each adapted linear layer, in place
    save_tensors(tensors, path)               # a .safetensors file, readable as the others are

Every writer of the project goes through atomic_output, so an interrupted run never leaves a
half-written dataset, record file or checkpoint that a later run would read as whole. This
module imports nothing of the project.
"""
import contextlib
import os
import shutil
from pathlib import Path

import torch


# ----------------------------------------------------------------------------- whole or not at all


@contextlib.contextmanager
def atomic_output(path):
    """Make `path` (a file or a directory) appear whole or not at all. Yields a temporary sibling
    path of the same type (nothing there yet: create the file or directory at it); on success it
    is renamed onto `path`, an old directory there removed only once the new one is in place; on
    an error or an interrupt it is removed and `path` left as it was."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp, old = (os.path.join(parent, f".{kind}-{os.getpid()}-{name}") for kind in ("tmp", "old"))
    _remove(tmp, old)  # left by an earlier process with the same id
    try:
        yield Path(tmp) if isinstance(path, Path) else tmp
        if os.path.isdir(tmp) and os.path.isdir(path):  # a directory cannot be renamed over another
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(old) and not os.path.lexists(path):
            os.replace(old, path)  # the new one did not arrive: the old one goes back
        _remove(tmp, old)


def _remove(*paths):
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.remove(p)


def save_tensors(tensors: dict, path, metadata: dict | None = None):
    """safetensors' save_file (torch tensors), then the mode any other new file gets (0644 under the
    usual umask): save_file creates its file readable by its owner only (0600)."""
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomic(path, data: str | bytes):
    """One whole file through atomic_output: str written as UTF-8 (line ends as given), or bytes."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


# ----------------------------------------------------------------------------- adapters


def apply_adapter(model, path: str):
    """Add a low-rank delta to the weights in place: W += B @ A for every pair of keys
    '<module>.lora_A' (r, in) and '<module>.lora_B' (out, r) in an adapter.safetensors file
    (the LoRA scale is already folded into B). Several adapters concatenated along r add up."""
    from safetensors.torch import load_file

    delta = load_file(path)
    modules = dict(model.named_modules())
    for key in sorted(k for k in delta if k.endswith(".lora_A")):
        name = key[: -len(".lora_A")]
        if name not in modules or f"{name}.lora_B" not in delta:
            raise ValueError(f"{path}: {key} does not match a linear layer of this model (or lora_B is missing)")
        w = modules[name].weight
        with torch.no_grad():
            w += (delta[f"{name}.lora_B"].float() @ delta[key].float()).to(w.device, w.dtype)
    return model
