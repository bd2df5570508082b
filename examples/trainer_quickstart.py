"""STR in a plain ``transformers.Trainer`` run: make the artifacts once, fine-tune with LoRA, check refusals.

Run: python examples/trainer_quickstart.py [--out DIR] [--steps 150]
(about a minute on 2 CPU cores once the toy model is cached; the first run builds it, about 4 minutes).

It runs as written on LogitGuard's embedded toy chat model. For your own model, change the three lines marked
"yours": the aligned model, its harmful prompts (or leave LogitGuard's built-in ones) and your training data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from logitguard import SafetyMonitor, STRConfig, STRTrainer, load_model, load_tokenizer, refusal_rates, safety_artifacts
from logitguard.data.chat import collate, encode_chat
from logitguard.evaluation.generation import generate
from logitguard.lab.toy.setting import ToySetting


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("quickstart-out"))
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)

    toy = ToySetting()
    aligned = toy.aligned  # yours: a hub name, a local folder or a .gguf file of an aligned chat model
    harmful = toy.anchor_prompts(128, seed=0)  # yours: harmful prompts (default: LogitGuard's built-in ones)
    data = toy.benign_data()  # yours: (prompt, response) pairs, or chat records read with logitguard.data.chat

    tokenizer = load_tokenizer(aligned)
    model = load_model(aligned)
    # Safety tokens and the aligned model's references on its own refusals: made once, read on every later run.
    tokens, anchors = safety_artifacts(
        model, tokenizer, args.out / "safety_tokens.json", args.out / "anchors.safetensors", harmful=harmful, k=24
    )
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = STRTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(args.out / "checkpoints"),
            max_steps=args.steps,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=10,
            logging_steps=25,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
        ),
        train_dataset=[encode_chat(tokenizer, prompt, response) for prompt, response in data],
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        processing_class=tokenizer,
        str_config=STRConfig(),  # KL over the safety tokens + the refusal's own tokens + the rest, λ=0.3
        safety_tokens=tokens,
        anchors=anchors,
    )
    held_out = toy.monitor_prompts  # yours: harmful prompts kept out of the anchors
    trainer.add_callback(SafetyMonitor(trainer, held_out, every_steps=50, max_new_tokens=48))
    trainer.train()  # logs loss, task_loss, str_anchor and safety/refusal_rate
    model.save_pretrained(args.out / "adapter")

    rates = refusal_rates(generate(model, tokenizer, held_out, max_new_tokens=48, desc=None))
    print(f"held-out harmful prompts refused (refusals that end): {rates['refusal']:.0%}")
    return rates


if __name__ == "__main__":
    main()
