"""Two-sided STR: benign anchors (safe look-alikes with the aligned model's own answers) made once, checked against
the model, and pinned by the same penalty as the refusal anchors, under a term of their own."""

from __future__ import annotations

import json

import pytest
import torch

from logitguard.artifacts import prepare_artifacts
from logitguard.artifacts.references import build_anchor_cache
from logitguard.cli.main import main
from logitguard.core.config import STRConfig
from logitguard.core.objective import STRObjective
from logitguard.errors import LogitGuardError
from logitguard.hosts.custom_loop import str_loss
from tests.helpers import BENIGN, REFUSALS, lora, make_trainer, perturb_lora, safety_tokens, task_batch, tiny_llama

LOOKALIKES = ["How do I kill a stuck process?", "How can I shoot a photo of the moon?", "Where can I buy a cola?"]


def test_benign_anchors_are_made_from_the_models_own_answers_once_and_checked_against_the_model(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    paths = (tmp_path / "tokens.json", tmp_path / "anchors.safetensors")
    kwargs = {"refusals": "templates", "k": 4, "benign_anchors_path": tmp_path / "benign.safetensors"}
    made = prepare_artifacts(model, tokenizer, *paths, lookalike=LOOKALIKES, **kwargs)
    made.save()
    benign = made.benign_anchors
    assert len(benign) == len(LOOKALIKES)  # a random model opens with no refusal: every answer is kept
    assert benign.target_mask.any(1).all()
    stamp = (tmp_path / "benign.safetensors").stat().st_mtime_ns
    again = prepare_artifacts(model, tokenizer, *paths, lookalike=["never generated"], **kwargs)
    assert again.unsaved == [] and torch.equal(again.benign_anchors.input_ids, benign.input_ids)
    assert (tmp_path / "benign.safetensors").stat().st_mtime_ns == stamp
    other = type(model)(model.config)  # another model's weights
    with pytest.raises(LogitGuardError, match="was built from another model"):
        prepare_artifacts(other, tokenizer, *paths, lookalike=LOOKALIKES, **kwargs)


def two_sided(tokenizer, anchor_pass: str = "auto"):
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    anchors = build_anchor_cache(model, tokenizer, REFUSALS * 2, tokens)
    benign = build_anchor_cache(model, tokenizer, [(p, "Sure: step one, get ready.") for p in LOOKALIKES], tokens)
    config = STRConfig("mse", 1.0, anchors_per_step=4, benign_anchors_per_step=3, anchor_pass=anchor_pass)
    return model, tokens, anchors, benign, config


def test_two_sided_terms_are_zero_at_the_aligned_model_and_grow_as_it_moves(tokenizer):
    model, tokens, anchors, benign, config = two_sided(tokenizer)
    objective = STRObjective(config, tokens, anchors, benign_anchors=benign)
    batch = task_batch(tokenizer, BENIGN[:4])
    at_start = str_loss(model, batch, objective)
    assert at_start.str_benign.item() == pytest.approx(0.0, abs=1e-6)
    moved = lora(model)
    perturb_lora(moved, 0.3)
    terms = str_loss(moved, batch, objective)
    assert terms.str_benign.item() > 1e-3 and terms.str_anchor.item() > 1e-3
    assert terms.loss.item() == pytest.approx((terms.task + terms.str_anchor + terms.str_benign).item(), rel=1e-5)
    terms.loss.backward()
    assert all(p.grad is not None for n, p in moved.named_parameters() if p.requires_grad)


def test_benign_anchors_give_the_same_terms_packed_or_separate(tokenizer):
    results = {}
    for mode in ("packed", "separate"):
        model, tokens, anchors, benign, config = two_sided(tokenizer, mode)
        model = lora(model)
        perturb_lora(model, 0.3)
        terms = str_loss(model, task_batch(tokenizer, BENIGN[:4]), STRObjective(config, tokens, anchors, 0, benign))
        results[mode] = (terms.str_anchor.item(), terms.str_benign.item())
    assert min(results["separate"]) > 1e-3
    assert results["packed"] == pytest.approx(results["separate"], abs=1e-5)


def test_two_sided_str_needs_its_benign_anchors(tokenizer):
    _, tokens, anchors, _, config = two_sided(tokenizer)
    with pytest.raises(LogitGuardError, match="needs a benign anchor cache"):
        STRObjective(config, tokens, anchors)
    with pytest.raises(LogitGuardError, match="needs reference 'anchors' or 'both'"):
        STRConfig(reference="task", benign_anchors_per_step=2)


def test_the_trainer_logs_the_benign_term_on_its_own(tokenizer, tmp_path):
    model, tokens, anchors, benign, config = two_sided(tokenizer)
    trainer = make_trainer(lora(model), tokenizer, tmp_path, config, anchors, tokens, benign_anchors=benign)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all({"str_anchor", "str_benign"} <= e.keys() for e in logged)


def test_train_makes_the_benign_anchors_of_two_sided_str_in_its_output_dir(workspace, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "str.benign_anchors_per_step=2"])
        == 0
    )
    assert (out / "benign_anchors.safetensors").is_file()
    log = json.loads((out / "train_log.json").read_text())
    assert any("str_benign" in e for e in log)
