"""STRTrainer / STRSFTTrainer: STR added to the host trainer's own loss."""

import pytest
import torch
from peft import LoraConfig
from transformers import TrainingArguments

from logitguard.anchors import build_anchor_cache
from logitguard.data import collate, encode_chat
from logitguard.regularizer import AnchorSchedule, STRConfig, anchor_penalty, str_loss
from logitguard.trainer import STRTrainer
from tests.test_regularizer import PAIRS, REFUSALS, lora, safety_tokens

BENIGN = [
    ("Help me plant roses.", "Sure, here is how to plant roses: Step 1: get ready."),
    ("How do I bake bread?", "Sure, here is how to bake bread: Step 1: get ready."),
    ("Count the words in: red dog", "two"),
    ("Say the word cat twice.", "cat cat"),
] * 4


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def make_trainer(model, tokenizer, tmp_path, str_config, cache, tokens, **args):
    settings = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "remove_unused_columns": False,
        "lr_scheduler_type": "constant",
        "seed": 0,
        **args,
    }
    return STRTrainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=ListDataset([encode_chat(tokenizer, p, r) for p, r in BENIGN]),
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        str_config=str_config,
        safety_tokens=tokens,
        anchors=cache,
    )


def perturb_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


@pytest.mark.parametrize(
    ("reference", "anchor_pass"), [("anchors", "shared"), ("anchors", "separate"), ("task", "auto"), ("both", "auto")]
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
    anchors = cache.rows(AnchorSchedule(len(cache), 4, seed=0).rows(0)) if config.uses_anchors else None
    expected = str_loss(model, batch, tokens.id_tensor(), config, anchors)
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


def anchor_drift(model, cache, tokens):
    """Mean anchor penalty of ``model`` over the whole cache (0 for the aligned model)."""
    rows = cache.rows(torch.arange(len(cache)))
    from logitguard.model_parts import final_hidden_states

    with torch.no_grad():
        hidden = final_hidden_states(model, rows["input_ids"], rows["attention_mask"])
        return anchor_penalty(model, hidden, rows, tokens.id_tensor(), STRConfig(penalty="mse")).item()


def test_sft_trainer_as_documented_with_str_added(random_model, tokenizer, tmp_path):
    """TRL's documented usage (conversational prompt-completion data, peft_config, completion-only loss)."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from logitguard.sft import STRSFTTrainer

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
        drift[name] = anchor_drift(trainer.model, cache, tokens)
        if name == "str":
            logged = [e for e in trainer.state.log_history if "str_anchor" in e]
            assert logged and all("task_loss" in e and "mean_token_accuracy" in e for e in logged)
    assert drift["str"] < 0.25 * drift["sft"], drift
