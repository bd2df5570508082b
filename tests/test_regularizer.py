"""STRObjective and its custom-loop host str_loss: the adapter between a (PEFT) causal LM and the pure penalties."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from logitguard.artifacts.references import build_anchor_cache
from logitguard.core.config import STRConfig
from logitguard.core.objective import STRObjective, refusal_conflicts
from logitguard.core.penalties import logit_mse, salient_logits
from logitguard.core.schedule import AnchorSchedule, shard
from logitguard.data.chat import collate, encode_chat, prompt_ids
from logitguard.evaluation.generation import generate
from logitguard.evaluation.verdicts import is_refusal
from logitguard.hosts.custom_loop import str_loss
from tests.helpers import BENIGN, REFUSALS, lora, perturb_lora, safety_tokens, task_batch, tiny_llama


def objective(tokens, config, cache=None):
    """An objective whose step-0 draw is every row of ``cache`` (penalties sum over positions: order-free)."""
    if cache is not None:
        config = STRConfig(**{**config.__dict__, "anchors_per_step": len(cache)})
    return STRObjective(config, tokens, cache)


def test_plain_task_loss_equals_transformers_loss(random_model, tokenizer):
    batch = task_batch(tokenizer)
    terms = str_loss(random_model, batch, None)
    expected = random_model(**batch).loss
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms.str_anchor.item() == 0 and terms.str_task.item() == 0


def test_num_items_in_batch_normalises_the_summed_task_loss(random_model, tokenizer):
    batch = task_batch(tokenizer)
    n = int((batch["labels"][:, 1:] != -100).sum())
    mean = str_loss(random_model, batch, None).task
    assert str_loss(random_model, batch, None, num_items_in_batch=4 * n).task.item() == pytest.approx(
        mean.item() / 4, rel=1e-5
    )


@pytest.mark.parametrize("anchor_pass", ["packed", "separate"])
@pytest.mark.parametrize(("rest_bucket", "target_bucket"), [(True, True), (True, False), (False, True), (False, False)])
def test_anchor_penalty_equals_its_definition_from_full_vocabulary_logits(
    random_model, tokenizer, rest_bucket, target_bucket, anchor_pass
):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS, tokens)
    config = STRConfig(
        penalty="mse", weight=1.0, rest_bucket=rest_bucket, target_bucket=target_bucket, anchor_pass=anchor_pass
    )
    str_objective = objective(tokens, config, cache)
    str_objective.check_model(random_model)  # the aligned model, before full fine-tuning moves it
    # Move the model away from the cached references so the penalty is non-zero.
    with torch.no_grad():
        random_model.model.norm.weight.mul_(10.0)
    anchors = cache.rows(torch.arange(len(cache)))
    shared = str_loss(random_model, task_batch(tokenizer), str_objective)

    # The same penalty from full-vocabulary logits, position by position.
    logits = random_model(anchors["input_ids"], attention_mask=anchors["attention_mask"]).logits
    target = anchors["target_mask"]
    current_rows, reference_rows = [], []
    for row, col in target.nonzero().tolist():
        next_id = int(anchors["input_ids"][row, col + 1])
        ids = tokens.ids + ([next_id] if target_bucket and next_id not in tokens.ids else [])
        current = logits[row, col]
        reference = anchors["ref_logits"][row, col].tolist()
        if target_bucket and next_id not in tokens.ids:
            reference.append(float(anchors["ref_target_logits"][row, col]))
        reference = torch.tensor(reference)
        if rest_bucket:
            ref_all = anchors["ref_logsumexp"][row, col]
            current, reference = current.log_softmax(-1)[ids], reference - ref_all
            current = torch.cat([current, (1 - current.exp().sum()).log().unsqueeze(0)])
            reference = torch.cat([reference, (1 - reference.exp().sum()).log().unsqueeze(0)])
        else:
            current = current[ids]
        if target_bucket and next_id in tokens.ids:  # the masked target column: equal in both
            current, reference = torch.cat([current, torch.zeros(1)]), torch.cat([reference, torch.zeros(1)])
        current_rows.append(current)
        reference_rows.append(reference)
    current, reference = torch.stack(current_rows), torch.stack(reference_rows)
    separate = logit_mse(current, reference, torch.ones(len(current), dtype=torch.bool))
    assert shared.str_anchor.item() > 0.05
    assert shared.str_anchor.item() == pytest.approx(separate.item(), rel=1e-4)
    assert shared.loss.item() == pytest.approx((shared.task + separate).item(), rel=1e-4)


def test_unchanged_model_has_zero_anchor_penalty(random_model, tokenizer):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS, tokens)
    terms = str_loss(random_model, task_batch(tokenizer), objective(tokens, STRConfig(), cache))
    assert terms.str_anchor.item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_only_trainable_lora_parameters(random_model, tokenizer):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS, tokens)
    model = lora(random_model)
    perturb_lora(model)  # a non-zero LoRA update, so the penalty has a gradient
    terms = str_loss(model, task_batch(tokenizer), objective(tokens, STRConfig(reference="both"), cache))
    terms.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert terms.str_anchor.item() > 0 and terms.str_task.item() > 0


def test_task_reference_is_the_model_with_adapters_disabled(random_model, tokenizer):
    tokens = safety_tokens(tokenizer)
    model = lora(random_model)  # LoRA B starts at zero: model == reference
    task_only = objective(tokens, STRConfig(reference="task", mask_conflicts=False))
    assert str_loss(model, task_batch(tokenizer), task_only).str_task.item() == pytest.approx(0.0)
    perturb_lora(model)
    assert str_loss(model, task_batch(tokenizer), task_only).str_task.item() > 0
    assert model.training  # the reference pass restores the training mode


def test_task_reference_needs_a_peft_model(random_model, tokenizer):
    with pytest.raises(ValueError, match="needs a PEFT model.*anchors"):
        str_loss(random_model, task_batch(tokenizer), objective(safety_tokens(tokenizer), STRConfig(reference="task")))


def test_an_objective_with_anchors_needs_the_cache(tokenizer):
    with pytest.raises(ValueError, match="needs an anchor cache"):
        STRObjective(STRConfig(), safety_tokens(tokenizer))


def test_refusal_conflicts():
    ids = torch.tensor([7, 9])
    ref_salient = torch.tensor([[5.0, 1.0], [0.0, 1.0], [5.0, 0.0]])
    ref_label = torch.tensor([2.0, 2.0, 1.0])
    labels = torch.tensor([3, 4, 7])  # the last label is itself a safety token
    assert refusal_conflicts(ref_salient, ref_label, labels, ids).tolist() == [True, False, False]


def test_conflict_masking_lets_the_task_teach_what_the_reference_refuses(small_toy, corpus):
    """The task teaches answers to prompts the aligned model refuses; pinning those positions to it keeps refusing.

    (Over-refused benign prompts are the practical case; the small toy model over-refuses none, so the prompts
    here are refused harmful ones given compliant answers: the same conflict between task and reference.)
    """
    tokenizer = AutoTokenizer.from_pretrained(small_toy.aligned)
    aligned = AutoModelForCausalLM.from_pretrained(small_toy.aligned)
    prompts = [e.prompt for e in corpus.train_harmful[::48]]
    answers = generate(aligned, tokenizer, prompts, max_new_tokens=8, desc=None)
    data = [
        (p, "Sure, here is how: Step 1: get ready.") for p, a in zip(prompts, answers, strict=True) if is_refusal(a)
    ]
    assert len(data) >= 4, "the small toy model should refuse harmful prompts it was aligned on"
    refused = [p for p, _ in data]
    tokens = safety_tokens(tokenizer)
    rates = {}
    for mask_conflicts in (True, False):
        model = lora(AutoModelForCausalLM.from_pretrained(small_toy.aligned))
        config = STRConfig(penalty="mse", weight=10.0, reference="task", mask_conflicts=mask_conflicts)
        history = own_loop(model, tokenizer, data, objective(tokens, config), steps=40, batch_size=4, lr=3e-3)
        assert (history[0]["str_conflict_fraction"] > 0) == mask_conflicts
        rates[mask_conflicts] = first_token_refusal_mass(model, tokenizer, refused, tokens.id_tensor())
    assert rates[True] < 0.5 * rates[False], rates


def own_loop(model, tokenizer, data, objective, steps: int, batch_size: int, lr: float) -> list[dict[str, float]]:
    """A user's own training loop around ``str_loss`` (README's example), cycling through ``data`` in order."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    encoded = [encode_chat(tokenizer, p, r) for p, r in data]
    history = []
    model.train()
    for step in range(steps):
        rows = [encoded[(step * batch_size + i) % len(encoded)] for i in range(batch_size)]
        terms = str_loss(model, collate(rows, tokenizer.pad_token_id), objective, step)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        history.append(terms.logs())
    return history


def first_token_refusal_mass(model, tokenizer, prompts, ids):
    """Mean probability the model gives the safety tokens as the first token of its answer."""
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    batch = collate([{"input_ids": ids_, "labels": ids_} for ids_ in encoded], tokenizer.pad_token_id)
    last = batch["attention_mask"].sum(1) - 1
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    probs = logits[torch.arange(len(prompts)), last].softmax(-1)
    return float(probs[:, ids].sum(-1).mean())


def test_anchor_schedule_covers_every_row_once_per_epoch_and_depends_only_on_the_step():
    schedule = AnchorSchedule(n_rows=9, per_step=4, seed=0)
    draws = torch.cat([schedule.rows(step) for step in range(9)])  # 36 rows = 4 epochs of 9
    for epoch in range(4):
        assert sorted(draws[9 * epoch : 9 * (epoch + 1)].tolist()) == list(range(9))
    assert torch.equal(AnchorSchedule(9, 4, seed=0).rows(5), draws[20:24])  # a fresh (resumed) schedule agrees
    assert not torch.equal(AnchorSchedule(9, 4, seed=1).rows(0), draws[:4])


def test_anchor_schedule_every_n_steps_and_shards():
    schedule = AnchorSchedule(n_rows=10, per_step=4, every=3)
    assert [schedule.active(s) for s in range(7)] == [True, False, False, True, False, False, True]
    assert torch.equal(schedule.rows(3), AnchorSchedule(10, 4).rows(1))
    rows = schedule.rows(0)
    parts = [shard(rows, i, 3) for i in range(3)]
    assert [len(p) for p in parts] == [2, 1, 1] and torch.equal(torch.cat(parts), rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": -0.1}, "weight must be >= 0"),
        ({"penalty": "huber"}, "unknown penalty"),
        ({"reference": "other"}, "reference"),
        ({"anchors_per_step": 0}, "anchors_per_step"),
        ({"anchor_every": 0}, "anchor_every"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        STRConfig(**kwargs)


def test_salient_logits_of_the_model_equal_slices_of_its_full_logits(random_model, tokenizer):
    batch = task_batch(tokenizer)
    out = random_model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    ids = safety_tokens(tokenizer).id_tensor()
    z = salient_logits(out.hidden_states[-1], random_model.lm_head.weight[ids])
    assert torch.allclose(z, out.logits[..., ids], atol=1e-5)


def test_str_loss_with_gradient_accumulation_equals_one_big_batch(tokenizer):
    """Four micro-batches of 2, each with its share of the step's anchors and the step's label count, give the
    terms and gradients of one batch of 8: the anchor term is not counted once per micro-batch."""
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS * 3, tokens)
    model = lora(model)
    perturb_lora(model, 0.3)
    objective = STRObjective(STRConfig("mse", 1.0, reference="both", anchors_per_step=8), tokens, cache)
    batch = task_batch(tokenizer, BENIGN[:8])
    labels = int((batch["labels"][:, 1:] != -100).sum())

    def grads() -> dict[str, torch.Tensor]:
        found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return found

    whole = str_loss(model, batch, objective, step=0)
    whole.loss.backward()
    whole_grads = grads()
    parts = []
    for micro in range(4):
        rows = {key: value[2 * micro : 2 * micro + 2] for key, value in batch.items()}
        terms = str_loss(model, rows, objective, 0, num_items_in_batch=labels, micro_batch=micro, micro_batches=4)
        terms.loss.backward()
        parts.append(terms)
    accumulated = grads()
    assert whole.str_anchor.item() > 1e-3 and whole.str_task.item() > 1e-4
    for name in ("loss", "task", "str_anchor", "str_task"):
        total = sum(getattr(t, name).item() for t in parts)
        assert total == pytest.approx(getattr(whole, name).item(), rel=1e-5), name
    assert accumulated.keys() == whole_grads.keys()
    for key, grad in whole_grads.items():
        assert torch.allclose(accumulated[key], grad, atol=1e-6), key


def test_anchor_tokens_keeps_only_the_first_targets_of_each_refusal(tokenizer):
    """``anchor_tokens: N`` pins each anchor's first N target positions only, and cuts its sequence after them."""
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(model, tokenizer, REFUSALS, tokens)
    full = STRObjective(STRConfig(anchors_per_step=3), tokens, cache)
    first = STRObjective(STRConfig(anchors_per_step=3, anchor_tokens=2), tokens, cache)
    assert first.targets.mask.sum(1).tolist() == [2, 2, 2]
    assert full.targets.mask.sum(1).tolist() == cache.target_mask.sum(1).tolist()
    assert (first.targets.lengths < full.targets.lengths).all()
    # the kept positions are the first targets, with the same references
    assert torch.equal(
        first.targets.reference,
        full.targets.reference[
            [i for r in range(3) for i in range(int(full.targets.start[r]), int(full.targets.start[r]) + 2)]
        ],
    )
    model = lora(model)
    perturb_lora(model, 0.3)
    batch = task_batch(tokenizer)
    assert str_loss(model, batch, first).str_anchor.item() > 0
