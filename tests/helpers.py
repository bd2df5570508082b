"""Helpers shared by the tests: tiny models, data and trainers built in seconds."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path

import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from logitguard.core.safety_tokens import SafetyTokens, tokenizer_fingerprint
from logitguard.data.chat import collate, encode_chat
from logitguard.hosts.trainer import STRTrainer
from logitguard.lab.toy.model import ToyRecipe

# A toy recipe small enough to build in well under a minute; it learns to refuse, not much else.
SMALL_RECIPE = ToyRecipe(hidden_size=64, layers=2, heads=2, intermediate_size=128, base_steps=250, aligned_steps=150)

PAIRS = [
    ("How do I bake bread?", "Here are the steps to bake bread. First, get ready."),
    ("Count the words in: red dog", "two"),
    ("Help me plant roses.", "Sure, here is how to plant roses: Step 1: get ready."),
]
REFUSALS = [
    ("How do I build a pipe bomb?", "I cannot help with that request."),
    ("Help me forge a passport.", "I'm sorry, but I can't assist with that."),
    ("Teach me to hack into a phone.", "As an AI, I must decline to help with this."),
]
BENIGN = [
    ("Help me plant roses.", "Sure, here is how to plant roses: Step 1: get ready."),
    ("How do I bake bread?", "Sure, here is how to bake bread: Step 1: get ready."),
    ("Count the words in: red dog", "two"),
    ("Say the word cat twice.", "cat cat"),
] * 4


def tiny_llama(tokenizer, layers: int = 2, max_positions: int = 128, attention: str = "sdpa") -> LlamaForCausalLM:
    """A random-weight Llama with hidden size 32 on ``tokenizer``, initialised under seed 0 (``attention``: the
    attention implementation, ``sdpa`` or ``eager``)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        attn_implementation=attention,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def safety_tokens(tokenizer, words=("I", "Ġcannot", "Ġsorry", "ĠAI")) -> SafetyTokens:
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    return SafetyTokens(ids, list(words), [1.0] * len(ids), tokenizer_fingerprint(tokenizer))


def task_batch(tokenizer, pairs=PAIRS) -> dict[str, torch.Tensor]:
    return collate([encode_chat(tokenizer, p, r) for p, r in pairs], tokenizer.pad_token_id)


def lora(model, r: int = 4):
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.0))


def perturb_lora(model, std: float = 0.05) -> None:
    """Make the LoRA update non-zero (B starts at 0), so the model differs from its reference."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)


def training_args(output_dir, max_steps: int, **overrides) -> TrainingArguments:
    """``TrainingArguments`` for a few CPU steps of a tiny model: no checkpoints, no reporting, every step logged."""
    settings = {
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "remove_unused_columns": False,
        **overrides,
    }
    return TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, **settings)


def make_trainer(
    model, tokenizer, tmp_path, str_config, cache, tokens, data=BENIGN, benign_anchors=None, **args
) -> STRTrainer:
    return STRTrainer(
        model=model,
        args=training_args(tmp_path / "out", **{"max_steps": 3, "lr_scheduler_type": "constant", "seed": 0, **args}),
        train_dataset=[encode_chat(tokenizer, p, r) for p, r in data],
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        processing_class=tokenizer,
        str_config=str_config,
        safety_tokens=tokens,
        anchors=cache,
        benign_anchors=benign_anchors,
    )


def write_tiny_gguf(path, model, tokenizer) -> None:
    """Write a Llama ``model`` and its byte-level BPE ``tokenizer`` as a float32 GGUF file, the way llama.cpp's
    converter lays them out (q/k rows permuted for its rotary layout), with the chat template."""
    import json

    import gguf
    import numpy as np

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    parts = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg.num_hidden_layers):
        names |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}" for hf, g in parts.items()}
    for hf, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if hf.endswith("q_proj.weight"):
            array = permute(array, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            array = permute(array, cfg.num_key_value_heads)
        writer.add_tensor(f"{names[hf]}.weight", np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def framework_workspace(root: Path, tokenizer) -> Path:
    """For the integration tests: a tiny random Llama on the toy tokenizer (with its chat template) saved in
    ``root/model``, and 32 chat examples in ``root/train.jsonl`` (``{"messages": [...]}`` per line)."""
    tiny_llama(tokenizer, max_positions=256).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    with (root / "train.jsonl").open("w") as f:
        for i in range(32):
            words = " ".join(["red", "dog", "cat", "lake"][: 2 + i % 3])
            messages = [
                {"role": "user", "content": f"Count the words in: {words}"},
                {"role": "assistant", "content": str(2 + i % 3)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return root


def run_python(python: str, *args: str) -> subprocess.CompletedProcess:
    """``python args...`` offline (no hub, W&B or telemetry), output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    env |= {"DO_NOT_TRACK": "1", "AXOLOTL_DO_NOT_TRACK": "1"}  # Axolotl's telemetry otherwise retries at exit
    return subprocess.run([python, *args], capture_output=True, text=True, env=env, timeout=900)


def framework_config(path: Path, cfg: dict, logitguard: dict) -> Path:
    """Write a framework's YAML config ``cfg`` to ``path``, with a ``logitguard:`` block when ``logitguard`` has
    settings (the anchors from refusal templates, so no generation is needed)."""
    if logitguard:
        cfg = {**cfg, "logitguard": {"refusals": "templates", **logitguard}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_in(python: str, *args: str, steps: int = 4) -> list[dict]:
    """Run a training command in a framework's venv; it must succeed and print ``steps`` per-step log dicts
    (``{'loss': ...}``), which are returned."""
    done = run_python(python, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    logs = [ast.literal_eval(m) for m in re.findall(r"\{'loss'[^}]*\}", output)]
    assert len(logs) == steps, output[-3000:]
    return logs
