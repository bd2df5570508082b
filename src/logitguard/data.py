"""Turn single-turn chat examples into token ids with assistant-only labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a user turn followed by the assistant generation prompt."""
    check_chat_template(tokenizer)
    messages = [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def encode_chat(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> dict[str, list[int]]:
    """Ids of the whole conversation; labels are ``IGNORE_INDEX`` on the prompt part.

    Requires the chat template to render the prompt with its generation prompt
    as an exact prefix of the full conversation (true of common templates).
    """
    head = prompt_ids(tokenizer, prompt)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    if full[: len(head)] != head:
        raise ValueError(
            "the chat template does not render the prompt (with add_generation_prompt=True) as a prefix "
            "of the full conversation, so the assistant tokens cannot be located"
        )
    return {"input_ids": full, "labels": [IGNORE_INDEX] * len(head) + full[len(head) :]}


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "set tokenizer.chat_template or pick an instruct/chat model"
        )


def collate(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into ``input_ids``/``attention_mask``/``labels`` tensors (B, L)."""
    length = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), length), dtype=torch.long),
        "labels": torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(f["labels"])
    return batch
