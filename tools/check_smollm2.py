"""Check the converted SmolLM2-135M-Instruct checkpoint against transformers' own GGUF loader.

    python tools/check_smollm2.py [--model-dir DIR]

1. Tokenizer: the converted tokenizer.json must give the same ids as the tokenizer transformers
   builds from the GGUF, on English, code, numbers, unicode, chat-formatted text and whitespace.
2. Logits: transformers loads the GGUF directly (dequantising it itself) and loads the converted
   directory; fp32 logits on a few prompts must agree (max abs difference printed; expect ~1e-5).
3. Generation: a greedy reply to a chat-formatted "What is the capital of France?".

transformers is a reference-only dependency: only this script and the tests import it.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `data.` imports work when run as a script
from data.convert_smollm2 import DEFAULT_OUT, ensure_base_model, find_gguf  # noqa: E402

TOKENIZER_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b  # sum\n",
    "0 1 10 123 2025 3.14159 -42 1,000,000",
    " 7",
    "7",
    "<answer>10</answer><think>score 9</think>",
    "Ünïcödé: café, naïve, 東京, 🙂, Ελληνικά",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "multiple   spaces\n\n\nand\ttabs  \n  trailing ",
    "Steps:\n\n1. read\n2. score  7 or   10",
    "<|endoftext|>it's we'll THEY'RE don't",
]
LOGIT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nGive a relevance score of 0~10.<|im_end|>\n<|im_start|>assistant\n",
]


def load_gguf_reference(gguf_path: Path):
    """The GGUF loaded and dequantised by transformers itself, in fp32."""
    if importlib.util.find_spec("accelerate") is not None:  # transformers needs it for gguf_file=
        return AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # Same tensors through transformers' own GGUF reader, name mapping and q/k un-permutation,
    # minus the from_pretrained wrapper that insists on accelerate.
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    print("note: accelerate is not installed; loading the GGUF with transformers' load_gguf_checkpoint instead")
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys, result  # lm_head is tied
    model.tie_weights()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_OUT, help="converted checkpoint (default: %(default)s)")
    args = parser.parse_args()
    model_dir = ensure_base_model(args.model_dir)
    gguf_path = find_gguf()
    torch.manual_seed(0)

    # --- tokenizer parity
    # transformers' GGUF tokenizer ignores tokenizer.ggml.pre = "smollm" and uses the plain GPT-2
    # regex; llama.cpp (and SmolLM2's own tokenizer.json) first split off every digit. The two only
    # disagree on a whitespace run right before a digit ("\n\n1": "ĊĊ","1" vs "Ċ","Ċ","1"), so we
    # compare with the loader as is, then with the digit split put back, which must match exactly.
    ours = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    as_loaded = [ref.encode(t, add_special_tokens=False) for t in TOKENIZER_SAMPLES]
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    mismatches = differ_as_loaded = 0
    for text, loaded in zip(TOKENIZER_SAMPLES, as_loaded):
        a, b = ours.encode(text, add_special_tokens=False), ref.encode(text, add_special_tokens=False)
        differ_as_loaded += a != loaded
        if a != b:
            mismatches += 1
            print(f"tokenizer MISMATCH on {text!r}:\n  converted {a}\n  gguf      {b}")
        assert ours.decode(a) == text, f"decode does not round-trip: {ours.decode(a)!r} != {text!r}"
    n = len(TOKENIZER_SAMPLES)
    print(f"tokenizer: {n - mismatches}/{n} samples identical to transformers' GGUF tokenizer with llama.cpp's "
          f"'smollm' digit split; {n - differ_as_loaded}/{n} identical to it as loaded (whitespace before digits)")
    for text in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "10", " 10", "7", " 7"]:
        ids = ours.encode(text, add_special_tokens=False)
        print(f"  {text!r:16} -> {ids} {ours.convert_ids_to_tokens(ids)}")
    print("  digits '0'..'10':", {str(n): ours.encode(str(n), add_special_tokens=False) for n in range(11)})

    # --- logit parity
    converted = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = load_gguf_reference(gguf_path).eval()
    worst = 0.0
    with torch.no_grad():
        for prompt in LOGIT_PROMPTS:
            ids = ours(prompt, return_tensors="pt").input_ids
            diff = (converted(ids).logits - reference(ids).logits).abs().max().item()
            worst = max(worst, diff)
            print(f"  max |logit diff| {diff:.3e} on {prompt!r}")
    print(f"logits: max abs difference converted vs GGUF-loaded = {worst:.3e}")

    # --- greedy generation
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt_ids = ours.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = converted.generate(**prompt_ids, max_new_tokens=40, do_sample=False)
    reply = ours.decode(out[0, prompt_ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"greedy reply to 'What is the capital of France?': {reply!r}")

    ok = mismatches == 0 and worst < 1e-3
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
