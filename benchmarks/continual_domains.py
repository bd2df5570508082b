"""The domains of the continual benchmark: each one's training pool, its held-out test items and its task score.

Not a benchmark itself: ``python -m benchmarks.continual``. The data come from ``../shared/data`` (its
``continual/README.md`` maps them to the paper's Dolly, GSM8K, MedMCQA and SQuAD v2):

* ``codealpaca``: CodeAlpaca-2k ``{"instruction", "input", "output"}`` (the prompt is the instruction, a blank line
  and the input); split by a hash of the prompt, 30% held out (:func:`~logitguard.lab.public_data.held_out`).
  Score: the per-token likelihood of the reference answer, ``exp(-NLL)`` (generated code cannot be graded here).
* ``gsm8k``: GSM8K's training problems (the short ones) and its test split. Score: answer accuracy of generated
  solutions (the ``#### n`` number), with the answer NLL beside it.
* ``pubmedqa``: PQA-L's 1,000 expert-labelled questions; the official test split's 500 ids are held out, the other
  500 train. The target is the terse decision, ``yes``, ``no`` or ``maybe``: the paper's "format mismatch" with a
  chat model's verbose answers. Score: accuracy of the option the model finds most likely (no generation).
* ``squad_v2``: the 3,000 training and 500 test questions of the folder (unanswerable ones answered
  ``unanswerable``). Score: SQuAD's token F1 of a generated answer (an unanswerable question scores 1 only for an
  abstention), exact match beside it.

Every score is in [0, 1], higher is better, so backward transfer and forgetting average over domains.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logitguard.io import read_json, text_lines
from logitguard.lab.public_data import held_out

Pair = tuple[str, str]
UNANSWERABLE = "unanswerable"


@dataclass(frozen=True)
class Domain:
    """One domain: its training pool and its test pairs, and how a model is scored on them.

    ``score(setting, model, test)`` returns the domain's metrics (``score`` in [0, 1] first, then its others).
    """

    name: str
    train: list[Pair]
    test: list[Pair]
    score: Callable


def _alpaca_prompt(record: dict) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]


def codealpaca(root: Path) -> tuple[list[Pair], list[Pair]]:
    records = read_json(root / "continual" / "codealpaca" / "code_alpaca_2k.json", list, "CodeAlpaca")
    pairs = [(_alpaca_prompt(r), r["output"]) for r in records if r.get("output")]
    return [p for p in pairs if not held_out(p[0])], [p for p in pairs if held_out(p[0])]


def gsm8k_pairs(root: Path) -> tuple[list[Pair], list[Pair]]:
    from logitguard.lab.public_data import gsm8k

    return gsm8k(root, "train"), gsm8k(root, "test")


def _pubmed_prompt(record: dict) -> str:
    contexts = record["CONTEXTS"] if isinstance(record["CONTEXTS"], list) else [record["CONTEXTS"]]
    return f"{' '.join(contexts)}\n\nQuestion: {record['QUESTION']}\nAnswer with one word: yes, no or maybe."


def pubmedqa(root: Path) -> tuple[list[Pair], list[Pair]]:
    folder = root / "continual" / "pubmedqa"
    records = read_json(folder / "ori_pqal.json", dict, "PubMedQA")
    test_ids = set(read_json(folder / "test_ground_truth.json", dict, "PubMedQA's test split"))
    pairs = {pmid: (_pubmed_prompt(r), r["final_decision"]) for pmid, r in records.items()}
    return [p for i, p in pairs.items() if i not in test_ids], [p for i, p in pairs.items() if i in test_ids]


def _squad_pair(record: dict) -> Pair:
    prompt = (
        f"{record['context']}\n\nQuestion: {record['question']}\nAnswer with a short span of the text above, or "
        f"'{UNANSWERABLE}' if the text does not say."
    )
    answers = record["answers"]["text"]
    return prompt, answers[0] if answers else UNANSWERABLE


def squad_v2(root: Path) -> tuple[list[Pair], list[Pair]]:
    folder = root / "continual" / "squad_v2"
    read = lambda name: [_squad_pair(json.loads(line)) for _, line in text_lines(folder / name) if line.strip()]  # noqa: E731
    return read("train.jsonl"), read("test.jsonl")


# --- scores ------------------------------------------------------------------------------------------------------


def likelihood_score(setting, model, test: list[Pair]) -> dict[str, float]:
    from logitguard.lab.gsm8k import answer_nll

    nll = answer_nll(model, setting.tokenizer, test)
    return {"score": float(2.718281828459045 ** (-nll)), "nll": nll}


def gsm8k_score(setting, model, test: list[Pair], n_generated: int = 20) -> dict[str, float]:
    from logitguard.evaluation.generation import generate
    from logitguard.lab.gsm8k import answer_nll
    from logitguard.lab.public_data import gsm8k_number

    questions = [q for q, _ in test[:n_generated]]
    answers = generate(model, setting.tokenizer, questions, 192, 25, None)
    gold = [gsm8k_number(a) for _, a in test[:n_generated]]
    found = [gsm8k_number(a) for a in answers]
    accuracy = statistics.mean(f is not None and f == g for f, g in zip(found, gold, strict=True))
    return {"score": accuracy, "nll": answer_nll(model, setting.tokenizer, test)}


def option_score(setting, model, test: list[Pair], options: tuple[str, ...] = ("yes", "no", "maybe")) -> dict:
    """Accuracy of the option whose whole answer the model finds most likely (summed log-probability)."""
    import torch

    from logitguard.core.model_access import eval_mode
    from logitguard.data.chat import collate, encode_chat

    tokenizer, correct = setting.tokenizer, []
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for prompt, answer in test:
            batch = collate([encode_chat(tokenizer, prompt, option) for option in options], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            picked = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            totals = (picked * (labels != -100)).sum(1)
            correct.append(options[int(totals.argmax())] == answer)
    return {"score": statistics.mean(correct)}


def _normalise(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces; as tokens."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD v2's F1 of one answer; an abstention (``unanswerable`` or nothing) matches only an unanswerable gold."""
    predicted = [] if UNANSWERABLE in prediction.lower() else _normalise(prediction)
    expected = [] if gold == UNANSWERABLE else _normalise(gold)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_score(setting, model, test: list[Pair]) -> dict[str, float]:
    from logitguard.evaluation.generation import generate

    answers = generate(model, setting.tokenizer, [p for p, _ in test], 24, 25, None)
    first_lines = [a.strip().split("\n")[0] for a in answers]
    f1 = [token_f1(a, g) for a, (_, g) in zip(first_lines, test, strict=True)]
    exact = [
        _normalise(a) == _normalise(g) if g != UNANSWERABLE else UNANSWERABLE in a.lower()
        for a, (_, g) in zip(first_lines, test, strict=True)
    ]
    return {"score": statistics.mean(f1), "exact": statistics.mean(exact)}


READERS = {"codealpaca": codealpaca, "gsm8k": gsm8k_pairs, "pubmedqa": pubmedqa, "squad_v2": squad_v2}
SCORERS = {"codealpaca": likelihood_score, "gsm8k": gsm8k_score, "pubmedqa": option_score, "squad_v2": squad_score}


def domain(name: str, root: Path, tokenizer, n_test: int, max_tokens: int = 384) -> Domain:
    """Domain ``name``: its training pool (prompt and answer within ``max_tokens`` tokens) and ``n_test`` test pairs
    (the first ones of its held-out side, in their files' order)."""
    from logitguard.data.chat import encode_chat

    train, test = READERS[name](root)
    fits = [p for p in train if len(encode_chat(tokenizer, *p)["input_ids"]) <= max_tokens]
    test = [p for p in test if len(encode_chat(tokenizer, *p)["input_ids"]) <= max_tokens][:n_test]
    return Domain(name, fits, test, SCORERS[name])


def stage_data(domain: Domain, n: int, seed: int) -> list[Pair]:
    """The ``n`` training pairs a stage of ``domain`` fine-tunes on (drawn under ``seed``: every method of a seed gets
    the same ones)."""
    return random.Random(f"{domain.name}-{seed}").sample(domain.train, min(n, len(domain.train)))
