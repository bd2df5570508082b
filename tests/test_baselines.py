"""Peer-method losses as pure functions, checked against direct implementations (no model needed)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from logitguard.baselines import (
    ConstrainedSFTTrainer,
    constrained_nll,
    constrained_sft_loss,
    full_vocab_kl,
    label_log_probs,
    mix_safety_examples,
    response_betas,
)
from logitguard.data.chat import collate, encode_chat
from logitguard.hosts.custom_loop import str_loss
from tests.helpers import PAIRS, training_args


def test_full_vocab_kl_matches_torch_and_is_zero_for_identical_logits():
    torch.manual_seed(0)
    logits, ref = torch.randn(6, 50), torch.randn(6, 50)
    mask = torch.tensor([True, True, False, True, False, True])
    expected = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1)
    assert full_vocab_kl(logits, ref, mask).item() == pytest.approx(expected[mask].mean().item(), rel=1e-5)
    assert full_vocab_kl(ref, ref, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert full_vocab_kl(logits, ref, torch.zeros(6, dtype=torch.bool)).item() == 0.0


def test_constrained_nll_gradient_is_a_sigmoid_weighted_nll_gradient():
    log_p = torch.tensor([-2.0, -0.5, -3.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0, -3.0])
    betas = torch.tensor([0.5, 2.0, 0.1])
    mask = torch.ones(3, dtype=torch.bool)
    constrained_nll(log_p, ref, betas, mask, reduction="sum").backward()
    weight = 2 * (1 - torch.sigmoid(betas * (log_p.detach() - ref)))
    assert torch.allclose(log_p.grad, -weight)  # d(-log p)/d log p = -1, scaled by the weight
    at_reference = constrained_nll(ref, ref, betas, mask, reduction="sum")
    assert at_reference.item() == pytest.approx(float((2 / betas * torch.log(torch.tensor(2.0))).sum()), rel=1e-6)


def test_small_beta_approaches_plain_nll_gradient():
    log_p = torch.tensor([-2.0], requires_grad=True)
    constrained_nll(log_p, torch.tensor([-2.0]), torch.tensor([1e-4]), torch.ones(1, dtype=torch.bool)).backward()
    assert log_p.grad.item() == pytest.approx(-1.0, abs=1e-3)


def test_response_betas_weigh_the_first_tokens():
    assert response_betas(torch.tensor([0, 1, 4, 5, 9])).tolist() == pytest.approx([0.5, 2.0, 2.0, 0.1, 0.1])


def test_safety_mixing_adds_the_fraction_and_checks_it():
    mixed = mix_safety_examples(list(range(100)), [f"s{i}" for i in range(10)], 0.03, seed=1)
    assert len(mixed) == 103 and sum(isinstance(x, str) for x in mixed) == 3
    assert mixed == mix_safety_examples(list(range(100)), [f"s{i}" for i in range(10)], 0.03, seed=1)
    assert mix_safety_examples([3, 1, 2], ["s"], 0.0) == [3, 1, 2]
    with pytest.raises(ValueError, match="fraction"):
        mix_safety_examples([1], ["s"], 1.5)
    with pytest.raises(ValueError, match="only 1 given"):
        mix_safety_examples(list(range(100)), ["s"], 0.05)


def test_label_log_probs_are_the_models_own_at_each_label_position(random_model, tokenizer):

    encoded = [encode_chat(tokenizer, p, r) for p, r in PAIRS]
    values = label_log_probs(random_model, encoded, tokenizer.pad_token_id, batch_size=2)
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        full = random_model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    for row, (example, got) in enumerate(zip(encoded, values, strict=True)):
        assert len(got) == len(example["input_ids"])
        for t, label in enumerate(example["labels"]):
            expected = full[row, t - 1, label].item() if t > 0 and label != -100 else 0.0
            assert got[t] == pytest.approx(expected, abs=1e-4)


def test_constrained_sft_at_the_reference_has_the_plain_nll_gradient(random_model, tokenizer):
    """Δ = 0 makes every token weight 2(1 − σ(0)) = 1: the same update as SFT on the first step."""
    encoded = [encode_chat(tokenizer, p, r) for p, r in PAIRS]
    for example, values in zip(encoded, label_log_probs(random_model, encoded, tokenizer.pad_token_id), strict=True):
        example["ref_log_probs"] = values
    batch = collate(encoded, tokenizer.pad_token_id)
    random_model.zero_grad()
    str_loss(random_model, batch, None).loss.backward()
    nll_grad = random_model.lm_head.weight.grad.clone()
    random_model.zero_grad()
    logits = random_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = constrained_sft_loss(logits, batch["labels"], batch["ref_log_probs"])
    (total / count).backward()
    assert nll_grad.abs().sum() > 0
    assert torch.allclose(nll_grad, random_model.lm_head.weight.grad, atol=1e-6)


def test_constrained_sft_trainer_runs_and_learns(random_model, tokenizer, tmp_path):
    encoded = [encode_chat(tokenizer, p, r) for p, r in PAIRS * 4]
    for example, values in zip(encoded, label_log_probs(random_model, encoded, tokenizer.pad_token_id), strict=True):
        example["ref_log_probs"] = values
    args = training_args(tmp_path, max_steps=8)
    trainer = ConstrainedSFTTrainer(
        model=random_model,
        args=args,
        train_dataset=encoded,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_the_constrained_sft_peer_on_two_processes_matches_one_process(tmp_path):
    """Its loss is normalised over every process's label tokens, then scaled as the Trainer scales a loss it does not
    compute itself: two processes of batch 4 train the adapters one process of batch 8 does."""
    root = Path(__file__).parents[1]
    runs = {"single": [sys.executable], "double": ["torchrun", "--nproc_per_node=2"]}
    weights = {}
    for name, launcher in runs.items():
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, "-m", "tests.ddp_peer", str(out)], capture_output=True, text=True, timeout=600, cwd=root
        )
        assert done.returncode == 0, done.stderr[-3000:]
        weights[name] = load_file(str(out / "weights.safetensors"))
    assert weights["single"].keys() == weights["double"].keys() and weights["single"]
    for key, value in weights["single"].items():
        assert torch.allclose(weights["double"][key], value, atol=1e-5), key
