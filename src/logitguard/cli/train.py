"""``logitguard train``: LoRA (or full) fine-tuning with STR from a YAML run config.

Run: logitguard train --config configs/llama3.1_8b_lora_str.yaml [key=value ...] [--resume]
Works unchanged under ``accelerate launch`` and ``torchrun`` (the Trainer's Accelerate integration does the
distribution). Every input is resolved before anything is written (files, data, tokenizer, artifacts against the
model, every number's domain); the output folder must be new, empty or this command's own, and one run at a time
holds it (a lock released on every exit). ``--resume`` continues only with the same config and the same inputs
(data, chat template, model, artifacts: their content, not their paths).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from logitguard.cli.common import ArgumentParser
from logitguard.cli.run_config import RunConfig, load_run_config
from logitguard.errors import LogitGuardError, RunStopped
from logitguard.io import read_json

CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"  # content fingerprints of what the run was started with


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="logitguard train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. str.weight=0.5")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides before or after --resume
    config = load_run_config(args.config, args.overrides)
    out = run_stages(config, args.resume) if config.stages else run(config, args.resume)
    print(f"wrote the adapter, STR artifacts, config and training log to {out}")
    return 0


def run_stages(config: RunConfig, resume: bool) -> Path:
    """Every stage of ``config.stages`` in turn, each in ``OUTPUT_DIR/NN-NAME`` from the adapter of the one before;
    finished stages are kept as they are (``--resume`` goes on from the first unfinished one)."""
    from logitguard.io import write_text
    from logitguard.outputs import mark_folder

    root = Path(config.output_dir)
    started = check_output_dir(config, root, resume)
    if not started:
        mark_folder(root, "train")
        write_text(root / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    for index, stage in enumerate(config.stage_runs, start=1):
        print(f"stage {index} of {len(config.stage_runs)}: {stage.output_dir}")
        run(stage, resume, (index, len(config.stage_runs)))
    return root


def stopped_by_monitor(trainer) -> str | None:
    """Why a safety monitor stopped ``trainer``'s run, or None."""
    from logitguard.hosts.monitor import SafetyMonitor

    return next((c.stopped for c in trainer.callback_handler.callbacks if isinstance(c, SafetyMonitor)), None)


def first_difference(earlier: Any, now: Any, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two configs, with both values; None when equal."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in [*earlier, *(k for k in now if k not in earlier)]:
            found = first_difference(earlier.get(key), now.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    if earlier != now:
        return f"{prefix.rstrip('.')}: {earlier!r} then, {now!r} now"
    return None


def check_output_dir(config: RunConfig, out: Path, resume: bool) -> bool:
    """Whether ``out`` holds an earlier start of this very run (``resume`` must then be set); else it must be new or
    empty. Reads only: nothing is written until every input is checked."""
    from logitguard.outputs import claim_folder

    owned = claim_folder(out, "train", "output_dir")
    path = out / CONFIG_FILE
    if not (owned and path.is_file()):
        return False
    if not resume:
        raise LogitGuardError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir")
    try:
        earlier = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LogitGuardError(f"{path}: unreadable ({e}); it is not the config this run was started with") from None
    difference = first_difference(earlier, config.to_dict())
    if difference:
        raise LogitGuardError(f"--resume needs the config {out} was started with; {difference} ({path})")
    return True


def load_conversations(config: RunConfig) -> list:
    from logitguard.data.chat import read_chat_jsonl, record_messages
    from logitguard.data.prompt_files import looks_like_dataset

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


@dataclass
class RunInputs:
    """Everything a run reads, resolved and checked before anything is written."""

    tokenizer: Any
    conversations: list
    encoded: list[dict]
    monitor_prompts: list[str] | None
    training_args: Any
    fingerprints: dict[str, str]  # content fingerprints of the inputs (``inputs.json``), the model's added later


def read_inputs(config: RunConfig) -> RunInputs:
    """Read and check every input that needs no model: files, tokenizer, data, prompts, training arguments."""
    from logitguard.artifacts.builtin_prompts import MONITOR_PROMPTS
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.data.chat import check_answers, check_roles_marked, encode_dataset
    from logitguard.data.prompt_files import read_prompts
    from logitguard.fingerprints import content_fingerprint, file_fingerprint
    from logitguard.models import load_tokenizer

    m, d, s = config.model, config.data, config.str_section
    files = {"str.tokens": s.tokens, "str.anchors": s.anchors, "str.harmful": s.harmful, "str.lookalike": s.lookalike}
    files["str.benign_anchors"] = s.benign_anchors
    files = {key: path for key, path in files.items() if s.enabled and path}
    if config.monitor.every_steps and config.monitor.prompts:
        files["monitor.prompts"] = config.monitor.prompts
    for key, path in files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}: no such file {path}")
    tokenizer = load_tokenizer(m.name_or_path, m.trust_remote_code, m.revision, m.chat_template)
    if s.enabled and s.tokens:  # another tokenizer's artifact is refused before anything is written
        SafetyTokens.load(s.tokens).check_tokenizer(tokenizer, s.tokens)
    for prompts in (s.harmful, s.lookalike):
        if s.enabled and prompts:
            read_prompts(prompts)
    check_roles_marked(tokenizer)
    conversations = load_conversations(config)
    check_answers(conversations, f"data.train {d.train}")
    encoded = encode_dataset(tokenizer, conversations, d.max_length, d.on_overflow, d.train)
    monitor_prompts = None
    if config.monitor.every_steps:
        monitor_prompts = read_prompts(config.monitor.prompts) if config.monitor.prompts else MONITOR_PROMPTS
    fingerprints = {
        "data.train": content_fingerprint(conversations),
        "chat template": content_fingerprint(tokenizer.chat_template),
        **{key: file_fingerprint(path) for key, path in files.items()},
    }
    training_args = config.training_arguments()
    check_schedule(training_args, len(encoded))
    check_reporters(training_args)
    return RunInputs(tokenizer, conversations, encoded, monitor_prompts, training_args, fingerprints)


def check_schedule(args, examples: int) -> None:
    """Refuse a schedule that trains nothing: every optimizer step inside warm-up, whose first step has learning
    rate 0 (``num_train_epochs: 0.001`` gives one such step)."""
    import math

    per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * math.ceil(examples / per_step))
    warmup = args.get_warmup_steps(steps)
    if steps <= warmup:
        raise LogitGuardError(
            f"training: {steps} optimizer step(s), all inside the {warmup} warm-up step(s), the first at learning "
            "rate 0: the adapter would stay (nearly) as it starts; train for more steps or lower training.warmup_steps"
        )


def check_reporters(args) -> None:
    """Every ``report_to`` integration can start (its package installed), before anything is written."""
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        for callback in get_reporting_integration_callbacks(args.report_to):
            callback()
    except (ImportError, RuntimeError, ValueError) as e:
        raise LogitGuardError(f"training.report_to {args.report_to}: {' '.join(str(e).split())}") from None


def check_same_inputs(out: Path, fingerprints: dict[str, str]) -> None:
    """On resume: every input must be the one the run was started with (content, not path)."""
    path = out / INPUTS_FILE
    earlier = read_json(path, dict, "the inputs a run was started with") if path.is_file() else {}
    for key in sorted(earlier.keys() | fingerprints.keys()):
        if earlier.get(key) != fingerprints.get(key):
            raise LogitGuardError(
                f"{key} changed since {out} was started (fingerprint {earlier.get(key)} then, {fingerprints.get(key)} "
                f"now): --resume needs the same inputs; restore them, or start over in a new output_dir"
            )


@contextmanager
def held_by_this_run(out: Path, state):
    """The run lock on ``out``, taken by the main process; every process stops with its error if it is taken."""
    from logitguard.outputs import OutputLock

    lock, error = OutputLock(out), None
    if state.is_main_process:
        try:
            lock.acquire()
        except LogitGuardError as e:
            error = str(e)
    if state.num_processes > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise LogitGuardError(error)
    try:
        yield
    finally:
        lock.release()


def trained_model(config: RunConfig, device):
    """The aligned model, loaded (4-bit for QLoRA) on ``device``: what the artifacts are made from."""
    from logitguard.models import load_model

    m = config.model
    return load_model(m.name_or_path, m.trust_remote_code, m.revision, m.dtype, m.load_in_4bit, device)


def with_adapters(config: RunConfig, model):
    """``model`` with fresh LoRA adapters (after k-bit preparation for QLoRA), or as it is for full fine-tuning."""
    if not config.lora.enabled:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if config.model.load_in_4bit:
        training = config.training
        checkpointing = training.get("activation_checkpointing") or training.get("gradient_checkpointing")
        model = prepare_model_for_kbit_training(model, bool(checkpointing))
    try:
        return get_peft_model(model, config.lora.peft_config())
    except ValueError as e:  # e.g. target modules the model does not have
        raise LogitGuardError(f"lora: {' '.join(str(e).split())}") from None


def run_artifacts(config: RunConfig, model, tokenizer, out: Path):
    """The run's STR artifacts in memory (loaded and checked, or made): a
    :class:`~logitguard.artifacts.PreparedArtifacts`, or None when neither STR nor the refusal score needs them."""
    from logitguard.artifacts import prepare_section_artifacts

    s = config.str_section
    needs_tokens = s.enabled or (config.selection.enabled and config.selection.score == "refusal")
    if not needs_tokens:
        return None
    section = s if s.enabled else replace(s, reference="task")  # the refusal score needs only the tokens
    return prepare_section_artifacts(section, model, tokenizer, out)


def write_start(config: RunConfig, out: Path, fingerprints: dict[str, str], prepared, earlier=None, stage=None) -> None:
    """The first writes of a new run, once every input is checked: the folder's owner mark, the config, the inputs'
    fingerprints, the artifacts made for it and, for a stage of continual fine-tuning, its record."""
    from logitguard.cli.continual import STAGE_FILE, stage_record
    from logitguard.io import write_json, write_text
    from logitguard.outputs import mark_folder

    mark_folder(out, "train")
    write_text(out / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_json(out / INPUTS_FILE, fingerprints)
    if prepared is not None:
        prepared.save()
    if earlier is not None or stage is not None:
        index, total = stage if stage is not None else (None, None)
        write_json(out / STAGE_FILE, stage_record(config, earlier, prepared, index, total))


def selected(config: RunConfig, model, inputs: RunInputs, out: Path, artifacts) -> list[dict]:
    """The encoded examples that sample selection keeps (scored on the model about to be trained, resumably in
    ``out/selection/scores.jsonl``; the main process scores, the others reuse its scores)."""
    from accelerate import PartialState

    from logitguard.artifacts.builtin_prompts import HARMFUL_PROMPTS
    from logitguard.artifacts.pairs import refusal_pairs
    from logitguard.data.prompt_files import read_prompts
    from logitguard.selection import parameters_fingerprint, select_samples
    from logitguard.selection.scores import READS_REFUSALS

    s, d, section = config.selection, config.data, config.str_section
    selection = s.selection_config(d.max_length, d.on_overflow, inputs.training_args.seed)
    identity = {"data": inputs.fingerprints["data.train"], "adapter": parameters_fingerprint(model)}
    identity["model"] = config.model.name_or_path
    with PartialState().main_process_first():
        refusals = []
        if s.score in READS_REFUSALS and (artifacts is None or artifacts.anchors is None):
            prompts = read_prompts(section.harmful) if section.harmful else HARMFUL_PROMPTS
            refusals = refusal_pairs(model, inputs.tokenizer, section.refusals, prompts)
        samples = ((f"{d.train}: record {i + 1}", messages) for i, messages in enumerate(inputs.conversations))
        keep = select_samples(
            model,
            inputs.tokenizer,
            samples,
            selection,
            out / "selection" / "scores.jsonl",
            identity,
            total=len(inputs.conversations),
            tokens=artifacts.tokens if artifacts is not None else None,
            anchors=artifacts.anchors if artifacts is not None else None,
            refusals=refusals,
        )
    return [example for example, kept in zip(inputs.encoded, keep, strict=True) if kept]


def make_trainer(config: RunConfig, model, inputs: RunInputs, dataset: list[dict], prepared):
    """The run's trainer (STR's or plain SFT), with complete-checkpoint marks and the safety monitor."""
    from logitguard.data.chat import collate
    from logitguard.hosts.builder import build_trainer
    from logitguard.hosts.checkpoints import MarkCompleteCheckpoints
    from logitguard.hosts.monitor import SafetyMonitor

    tokenizer, section = inputs.tokenizer, config.str_section
    artifacts = prepared.artifacts if prepared is not None else None
    trainer = build_trainer(
        "str" if section.enabled else "sft",
        model=model,
        args=inputs.training_args,
        train_dataset=dataset,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MarkCompleteCheckpoints()],
        str_config=section.str_config() if section.enabled else None,
        tokens=artifacts.tokens if artifacts is not None else None,
        anchors=artifacts.anchors if artifacts is not None else None,
        benign_anchors=prepared.benign_anchors if prepared is not None else None,
    )
    if inputs.monitor_prompts is not None:
        mon = config.monitor
        trainer.add_callback(
            SafetyMonitor(
                trainer, inputs.monitor_prompts, mon.every_steps, mon.min_refusal, mon.action, mon.max_new_tokens
            )
        )
    return trainer


def train_resumably(trainer, resume: bool) -> None:
    """``trainer.train()``, from the newest complete checkpoint when resuming (incomplete ones set aside)."""
    from logitguard.hosts.checkpoints import resumable_checkpoint, set_aside_incomplete

    folder = trainer.args.output_dir
    checkpoint = None
    if resume:
        if trainer.is_world_process_zero():
            for moved in set_aside_incomplete(folder):
                print(f"set aside an incomplete checkpoint as {moved}", file=sys.stderr)
        trainer.accelerator.wait_for_everyone()
        checkpoint = resumable_checkpoint(folder, trainer.is_world_process_zero())
        print(f"resuming from {checkpoint}" if checkpoint else "no complete checkpoint yet: starting from step 0")
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except (OSError, RuntimeError) as e:
        if isinstance(e, OSError) or "write" in str(e).lower():  # a full disk while saving a checkpoint
            raise LogitGuardError(
                f"{folder}: writing a checkpoint failed ({' '.join(str(e).split())}); the complete checkpoints are "
                "kept: free space and rerun with --resume"
            ) from None
        raise


def write_result(config: RunConfig, trainer, tokenizer, out: Path) -> None:
    """The adapter (or full model) and the training log, each written atomically, by the main process."""
    from logitguard.io import atomic_directory, write_json
    from logitguard.models import save_adapter

    if trainer.is_world_process_zero():
        with atomic_directory(out / ("adapter" if config.lora.enabled else "model")) as tmp:
            if config.lora.enabled:
                save_adapter(trainer.model, tmp)
            else:
                trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(out / "train_log.json", trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()


def run(config: RunConfig, resume: bool, stage: tuple[int, int] | None = None) -> Path:
    """Train as configured and write the outputs into ``config.output_dir``; returns it. ``stage``: this run's
    place in a ``stages`` list (index from 1, count)."""
    from accelerate import PartialState
    from transformers import set_seed

    from logitguard.cli.continual import base_model, continued_model, earlier_stage, with_earlier_artifacts
    from logitguard.core.model_access import check_head_readable
    from logitguard.fingerprints import folder_fingerprint
    from logitguard.io import recover_directory
    from logitguard.models.adapters import base_fingerprint

    earlier = earlier_stage(config) if config.continue_from else None
    if earlier is not None:  # the same STR references in every stage: the first stage's artifacts
        config = with_earlier_artifacts(config, earlier)
    out = Path(config.output_dir)
    if resume and config.training.get("save_only_model"):
        raise LogitGuardError(
            "--resume with training.save_only_model: true: its checkpoints hold no optimizer or learning-rate "
            "schedule state, so the run cannot continue as it would have; start over in a new output_dir"
        )
    started = check_output_dir(config, out, resume)
    final = recover_directory(out / ("adapter" if config.lora.enabled else "model"))  # a save cut short by a kill
    if started and (out / "train_log.json").is_file() and final.is_dir():
        print(f"{out} holds a finished run (its adapter and train_log.json): nothing to resume")
        return out
    inputs = read_inputs(config)
    if earlier is not None:
        inputs.fingerprints["continue_from"] = folder_fingerprint(earlier["adapter"])
    device = inputs.training_args.device  # sets up the processes (torchrun / accelerate launch) ...
    state = PartialState()  # ... so that this sees all of them
    with held_by_this_run(out, state):
        if check_output_dir(config, out, resume) != started:  # another run wrote it meanwhile: decide anew
            raise LogitGuardError(f"{out} was started by another run while this one read its inputs; rerun")
        set_seed(inputs.training_args.seed)  # LoRA initialisation draws from the global RNG
        model = trained_model(config, device)
        inputs.fingerprints["model"] = base_fingerprint(model)
        if started:
            check_same_inputs(out, inputs.fingerprints)
        # the earlier stage's adapter trained further (not merged: the base stays the aligned model), or fresh adapters
        # (which change nothing the artifacts are made from)
        model = continued_model(config, model, earlier) if earlier is not None else with_adapters(config, model)
        if config.str_section.enabled:
            check_head_readable(model)  # LoRA on the LM head: refused before anything is written
        with state.main_process_first():  # the main process makes and writes the artifacts; the others read them
            with base_model(model, earlier is not None):  # made from the aligned model, adapters off
                prepared = run_artifacts(config, model, inputs.tokenizer, out)
            if state.is_main_process and not started:
                write_start(config, out, inputs.fingerprints, prepared, earlier, stage)
        artifacts = prepared.artifacts if prepared is not None else None
        if config.selection.enabled:
            aligned = earlier is not None and config.selection.weights == "aligned"
            with base_model(model, aligned):  # scores at the aligned weights, or at this stage's start
                dataset = selected(config, model, inputs, out, artifacts)
        else:
            dataset = inputs.encoded
        trainer = make_trainer(config, model, inputs, dataset, prepared)
        train_resumably(trainer, resume)
        write_result(config, trainer, inputs.tokenizer, out)
        if reason := stopped_by_monitor(trainer):
            raise RunStopped(
                f"the safety monitor stopped training: {reason} (monitor.action: stop); the adapter and "
                f"train_log.json at that step are in {out}, and the run did not reach its last step"
            )
    return out
