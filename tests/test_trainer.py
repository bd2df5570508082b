"""STRTrainer / STRSFTTrainer: STR added to the host trainer's own loss."""

import pytest
import torch
from peft import LoraConfig

from logitguard.artifacts.references import build_anchor_cache
from logitguard.core.config import STRConfig
from logitguard.core.objective import STRObjective
from logitguard.data.chat import collate, encode_chat
from logitguard.hosts.custom_loop import str_loss
from tests.helpers import BENIGN, PAIRS, REFUSALS, lora, make_trainer, perturb_lora, safety_tokens, task_batch


@pytest.mark.parametrize(
    ("reference", "anchor_pass"),
    [("anchors", "packed"), ("anchors", "separate"), ("task", "auto"), ("both", "auto")],
)
def test_trainer_loss_equals_the_custom_loop_loss(random_model, tokenizer, tmp_path, reference, anchor_pass):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS * 2, tokens)
    model = lora(random_model)
    perturb_lora(model)
    config = STRConfig(penalty="kl", weight=0.7, reference=reference, anchors_per_step=4, anchor_pass=anchor_pass)
    trainer = make_trainer(model, tokenizer, tmp_path, config, cache, tokens)
    batch = collate([encode_chat(tokenizer, p, r) for p, r in PAIRS], tokenizer.pad_token_id)
    n = int((batch["labels"][:, 1:] != -100).sum())
    model.train()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n))
    expected = str_loss(model, batch, STRObjective(config, tokens, cache, seed=0))  # the same step-0 draw
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert expected.loss.item() > expected.task.item()  # the STR term is present and non-zero


def test_gradient_accumulation_matches_one_big_batch(random_model, tokenizer, tmp_path):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS * 3, tokens)
    config = STRConfig(penalty="mse", weight=1.0, reference="both", anchors_per_step=4)
    base_state = {k: v.clone() for k, v in random_model.state_dict().items()}
    adapters = []
    for batch_size, accumulation in [(8, 1), (4, 2)]:
        base = type(random_model)(random_model.config)
        base.load_state_dict(base_state)
        torch.manual_seed(1)
        model = lora(base)
        perturb_lora(model)
        trainer = make_trainer(
            model,
            tokenizer,
            tmp_path,
            config,
            cache,
            tokens,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
        )
        trainer.train()
        adapters.append({k: v.clone() for k, v in model.state_dict().items() if "lora" in k})
        logged = [e for e in trainer.state.log_history if "str_anchor" in e]
        assert len(logged) == 3 and all({"task_loss", "str_task", "str_conflict_fraction"} <= e.keys() for e in logged)
    for key, value in adapters[0].items():
        assert torch.allclose(value, adapters[1][key], atol=1e-6), key


def test_too_few_anchors_for_the_micro_batches_is_an_error(random_model, tokenizer, tmp_path):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS, tokens)
    config = STRConfig(anchors_per_step=1)
    model = lora(random_model)
    trainer = make_trainer(model, tokenizer, tmp_path, config, cache, tokens, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="anchors_per_step .1. must be at least"):
        trainer.train()


def test_anchor_cache_from_another_model_is_refused(random_model, tokenizer, tmp_path):
    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS, tokens)
    other = type(random_model)(random_model.config)
    with pytest.raises(ValueError, match="another model"):
        make_trainer(lora(other), tokenizer, tmp_path, STRConfig(), cache, tokens)


def anchor_drift(model, tokenizer, cache, tokens):
    """Mean anchor penalty of ``model`` over the whole cache (0 for the aligned model)."""
    config = STRConfig(penalty="mse", anchors_per_step=len(cache))
    with torch.no_grad():
        return str_loss(model, task_batch(tokenizer), STRObjective(config, tokens, cache)).str_anchor.item()


def test_sft_trainer_as_documented_with_str_added(random_model, tokenizer, tmp_path):
    """TRL's documented usage (conversational prompt-completion data, peft_config, completion-only loss)."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from logitguard.hosts.sft_trainer import STRSFTTrainer

    tokens = safety_tokens(tokenizer)
    cache = build_anchor_cache(random_model, tokenizer, REFUSALS * 3, tokens)
    dataset = datasets.Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
            for p, r in BENIGN
        ]
    )
    drift = {}
    for name in ("sft", "str"):
        model = type(random_model)(random_model.config)
        model.load_state_dict(random_model.state_dict())
        args = trl.SFTConfig(
            output_dir=str(tmp_path / name),
            max_steps=12,
            per_device_train_batch_size=4,
            learning_rate=2e-2,
            logging_steps=4,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
        )
        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
        common = {"model": model, "args": args, "train_dataset": dataset, "processing_class": tokenizer}
        if name == "sft":
            trainer = trl.SFTTrainer(**common, peft_config=peft_config)
        else:
            trainer = STRSFTTrainer(
                **common,
                peft_config=peft_config,
                str_config=STRConfig(penalty="mse", weight=10.0, anchors_per_step=4),
                safety_tokens=tokens,
                anchors=cache,
            )
        trainer.train()
        drift[name] = anchor_drift(trainer.model, tokenizer, cache, tokens)
        if name == "str":
            logged = [e for e in trainer.state.log_history if "str_anchor" in e]
            assert logged and all("task_loss" in e and "mean_token_accuracy" in e for e in logged)
    assert drift["str"] < 0.25 * drift["sft"], drift
