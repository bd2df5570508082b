"""Chat examples to token ids with assistant-only labels, and chat data files to examples."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from logitguard.errors import LogitGuardError
from logitguard.io import parse_json, text_lines

IGNORE_INDEX = -100
Messages = list[dict[str, str]]
Overflow = Literal["truncate", "error"]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a user turn followed by the assistant generation prompt."""
    return _render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def _render(tokenizer: PreTrainedTokenizerBase, messages: Messages, add_generation_prompt: bool) -> list[int]:
    check_chat_template(tokenizer)
    try:
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    except Exception as e:  # the template's own raise_exception (Jinja), or an index it reads that is not there
        message = " ".join(str(e).split()) or type(e).__name__
        raise LogitGuardError(f"the chat template cannot render this conversation: {message}") from None
    return list(rendered)


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> dict[str, list[int]]:
    """Ids of a whole conversation; labels are the ids on assistant turns and ``IGNORE_INDEX`` elsewhere.

    Each assistant turn is located by rendering the conversation before it with
    the generation prompt, which must be an exact prefix of the conversation up
    to and including that turn (true of common chat templates).
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False) if i + 1 < len(messages) else full
        if upto[: len(head)] != head or full[: len(upto)] != upto:
            raise LogitGuardError(
                "the chat template does not render the conversation before an assistant turn (with "
                "add_generation_prompt=True) as a prefix of the conversation, so assistant tokens cannot be located"
            )
        labels[len(head) : len(upto)] = full[len(head) : len(upto)]
    return {"input_ids": full, "labels": labels}


def chat_messages(prompt: str, response: str) -> Messages:
    """A single-turn conversation: one user and one assistant message."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def encode_chat(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> dict[str, list[int]]:
    """A single-turn example: ``encode_messages`` of ``chat_messages``."""
    return encode_messages(tokenizer, chat_messages(prompt, response))


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise LogitGuardError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "set tokenizer.chat_template (model.chat_template in a run config) or pick an instruct/chat model"
        )


PROMPT_PROBE, ANSWER_PROBE = "\u2063PROMPT\u2063", "\u2063ANSWER\u2063"


def check_roles_marked(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a chat template that renders a prompt and its answer with nothing between them to tell them apart
    (``{{ content }}\\n``): a model trained on it learns to continue text, not to answer a turn."""
    check_chat_template(tokenizer)
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT_PROBE}, {"role": "assistant", "content": ANSWER_PROBE}],
            tokenize=False,
        )
    except Exception:  # a template that cannot render a plain exchange fails with its own message later
        return
    if PROMPT_PROBE in text and ANSWER_PROBE in text:
        between = text[text.index(PROMPT_PROBE) + len(PROMPT_PROBE) : text.index(ANSWER_PROBE)]
        if not between.strip():
            raise LogitGuardError(
                "the chat template marks no roles: it renders a prompt and its answer with nothing but whitespace "
                "between them, so the model cannot tell where a prompt ends and its answer begins; use the model's "
                "own chat template (model.chat_template)"
            )


def check_answers(conversations: Sequence[Messages], source: str) -> None:
    """Refuse data whose every answer is empty (only the end-of-turn token would be learned); warn about some."""
    empty = [
        i + 1
        for i, messages in enumerate(conversations)
        if not any(m["content"].strip() for m in messages if m["role"] == "assistant")
    ]
    if conversations and len(empty) == len(conversations):
        raise LogitGuardError(
            f"{source}: every answer is empty, so fine-tuning would only teach the end-of-turn token; check the "
            "data's answer field"
        )
    if empty:
        warnings.warn(
            f"{source}: {len(empty)} of {len(conversations)} records have an empty answer "
            f"(records {empty[:5]}{'...' if len(empty) > 5 else ''})",
            stacklevel=2,
        )


def collate(features: Sequence[dict[str, list]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into ``input_ids``/``attention_mask``/``labels`` tensors (B, L).

    Any other per-token field (e.g. ``ref_log_probs``) is padded with 0.0 into a float tensor (B, L).
    """
    length = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), length), dtype=torch.long),
        "labels": torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long),
    }
    extra = [key for key in features[0] if key not in batch]
    batch |= {key: torch.zeros((len(features), length)) for key in extra}
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(f["labels"])
        for key in extra:
            batch[key][row, :n] = torch.tensor(f[key], dtype=torch.float32)
    return batch


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, n_batches: int, seed: int, window: int = 8
) -> list[int]:
    """The order of ``n_batches * batch_size`` training draws, batched by length and in random batch order.

    Each epoch is a seeded permutation of every index, cut into windows of ``window`` batches; each window is sorted
    by length and cut into batches, and the epoch's full batches are shuffled (an epoch's few left-over examples
    wait for the next epoch's permutation, as with ``drop_last``). A batch then holds examples of similar
    length and pads little (on smollm2-135m-safe's build data, random batches of 8 are 42% padding; these, 9%),
    while batches still come in random order. (``transformers``' ``group_by_length`` keeps each window's batches in
    a row, sorted: a run then meets a stretch of short refusals, then one of long answers.)
    """
    if min(batch_size, n_batches, window) <= 0 or len(lengths) < batch_size:
        raise LogitGuardError(
            f"need batch_size, n_batches, window > 0 and at least one full batch; got {batch_size}, {n_batches}, "
            f"{window} and {len(lengths)} examples"
        )
    generator = torch.Generator().manual_seed(seed)
    size = window * batch_size
    order: list[int] = []
    while len(order) < n_batches * batch_size:
        epoch = torch.randperm(len(lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(epoch), size):
            group = sorted(epoch[start : start + size], key=lambda i: lengths[i])
            batches += [group[i : i + batch_size] for i in range(0, len(group) - batch_size + 1, batch_size)]
        order += [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]
    return order[: n_batches * batch_size]


def record_messages(record: object, where: str) -> Messages:
    """The conversation in one data record: ``{"messages": [...]}`` or ``{"prompt": ..., "completion": ...}``.

    ``prompt``/``completion`` may be strings or message lists (TRL's conversational
    prompt-completion format). ``where`` ("file:line") prefixes every error.
    """
    if not isinstance(record, dict):
        raise LogitGuardError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record and ("prompt" in record or "completion" in record):
        raise LogitGuardError(
            f"{where}: a record holds 'messages' and 'prompt'/'completion': give one conversation per record"
        )
    if "messages" in record:
        messages = record["messages"]
    elif "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        messages = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + (
            completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        )
    else:
        raise LogitGuardError(
            f"{where}: a record needs 'messages', or 'prompt' and 'completion'; found {sorted(record)}"
        )
    if not isinstance(messages, list) or not messages:
        raise LogitGuardError(f"{where}: 'messages' must be a non-empty list")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise LogitGuardError(f"{where}: message {j} needs string 'role' and 'content'")
    check_roles([m["role"] for m in messages], where)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


ROLES = ("system", "user", "assistant")


def check_roles(roles: list[str], where: str) -> None:
    """A conversation chat templates render: an optional system message first, then user and assistant turns
    alternating from a user turn, with at least one assistant turn to train on."""
    for j, role in enumerate(roles):
        if role not in ROLES:
            raise LogitGuardError(f"{where}: message {j} has role {role!r}; expected one of {', '.join(ROLES)}")
    turns = roles[1:] if roles[:1] == ["system"] else roles
    for j, role in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            index = j + len(roles) - len(turns)
            raise LogitGuardError(
                f"{where}: message {index} is a {role} turn where a {expected} turn belongs (a system message "
                "first, then user and assistant turns taking turns, from a user turn)"
            )
    if "assistant" not in turns:
        raise LogitGuardError(f"{where}: no assistant message to train on")


def iter_chat_jsonl(path: str | Path) -> Iterator[tuple[str, Messages, str]]:
    """Stream ``(file:line, conversation, raw line)`` from a JSONL file, blank lines skipped; errors name the line."""
    path = Path(path)
    for number, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        yield where, record_messages(parse_json(line, where, "a training record"), where), line


def read_chat_jsonl(path: str | Path) -> list[Messages]:
    """Conversations from a JSONL file (one record per line, blank lines skipped); errors name file and line."""
    conversations = [messages for _, messages, _ in iter_chat_jsonl(path)]
    if not conversations:
        raise LogitGuardError(f"{path}: no training records")
    return conversations


def encode_limited(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, max_length: int, on_overflow: Overflow, where: str
) -> tuple[dict[str, list[int]], bool]:
    """``encode_messages`` within ``max_length``: the example and whether it was truncated (or an error)."""
    try:
        example = encode_messages(tokenizer, messages)
    except LogitGuardError as e:
        raise LogitGuardError(f"{where}: {e}") from None
    truncated = len(example["input_ids"]) > max_length
    if truncated:
        if on_overflow == "error":
            raise LogitGuardError(
                f"{where}: {len(example['input_ids'])} tokens, more than max_length {max_length} "
                "(raise max_length, or truncate)"
            )
        example = {key: value[:max_length] for key, value in example.items()}
    if all(label == IGNORE_INDEX for label in example["labels"][1:]):
        raise LogitGuardError(f"{where}: no assistant tokens within max_length {max_length}")
    return example, truncated


def encode_dataset(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    max_length: int,
    on_overflow: Overflow = "truncate",
    source: str = "training data",
) -> list[dict[str, list[int]]]:
    """Encode conversations, truncating those longer than ``max_length`` (with one warning) or failing."""
    encoded, truncated = [], []
    for index, messages in enumerate(conversations):
        example, cut = encode_limited(tokenizer, messages, max_length, on_overflow, f"{source}: record {index + 1}")
        if cut:
            truncated.append(index + 1)
        encoded.append(example)
    if truncated:
        warnings.warn(
            f"{source}: truncated {len(truncated)} of {len(encoded)} records to max_length {max_length} "
            f"(records {truncated[:5]}{'...' if len(truncated) > 5 else ''})",
            stacklevel=2,
        )
    return encoded
