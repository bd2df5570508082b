"""``logitguard train``: LoRA (or full) fine-tuning with STR from a YAML run config.

Run: logitguard train --config configs/llama3.1_8b_lora_str.yaml [key=value ...] [--resume]
Works unchanged under ``accelerate launch`` and ``torchrun`` (the Trainer's Accelerate integration does the
distribution). Every input is checked before anything is written; an output folder that holds anything but an
earlier start of the same run is refused, so no earlier result is overwritten.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from logitguard.errors import LogitGuardError
from logitguard.run_config import RunConfig, load_run_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitguard train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. str.weight=0.5")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_run_config(args.config, args.overrides)
    out = run(config, args.resume)
    print(f"wrote the adapter, STR artifacts, config and training log to {out}")
    return 0


def check_output_dir(config: RunConfig, out: Path, resume: bool) -> bool:
    """Whether ``out`` holds an earlier start of this very run (``resume`` must then be set); else it must be empty.

    A folder with files but no ``config.yaml`` is not a LogitGuard run: it may hold a user's adapter and logs,
    which a new run would overwrite, so it is refused.
    """
    path = out / "config.yaml"
    if path.is_file():
        if not resume:
            raise LogitGuardError(
                f"{out} already holds a run; pass --resume to continue it or choose another output_dir"
            )
        try:
            earlier = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise LogitGuardError(f"{path}: unreadable ({e}); it is not the config this run was started with") from None
        if earlier != config.to_dict():
            raise LogitGuardError(
                f"the config differs from the one {out} was started with ({path}); resume needs the same"
            )
        return True
    if out.is_dir() and any(out.iterdir()):
        raise LogitGuardError(
            f"{out} is not empty but holds no LogitGuard run (no config.yaml); choose a new or empty output_dir "
            "so nothing in it is overwritten"
        )
    return False


def load_conversations(config: RunConfig) -> list:
    from logitguard.data import read_chat_jsonl, record_messages
    from logitguard.prompt_files import looks_like_dataset

    source = config.data.train
    if Path(source).is_file():
        return read_chat_jsonl(source)
    if not looks_like_dataset(source):
        raise FileNotFoundError(f"data.train: no such file {source}")
    try:
        import datasets
    except ImportError:
        raise LogitGuardError(
            f"data.train: {source!r} is not a file, so it is read as a datasets name; pip install datasets"
        ) from None
    rows = datasets.load_dataset(source, split=config.data.split)
    return [record_messages(row, f"{source}[{i}]") for i, row in enumerate(rows)]


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
        content_fingerprint,
        parameters_fingerprint,
        refusal_batch,
        run_selection,
        safety_direction,
    )

    s, d = config.selection, config.data
    fraction = s.fraction if s.threshold is None else None
    selection = SelectionConfig(fraction, s.score, s.batch_size, d.max_length, d.on_overflow, s.threshold)
    identity = {
        "model": config.model.name_or_path,
        "data": content_fingerprint(conversations),
        "adapter": parameters_fingerprint(model),
    }
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
        ids = artifacts[0].id_tensor() if artifacts else None
        return run_selection(model, tokenizer, samples, selection, scores, identity, direction, len(conversations), ids)


def run(config: RunConfig, resume: bool) -> Path:
    """Train as configured and write the outputs into ``config.output_dir``; returns it."""
    from accelerate import PartialState
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, set_seed

    from logitguard.artifacts import section_artifacts
    from logitguard.builtin_prompts import MONITOR_PROMPTS
    from logitguard.checkpoints import MarkCompleteCheckpoints, resumable_checkpoint, set_aside_incomplete
    from logitguard.data import collate, encode_dataset
    from logitguard.io import atomic_directory, ensure_writable_dir, recover_directory, write_json, write_text
    from logitguard.models import load_model, load_tokenizer, save_adapter
    from logitguard.monitor import SafetyMonitor
    from logitguard.prompt_files import read_prompts
    from logitguard.str_trainer import STRTrainer

    out = Path(config.output_dir)
    m, d = config.model, config.data
    # Every input is checked before anything is written.
    started = check_output_dir(config, out, resume)
    final = recover_directory(out / ("adapter" if config.lora.enabled else "model"))  # a save cut short by a kill
    if started and (out / "train_log.json").is_file() and final.is_dir():
        print(f"{out} holds a finished run (its adapter and train_log.json): nothing to resume")
        return out
    for key, value in (("str.tokens", config.str.tokens), ("str.anchors", config.str.anchors)):
        if config.str.enabled and value and not Path(value).is_file():
            raise FileNotFoundError(f"{key}: no such file {value}")  # before anything is written
    tokenizer = load_tokenizer(m.name_or_path, m.trust_remote_code, m.revision, m.chat_template)
    conversations = load_conversations(config)
    encoded = encode_dataset(tokenizer, conversations, d.max_length, d.on_overflow, d.train)
    monitor_prompts = None
    if config.monitor.every_steps:
        monitor_prompts = read_prompts(config.monitor.prompts) if config.monitor.prompts else MONITOR_PROMPTS
    training_args = config.training_arguments()
    ensure_writable_dir(out)
    device = training_args.device  # sets up the processes (torchrun / accelerate launch) ...
    state = PartialState()  # ... so that this sees all of them
    if state.is_main_process and not started:
        write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    state.wait_for_everyone()
    set_seed(training_args.seed)  # LoRA initialisation draws from the global RNG
    model = load_model(m.name_or_path, m.trust_remote_code, m.revision, m.dtype, m.load_in_4bit, device)
    # The safety tokens serve STR and the refusal score of selection.
    needs_tokens = config.str.enabled or (config.selection.enabled and config.selection.score == "refusal")
    artifacts = None
    if needs_tokens:  # no anchors when only selection's refusal score needs the tokens
        section = config.str if config.str.enabled else replace(config.str, reference="task")
        artifacts = section_artifacts(section, model, tokenizer, out)
    if config.lora.enabled:
        if m.load_in_4bit:
            checkpointing = config.training.get("activation_checkpointing") or config.training.get(
                "gradient_checkpointing"
            )
            model = prepare_model_for_kbit_training(model, bool(checkpointing))
        model = get_peft_model(model, config.lora.peft_config())
    if config.selection.enabled:
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
    if config.str.enabled:
        tokens, anchors = artifacts
        trainer = STRTrainer(**common, str_config=config.str.str_config(), safety_tokens=tokens, anchors=anchors)
    else:
        trainer = Trainer(**common)
    if monitor_prompts is not None:
        mon = config.monitor
        monitor = SafetyMonitor(
            trainer, monitor_prompts, mon.every_steps, mon.min_refusal, mon.action, mon.max_new_tokens
        )
        trainer.add_callback(monitor)

    checkpoint = None
    if resume and trainer.is_world_process_zero():
        for moved in set_aside_incomplete(training_args.output_dir):
            print(f"set aside an incomplete checkpoint as {moved}", file=sys.stderr)
    if resume:
        trainer.accelerator.wait_for_everyone()
        checkpoint = resumable_checkpoint(training_args.output_dir, trainer.is_world_process_zero())
        print(f"resuming from {checkpoint}" if checkpoint else "no complete checkpoint yet: starting from step 0")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if trainer.is_world_process_zero():
        with atomic_directory(out / ("adapter" if config.lora.enabled else "model")) as tmp:
            if config.lora.enabled:
                save_adapter(trainer.model, tmp)
            else:
                trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(out / "train_log.json", trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return out
