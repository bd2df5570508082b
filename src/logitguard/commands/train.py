"""``logitguard train``: LoRA (or full) fine-tuning with STR from a YAML run config.

Run: logitguard train --config configs/toy_lora_str.yaml [key=value ...] [--resume]
Works unchanged under ``accelerate launch`` and ``torchrun`` (the Trainer's
Accelerate integration does the distribution).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from logitguard.run_config import RunConfig, load_run_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitguard train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. str.weight=0.5")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        out = run(config, args.resume)
    except (ValueError, FileNotFoundError) as e:
        print(f"logitguard train: {e}", file=sys.stderr)
        return 2
    print(f"wrote the adapter, STR artifacts, config and training log to {out}")
    return 0


def record_config(config: RunConfig, out: Path, resume: bool) -> None:
    """Write the resolved config; a new run never overwrites another, a resumed one must match it."""
    from logitguard.io import write_text

    path = out / "config.yaml"
    resolved = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if path.is_file():
        if not resume:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir")
        if yaml.safe_load(path.read_text(encoding="utf-8")) != config.to_dict():
            raise ValueError(f"the config differs from the one {out} was started with ({path}); resume needs the same")
        return
    write_text(path, resolved)


def load_conversations(config: RunConfig) -> list:
    from logitguard.data import read_chat_jsonl, record_messages

    source = config.data.train
    if Path(source).is_file():
        return read_chat_jsonl(source)
    if source.endswith((".jsonl", ".json")):
        raise FileNotFoundError(f"data.train: no such file {source}")
    import datasets

    rows = datasets.load_dataset(source, split=config.data.split)
    return [record_messages(row, f"{source}[{i}]") for i, row in enumerate(rows)]


def prepare_artifacts(config: RunConfig, model, tokenizer, out: Path):
    """Safety tokens and anchor cache: given files, files from an earlier start of this run, or new ones.

    The main process computes and saves them; the other processes then read them.
    """
    from accelerate import PartialState

    from logitguard.anchors import AnchorCache, build_anchor_cache
    from logitguard.builtin_prompts import HARMFUL_PROMPTS
    from logitguard.discovery import SafetyTokens, discover_safety_tokens
    from logitguard.preparation import benign_pairs, refusal_pairs
    from logitguard.prompt_files import read_prompts

    s = config.str
    tokens_path = Path(s.tokens) if s.tokens else out / "safety_tokens.json"
    anchors_path = Path(s.anchors) if s.anchors else out / "anchors.safetensors"
    needs_anchors = s.str_config().uses_anchors
    with PartialState().main_process_first():
        refusals = None
        if tokens_path.is_file():
            tokens = SafetyTokens.load(tokens_path)
            tokens.check_tokenizer(tokenizer, str(tokens_path))
        elif s.tokens:
            raise FileNotFoundError(f"str.tokens: no such file {s.tokens}")
        else:
            prompts = read_prompts(s.harmful) if s.harmful else HARMFUL_PROMPTS
            refusals = refusal_pairs(model, tokenizer, s.refusals, prompts)
            tokens = discover_safety_tokens(model, tokenizer, refusals, benign_pairs(model, tokenizer, s.refusals), s.k)
            tokens.save(tokens_path)
        anchors = None
        if needs_anchors and anchors_path.is_file():
            anchors = AnchorCache.load(anchors_path)
            anchors.check(model, tokens, str(anchors_path))
        elif needs_anchors and s.anchors:
            raise FileNotFoundError(f"str.anchors: no such file {s.anchors}")
        elif needs_anchors:
            if refusals is None:
                prompts = read_prompts(s.harmful) if s.harmful else HARMFUL_PROMPTS
                refusals = refusal_pairs(model, tokenizer, s.refusals, prompts)
            anchors = build_anchor_cache(model, tokenizer, refusals, tokens)
            anchors.save(anchors_path)
    return tokens, anchors


def select_samples(config: RunConfig, model, tokenizer, conversations: list, out: Path, artifacts) -> list[bool]:
    """Gradient-based selection on the model about to be trained (its fresh adapters): the keep mask.

    The main process scores and writes ``selection/scores.jsonl``; the other processes then reuse it,
    as does a resumed run.
    """
    from accelerate import PartialState

    from logitguard.builtin_prompts import HARMFUL_PROMPTS
    from logitguard.preparation import refusal_pairs
    from logitguard.prompt_files import read_prompts
    from logitguard.selection import (
        SelectionConfig,
        anchor_refusal_batch,
        parameters_fingerprint,
        refusal_batch,
        run_selection,
        safety_direction,
    )

    s, d = config.selection, config.data
    selection = SelectionConfig(s.fraction, s.score, s.batch_size, d.max_length, d.on_overflow)
    identity = {"model": config.model.name_or_path, "data": d.train, "adapter": parameters_fingerprint(model)}
    with PartialState().main_process_first():
        direction = None
        if s.score == "safety":
            if artifacts and artifacts[1] is not None:
                refusals = anchor_refusal_batch(artifacts[1])
            else:
                prompts = read_prompts(config.str.harmful) if config.str.harmful else HARMFUL_PROMPTS
                refusals = refusal_batch(refusal_pairs(model, tokenizer, config.str.refusals, prompts), tokenizer)
            direction = safety_direction(model, refusals, s.batch_size)
        samples = ((f"{d.train}: record {i + 1}", messages) for i, messages in enumerate(conversations))
        scores = out / "selection" / "scores.jsonl"
        return run_selection(model, tokenizer, samples, selection, scores, identity, direction, len(conversations))


def run(config: RunConfig, resume: bool) -> Path:
    """Train as configured and write the outputs into ``config.output_dir``; returns it."""
    from accelerate import PartialState
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments, set_seed

    from logitguard.builtin_prompts import MONITOR_PROMPTS
    from logitguard.checkpoints import MarkCompleteCheckpoints, last_complete_checkpoint, set_aside_incomplete
    from logitguard.data import collate, encode_dataset
    from logitguard.io import atomic_directory, ensure_writable_dir, write_json
    from logitguard.loading import load_model, load_tokenizer
    from logitguard.monitor import SafetyMonitor
    from logitguard.prompt_files import read_prompts
    from logitguard.trainer import STRTrainer

    out = ensure_writable_dir(config.output_dir)
    m = config.model
    tokenizer = load_tokenizer(m.name_or_path, m.trust_remote_code, m.revision, m.chat_template)
    conversations = load_conversations(config)
    d = config.data
    encoded = encode_dataset(tokenizer, conversations, d.max_length, d.on_overflow, d.train)
    t = config.training
    # transformers 5.x renamed gradient_checkpointing; pass whichever this version has.
    fields = TrainingArguments.__dataclass_fields__
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    training_args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        **{checkpointing: t.gradient_checkpointing},
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        report_to=t.report_to,
        use_cpu=t.use_cpu,
        remove_unused_columns=False,
    )
    device = training_args.device  # sets up the processes (torchrun / accelerate launch) ...
    state = PartialState()  # ... so that this sees all of them
    if state.is_main_process:
        record_config(config, out, resume)
    state.wait_for_everyone()
    set_seed(config.training.seed)  # LoRA initialisation draws from the global RNG
    model = load_model(m.name_or_path, m.trust_remote_code, m.revision, m.dtype, m.load_in_4bit, device)
    artifacts = prepare_artifacts(config, model, tokenizer, out) if config.str.enabled else None
    if config.lora.enabled:
        lora = config.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        if m.load_in_4bit:
            model = prepare_model_for_kbit_training(model, t.gradient_checkpointing)
        model = get_peft_model(model, peft_config)
    if config.selection.fraction > 0:
        keep = select_samples(config, model, tokenizer, conversations, out, artifacts)
        encoded = [example for example, kept in zip(encoded, keep, strict=True) if kept]
    common = {
        "model": model,
        "args": training_args,
        "train_dataset": encoded,
        "data_collator": lambda rows: collate(rows, tokenizer.pad_token_id),
        "callbacks": [MarkCompleteCheckpoints()],
        "processing_class": tokenizer,
    }
    if artifacts:
        tokens, anchors = artifacts
        trainer = STRTrainer(**common, str_config=config.str.str_config(), safety_tokens=tokens, anchors=anchors)
    else:
        trainer = Trainer(**common)

    if config.monitor.every_steps:
        mon = config.monitor
        prompts = read_prompts(mon.prompts) if mon.prompts else MONITOR_PROMPTS
        monitor = SafetyMonitor(trainer, prompts, mon.every_steps, mon.min_refusal, mon.action, mon.max_new_tokens)
        trainer.add_callback(monitor)

    checkpoint = None
    if resume and trainer.is_world_process_zero():
        for moved in set_aside_incomplete(training_args.output_dir):
            print(f"set aside an incomplete checkpoint as {moved}", file=sys.stderr)
    if resume:
        trainer.accelerator.wait_for_everyone()
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        print(f"resuming from {checkpoint}" if checkpoint else "no complete checkpoint yet: starting from step 0")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if trainer.is_world_process_zero():
        with atomic_directory(out / ("adapter" if config.lora.enabled else "model")) as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(out / "train_log.json", trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return out
