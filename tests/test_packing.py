"""The packed anchor pass: anchor sequences packed end to end after the task rows give the same STR terms and
gradients as a separate pass (eager and SDPA attention, a chat template with a system prompt, gradient
accumulation in the Trainer), and the layout itself, as pure functions."""

from __future__ import annotations

import copy

import pytest
import torch

from logitguard.artifacts.references import build_anchor_cache
from logitguard.core.config import STRConfig
from logitguard.core.layout import is_right_padded, pack, packed_index, packed_position_ids, plan_packing
from logitguard.core.objective import STRObjective
from logitguard.errors import LogitGuardError
from logitguard.hosts.custom_loop import str_loss
from tests.helpers import BENIGN, REFUSALS, lora, make_trainer, perturb_lora, safety_tokens, task_batch, tiny_llama


def test_sequences_pack_in_order_and_start_a_row_when_one_does_not_fit():
    plan = plan_packing(torch.tensor([3, 4, 2, 5]), width=7)
    assert plan.row.tolist() == [0, 0, 1, 1] and plan.offset.tolist() == [0, 3, 0, 2] and plan.rows == 2
    values = torch.arange(1, 21).reshape(4, 5)
    packed = pack(values, plan, fill=0)
    assert packed.tolist() == [[1, 2, 3, 6, 7, 8, 9], [11, 12, 16, 17, 18, 19, 20]]
    assert packed_position_ids(plan).tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1, 2] = mask[3, 4] = True
    rows, columns = packed_index(plan, mask)
    assert packed[rows, columns].tolist() == values[mask].tolist()


def test_sequences_fill_the_padding_of_existing_rows_first():
    existing = torch.tensor([[7, 7, 7, 0, 0, 0], [8, 8, 8, 8, 8, 0]])
    plan = plan_packing(torch.tensor([2, 3, 3]), width=6, used=torch.tensor([3, 5]))
    assert plan.row.tolist() == [0, 2, 2] and plan.offset.tolist() == [3, 0, 3] and plan.rows == 3
    values = torch.tensor([[1, 1, 0, 0], [2, 2, 2, 0], [3, 3, 3, 0]])
    packed = pack(values, plan, fill=0, existing=existing)
    assert packed.tolist() == [[7, 7, 7, 1, 1, 0], [8, 8, 8, 8, 8, 0], [2, 2, 2, 3, 3, 3]]
    assert packed_position_ids(plan).tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]]


def test_a_sequence_longer_than_the_row_cannot_be_packed():
    with pytest.raises(LogitGuardError, match="cannot be packed"):
        plan_packing(torch.tensor([3, 9]), width=7)


def test_right_padding_is_told_from_left_padding():
    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert not is_right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))


def terms_and_grads(model, batch, objective):
    model.zero_grad(set_to_none=True)
    terms = str_loss(model, batch, objective)
    terms.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return terms, grads


def system_prompt_tokenizer(tokenizer):
    """The toy tokenizer with a template that adds a default system prompt, as Qwen's does."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|user|>You are a helpful assistant.<|end|>{% endif %}"
        + tokenizer.chat_template
    )
    return tokenizer


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("template", ["plain", "system prompt"])
def test_the_packed_pass_gives_the_separate_pass_terms_and_gradients(tokenizer, attention, template):
    if template == "system prompt":
        tokenizer = system_prompt_tokenizer(tokenizer)
    model = tiny_llama(tokenizer, attention=attention)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS * 3, tokens)
    model = lora(model)
    perturb_lora(model, 0.3)  # a model that moved away from its references: non-zero terms and gradients
    batch = task_batch(tokenizer, BENIGN[:4])
    results = {}
    for anchor_pass in ("packed", "separate"):
        config = STRConfig("mse", 1.0, reference="both", anchors_per_step=6, anchor_pass=anchor_pass)
        results[anchor_pass] = terms_and_grads(model, batch, STRObjective(config, tokens, cache))
    separate_terms, separate_grads = results["separate"]
    assert separate_terms.str_anchor.item() > 1e-3
    terms, grads = results["packed"]
    for name in ("loss", "task", "str_anchor", "str_task"):
        assert getattr(terms, name).item() == pytest.approx(getattr(separate_terms, name).item(), abs=1e-5)
    assert grads.keys() == separate_grads.keys()
    for key, grad in grads.items():
        assert torch.allclose(grad, separate_grads[key], atol=1e-5), key


def test_packing_puts_the_anchors_in_fewer_rows_than_there_are_anchors(tokenizer):
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS * 3, tokens)
    batch = task_batch(tokenizer, [("Help me plant roses.", "Sure, here is how: " + "Step 1: get ready. " * 12)])
    objective = STRObjective(STRConfig(anchors_per_step=6, anchor_pass="packed"), tokens, cache)
    inputs = objective.plan(batch, 0).inputs
    assert 0 < inputs.extra_rows < 6


def test_anchors_that_fit_in_the_task_rows_padding_add_no_row(tokenizer):
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS, tokens)
    pairs = [("Say cat.", "cat"), ("Help me plant roses.", "Sure, here is how: " + "Step 1: get ready. " * 12)]
    batch = task_batch(tokenizer, pairs * 2)  # two short rows with a long padded tail each
    objective = STRObjective(STRConfig(anchors_per_step=2, anchor_pass="packed"), tokens, cache)
    inputs = objective.plan(batch, 0).inputs
    assert inputs.extra_rows == 0 and inputs.input_ids.shape == batch["input_ids"].shape


def test_left_padded_task_rows_are_not_packed(tokenizer):
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS, tokens)
    batch = task_batch(tokenizer, BENIGN[:3])
    batch["attention_mask"] = batch["attention_mask"].flip(1)  # as a left-padding collator would mark them
    auto = STRObjective(STRConfig(anchors_per_step=3), tokens, cache)
    assert auto.plan(batch, 0).inputs.layout.mode == "separate"
    packed = STRObjective(STRConfig(anchors_per_step=3, anchor_pass="packed"), tokens, cache)
    with pytest.raises(LogitGuardError, match="right-padded"):
        packed.plan(batch, 0)


def left_padded(batch: dict, pad_id: int) -> dict:
    """``batch`` (right-padded) as a left-padding collator gives it: each row's tokens moved to the end."""
    out = {
        key: torch.full_like(value, pad_id if key == "input_ids" else (-100 if key == "labels" else 0))
        for key, value in batch.items()
    }
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        for key in out:
            out[key][i, out[key].shape[1] - n :] = batch[key][i, :n]
    return out


def test_padding_is_read_on_every_batch_not_only_the_first(tokenizer):
    """A first batch without padding (every row cut to the same length) must not make later left-padded batches
    packed: packing them would overwrite their real tokens. Each batch gives the separate pass's terms."""
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS * 2, tokens)
    model = lora(model)
    perturb_lora(model, 0.3)
    full = task_batch(tokenizer, BENIGN[:2])
    width = int(full["attention_mask"].sum(1).min())
    full = {key: value[:, :width] for key, value in full.items()}  # rows cut to max_length: no padding at all
    assert bool(full["attention_mask"].all())
    ragged = left_padded(task_batch(tokenizer, BENIGN[:4]), tokenizer.pad_token_id)
    auto = STRObjective(STRConfig("mse", 1.0, anchors_per_step=4), tokens, cache)
    separate = STRObjective(STRConfig("mse", 1.0, anchors_per_step=4, anchor_pass="separate"), tokens, cache)
    for step, batch in enumerate([full, ragged, ragged]):
        ours, theirs = str_loss(model, batch, auto, step), str_loss(model, batch, separate, step)
        assert auto.plan(batch, step).inputs.layout.mode == ("packed" if step == 0 else "separate")
        for name in ("loss", "task", "str_anchor"):
            assert getattr(ours, name).item() == pytest.approx(getattr(theirs, name).item(), abs=1e-5), (step, name)


def test_gradient_accumulation_in_the_trainer_gives_the_same_update_packed_or_separate(tokenizer, tmp_path):
    base = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(base, tokenizer, REFUSALS * 3, tokens)
    adapters = {}
    for anchor_pass in ("packed", "separate"):
        model = copy.deepcopy(base)
        torch.manual_seed(1)
        model = lora(model)
        perturb_lora(model)
        config = STRConfig(penalty="mse", weight=1.0, anchors_per_step=4, anchor_pass=anchor_pass)
        trainer = make_trainer(
            model,
            tokenizer,
            tmp_path / anchor_pass,
            config,
            cache,
            tokens,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            optim="sgd",
        )
        trainer.train()
        adapters[anchor_pass] = {k: v.clone() for k, v in model.state_dict().items() if "lora" in k}
    for key, value in adapters["packed"].items():
        assert torch.allclose(value, adapters["separate"][key], atol=1e-5), key
