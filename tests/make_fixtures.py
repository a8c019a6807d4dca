"""Regenerate the golden fixtures in tests/fixtures/ with transformers (the reference).

    python tests/make_fixtures.py

Writes, for each tiny random model (qwen3 tied, qwen3 untied with head_dim != hidden/heads,
llama, qwen2): an HF checkpoint directory saved by transformers, and golden.safetensors with
reference logits (fp32) and greedy generations. Also chat.json: chat templates rendered by
transformers' jinja for the message lists the project uses. Only this script needs transformers.
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The templates below follow the structure of the checkpoints' own templates (tool handling
# left out): Qwen3's (thinking switch), SmolLM2's (default system message), Qwen2.5's.
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + "
    "'<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and "
    "not loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is "
    "defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if "
    "(message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == "
    "'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

TEXT = """Given a query and a document, please give a relevance score of 0~10.
The goal or relevance definition is: Given a query, retrieval relevant passage.
Here is the query: list directory contents. Here is the document: ls lists files.
<think>put your thinking here</think><answer>10</answer> 0 1 2 3 4 5 6 7 8 9 10
The quick brown fox jumps over the lazy dog. def f(x): return x * 2  # comment
"""

MODELS = {
    # name: (family, config overrides, template)
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True, head_dim=16), QWEN3_TEMPLATE),
    "qwen3_untied": ("qwen3", dict(tie_word_embeddings=False, head_dim=24), QWEN3_TEMPLATE),
    "llama": ("llama", dict(tie_word_embeddings=True), SMOLLM2_TEMPLATE),
    "qwen2": ("qwen2", dict(tie_word_embeddings=False), QWEN25_TEMPLATE),
}
PROMPTS = [[5, 17, 42, 99, 7], [300, 1, 2], [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 120], [64]]
CHATS = [
    [{"role": "user", "content": "Here is the query:\nls\n\nYour output:"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


def make_tokenizer(split_digits: bool):
    """A 320-token byte-level BPE. split_digits: one token per digit, as Qwen3's and SmolLM2's
    tokenizers do (so "10" is two tokens); otherwise "10" is merged into one token."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 4, trainer)
    return tok


def main():
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shutil.rmtree(HERE, ignore_errors=True)
    os.makedirs(HERE)
    toks = {True: make_tokenizer(True), False: make_tokenizer(False)}
    V = max(t.get_vocab_size() for t in toks.values())
    chats = {}
    for name, (family, over, template) in MODELS.items():
        d = os.path.join(HERE, name)
        cfg = AutoConfig.for_model(
            family, vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rope_theta=10000.0, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2, pad_token_id=0, **over)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
        with torch.no_grad():  # random init leaves norms at 1; perturb them so the tests see them
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(d)
        toks[name != "qwen2"].save(os.path.join(d, "tokenizer.json"))
        tcfg = {"chat_template": template, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "bos_token": None, "tokenizer_class": "PreTrainedTokenizerFast"}
        json.dump(tcfg, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)
        golden = {}
        for i, p in enumerate(PROMPTS):
            ids = torch.tensor([p])
            with torch.no_grad():
                golden[f"logits_{i}"] = model(ids).logits[0].float()
                out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                     pad_token_id=0, attention_mask=torch.ones_like(ids))
            golden[f"greedy_{i}"] = out[0, len(p):]
        save_file(golden, os.path.join(d, "golden.safetensors"))
        hf_tok = AutoTokenizer.from_pretrained(d)
        chats[name] = [
            {"messages": m, "add_generation_prompt": g, "enable_thinking": t,
             "text": hf_tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g,
                                                enable_thinking=t)}
            for m in CHATS for g in (True, False) for t in (True, False)]
    json.dump(chats, open(os.path.join(HERE, "chat.json"), "w"), indent=1)
    print(f"fixtures written to {HERE} (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
