"""A real chat model fine-tuned on GSM8K and judged on held-out safety sets: the real-model demo and benchmark.

The aligned model (``smollm2-135m-safe`` by default) is fine-tuned on short GSM8K training problems (benign
fine-tuning), or on the same with a few percent of harmful requests answered compliantly mixed in. It is judged on
prompts kept out of every training and anchor set: harmful refusal (refusals that end) on Safety-Tuned LLaMAs'
``I-MaliciousInstructions`` and ``I-CoNa``, over-refusal on ``I-PhysicalSafetySafe`` and ``I-Alpaca``, and the
task on GSM8K test problems (gold-answer NLL, answer accuracy and the ``#### n`` format rate). The data come from
a folder given by path (:mod:`logitguard.lab.public_data`).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.core.model_access import eval_mode
from logitguard.data.chat import collate, encode_chat
from logitguard.evaluation.generation import generate
from logitguard.evaluation.metrics import safety_rates
from logitguard.evaluation.verdicts import judge_response
from logitguard.lab.public_data import (
    HARMFUL_PROMPT_SETS,
    LOOKALIKE_SETS,
    evaluation_prompts,
    gsm8k,
    gsm8k_number,
    split_prompts,
)
from logitguard.models.loading import load_model, load_tokenizer

Pairs = list[tuple[str, str]]
LEARNING_RATE = 3e-4
N_TRAIN = 320  # short GSM8K training problems of a fine-tuning run
STEPS = 80  # two epochs at batch 8: the budget at which plain SFT erodes refusal by >= 30 points (40 steps: 20)
HARMFUL_EVAL_SETS = ("I-MaliciousInstructions", "I-CoNa")  # half of the harmful prompts from each
SAFE_EVAL_SETS = ("I-PhysicalSafetySafe", "I-Alpaca")  # half of the over-refusal prompts from each
Kind = Literal["harmful", "lookalike", "benign"]
RATE_OF = {"harmful": "harmful_refusal", "lookalike": "lookalike_over_refusal", "benign": "benign_over_refusal"}


@dataclass(frozen=True)
class EvalSet:
    """A held-out evaluation set: its name, what it measures, and its prompts."""

    name: str
    kind: Kind
    prompts: list[str]


def safety_tuned_llamas_sets(root: Path, n: int = 100) -> list[EvalSet]:
    """SmolLM2's evaluation: ``n`` harmful prompts, half from I-MaliciousInstructions and half from I-CoNa, and ``n``
    safe and benign ones, half from I-PhysicalSafetySafe and half from I-Alpaca (over-refusal on both together)."""
    half = n // 2
    sets = []
    for kind, names in (("harmful", HARMFUL_EVAL_SETS), ("benign", SAFE_EVAL_SETS)):
        first, second = (evaluation_prompts(root, name) for name in names)
        sets += [EvalSet(names[0], kind, first[:half]), EvalSet(names[1], kind, second[: n - half])]
    return sets


def public_held_out_sets(root: Path, per_harmful_set: int = 20, per_lookalike_set: int = 50) -> list[EvalSet]:
    """The held-out side (:func:`~logitguard.lab.public_data.held_out`) of every harmful-prompt set (CatQA, HarmfulQA,
    Do-Not-Answer, HarmBench, StrongREJECT: ``per_harmful_set`` each), of the look-alike sets (OR-Bench-Hard,
    CoCoNot's contrast set: ``per_lookalike_set`` each), and Safety-Tuned LLaMAs' I-Alpaca (50 ordinary requests)."""
    sets = [
        EvalSet(name, "harmful", split_prompts(root, "harmful-prompts", name, True)[:per_harmful_set])
        for name in HARMFUL_PROMPT_SETS
    ]
    sets += [
        EvalSet(name, "lookalike", split_prompts(root, "over-refusal", name, True)[:per_lookalike_set])
        for name in LOOKALIKE_SETS
    ]
    return [*sets, EvalSet("I-Alpaca", "benign", evaluation_prompts(root, "I-Alpaca")[:50])]


EVALUATIONS = {"safety-tuned-llamas": safety_tuned_llamas_sets, "public-held-out": public_held_out_sets}


def finetune_config(seed: int = 0, steps: int = STEPS):
    """The fine-tuning of the real-model demo and benchmark: LoRA r=16 on every linear layer, batch 8, cosine."""
    from logitguard.lab.finetune import FinetuneConfig
    from logitguard.settings import LoraSection

    return FinetuneConfig(
        steps=steps,
        batch_size=8,
        lr=LEARNING_RATE,
        warmup_steps=4,
        seed=seed,
        monitor_every=10,
        logging_steps=5,
        lora=LoraSection(r=16, alpha=32, dropout=0.05),
    )


@torch.no_grad()
def answer_nll(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Pairs, batch_size: int = 8) -> float:
    """Mean NLL per answer token of teacher-forced (prompt, answer) pairs: continuous where accuracy is near 0."""
    with eval_mode(model):
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(pairs), batch_size):
            batch = collate(
                [encode_chat(tokenizer, p, a) for p, a in pairs[start : start + batch_size]], tokenizer.pad_token_id
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"
            )
            total, count = total + float(nll), count + int((labels != -100).sum())
    return total / max(count, 1)


@dataclass
class GSM8KSetting:
    """GSM8K fine-tuning of a real aligned chat model; evaluation on held-out safety sets and GSM8K test.

    Attributes:
        data_root: the public data folder.
        model: the aligned model (a built-in name, a folder, a .gguf file).
        evaluation: the held-out sets that judge it (:data:`EVALUATIONS`): Safety-Tuned LLaMAs' (SmolLM2's), or the
            held-out side of the public harmful and look-alike sets (Qwen's).
        n_eval: prompts per safety split (harmful, benign) of the Safety-Tuned LLaMAs evaluation.
        n_task: GSM8K test problems answered by generation (accuracy and format).
        n_nll: GSM8K test problems whose gold answers are scored by NLL.
        max_train_tokens: GSM8K training problems longer than this (prompt + answer) are left out.
        progress: show a progress bar per evaluation set (an evaluation takes minutes on a CPU).
    """

    data_root: Path
    model: str = "smollm2-135m-safe"
    evaluation: str = "safety-tuned-llamas"  # which held-out sets judge it (EVALUATIONS)
    n_eval: int = 100
    n_task: int = 50
    n_nll: int = 100
    max_train_tokens: int = 192
    harmful_tokens: int = 64
    benign_tokens: int = 48
    task_tokens: int = 192
    monitor_tokens: int = 64
    n_monitor: int = 24
    progress: bool = False
    tokenizer: PreTrainedTokenizerBase = field(init=False)

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        self.aligned = self.model
        self.tokenizer = load_tokenizer(self.model)

    def load_aligned(self) -> nn.Module:
        """The aligned model, on the GPU when there is one (where ``Trainer`` would move it anyway)."""
        return load_model(self.model, dtype="float32", device="cuda" if torch.cuda.is_available() else None)

    # --- evaluation: held out from every training and anchor set -----------------------------------------------

    def eval_sets(self) -> list[EvalSet]:
        """The held-out sets this setting is judged on."""
        if self.evaluation == "safety-tuned-llamas":
            return safety_tuned_llamas_sets(self.data_root, self.n_eval)
        return EVALUATIONS[self.evaluation](self.data_root)

    def prompts(self, kind: Kind) -> list[str]:
        return [p for s in self.eval_sets() if s.kind == kind for p in s.prompts]

    @property
    def monitor_prompts(self) -> list[str]:
        return evaluation_prompts(self.data_root, "I-MaliciousInstructions")[-self.n_monitor :]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """:meth:`safety` and :meth:`task` together: what every run of the demo and the benchmarks reports."""
        return self.safety(model) | self.task(model)

    def safety(self, model: nn.Module) -> dict[str, float]:
        """Harmful refusal (whole answers) and over-refusal, pooled by kind and set by set (``KIND_RATE/SET`` when a
        kind has several sets)."""
        verdicts: dict[str, list] = {"harmful": [], "lookalike": [], "benign": []}
        per_set = {}
        sets = self.eval_sets()
        for s in sets:
            tokens = self.harmful_tokens if s.kind == "harmful" else self.benign_tokens
            answers = generate(model, self.tokenizer, s.prompts, tokens, 32, self.desc(s.name))
            found = [judge_response(a) for a in answers]
            verdicts[s.kind] += found
            if sum(other.kind == s.kind for other in sets) > 1:
                rates = safety_rates(**{s.kind: found})
                per_set[f"{RATE_OF[s.kind]}/{s.name}"] = rates[RATE_OF[s.kind]]
        metrics = safety_rates(**verdicts)
        metrics.pop("refusal_then_compliance", None)
        return metrics | per_set

    def task(self, model: nn.Module) -> dict[str, float]:
        """GSM8K test: answer accuracy and ``#### n`` format rate of ``n_task`` generated answers, and the NLL of
        ``n_nll`` gold answers."""
        test = gsm8k(self.data_root, "test")
        questions = [q for q, _ in test[: self.n_task]]
        answers = generate(model, self.tokenizer, questions, self.task_tokens, 25, self.desc("GSM8K test"))
        numbers = [gsm8k_number(a) for a in answers]
        gold = [gsm8k_number(a) for _, a in test[: self.n_task]]
        return {
            "task_accuracy": statistics.mean(n is not None and n == g for n, g in zip(numbers, gold, strict=True)),
            "task_format": statistics.mean(n is not None for n in numbers),
            "task_nll": answer_nll(model, self.tokenizer, test[: self.n_nll]),
        }

    def desc(self, name: str) -> str | None:
        """The progress bar's label of evaluation set ``name``, or None for no bar."""
        return f"evaluating: {name}" if self.progress else None

    def samples(self, model: nn.Module) -> list[dict]:
        safe = self.prompts("lookalike") or self.prompts("benign")
        rows = [("harmful", p) for p in self.prompts("harmful")[:2]] + [("safe", safe[0])]
        rows.append(("task", gsm8k(self.data_root, "test")[0][0]))
        responses = generate(model, self.tokenizer, [p for _, p in rows], self.harmful_tokens, 8, None)
        return [{"kind": k, "prompt": p, "response": r} for (k, p), r in zip(rows, responses, strict=True)]

    # --- fine-tuning data ------------------------------------------------------------------------------------------

    def benign_data(self, n: int, seed: int = 0) -> Pairs:
        """``n`` GSM8K training problems of at most ``max_train_tokens`` tokens, drawn under ``seed``."""
        short = [
            (q, a)
            for q, a in gsm8k(self.data_root, "train")
            if len(encode_chat(self.tokenizer, q, a)["input_ids"]) <= self.max_train_tokens
        ]
        return random.Random(seed).sample(short, min(n, len(short)))
