"""STRSFTTrainer under Unsloth (imported first, as README's recipe says) on a tiny local Llama, on CPU.

Run (in Unsloth's venv): python tests/integration/unsloth_sft.py WORKSPACE OUT
Prints the Trainer's per-step logs as one JSON line. Unsloth patches transformers and TRL when it is imported; on a
machine without a GPU its 4-bit loader is out of reach, so the model is a plain PEFT model and the path tested is
Unsloth's patched TRL ``SFTTrainer``, which ``STRSFTTrainer`` subclasses.
"""

import unsloth  # noqa: F401, I001  (first: it patches transformers and TRL)

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from logitguard import STRConfig, STRSFTTrainer, safety_artifacts

workspace, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
model = AutoModelForCausalLM.from_pretrained(workspace / "model")
tokens, anchors = safety_artifacts(
    model, tokenizer, out / "safety_tokens.json", out / "anchors.safetensors", refusals="templates", k=8
)
torch.manual_seed(0)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
rows = [json.loads(line) for line in (workspace / "train.jsonl").read_text().splitlines()]
args = SFTConfig(
    output_dir=str(out),
    max_steps=4,
    per_device_train_batch_size=4,
    learning_rate=0.05,
    lr_scheduler_type="constant",
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    seed=0,
    packing=False,
    padding_free=False,
    max_length=64,
)
trainer = STRSFTTrainer(
    model=model,
    processing_class=tokenizer,
    train_dataset=Dataset.from_list(rows),
    args=args,
    str_config=STRConfig(),
    safety_tokens=tokens,
    anchors=anchors,
)
trainer.train()
print(json.dumps([log for log in trainer.state.log_history if "loss" in log]))
