"""The framework-neutral parts of the integrations, without the frameworks: the host trainer a framework builds
with its own arguments, LLaMA-Factory's config split, and ``logitguard check`` where Axolotl is missing.
(The frameworks' own entry points run in tests/integration/.)"""

import json
from pathlib import Path

import pytest
import yaml
from transformers import Trainer, TrainingArguments

from logitguard.cli.main import main as cli
from logitguard.data.chat import collate, encode_chat
from logitguard.errors import LogitGuardError
from logitguard.integrations.host import MARKER, str_host_trainer
from logitguard.integrations.llamafactory import split_config
from logitguard.settings import STRSection
from tests.helpers import BENIGN, lora, perturb_lora, training_args


def host_trainer(model, tokenizer, out, section):
    """As a framework builds its trainer: its own keyword arguments only; STR comes with the class."""
    cls = str_host_trainer(Trainer, section)
    args = training_args(out, max_steps=2, seed=0)
    return cls(
        model=model,
        args=args,
        train_dataset=[encode_chat(tokenizer, p, r) for p, r in BENIGN],
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        processing_class=tokenizer,
    )


def test_the_host_trainer_makes_its_artifacts_logs_str_and_marks_the_run(random_model, tokenizer, tmp_path, capsys):
    model = lora(random_model)
    trainer = host_trainer(model, tokenizer, tmp_path, STRSection(k=4, refusals="templates"))
    perturb_lora(model)  # after the artifacts are made: the model now differs from its anchors' reference
    assert type(trainer).__name__ == "STRTrainer" and "STR is ACTIVE" in capsys.readouterr().err
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(log["str_anchor"] > 0 for log in logs)
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["active"] and marker["str"]["k"] == 4 and len(marker["safety_tokens"]) == 4
    assert (tmp_path / "safety_tokens.json").is_file() and (tmp_path / "anchors.safetensors").is_file()


def test_the_host_trainer_refuses_to_run_without_a_tokenizer(random_model, tokenizer, tmp_path):
    cls = str_host_trainer(Trainer, STRSection())
    with pytest.raises(LogitGuardError, match="needs the tokenizer"):
        cls(model=lora(random_model), args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))


def test_a_named_artifact_that_does_not_exist_stops_the_host_trainer(random_model, tokenizer, tmp_path):
    section = STRSection(tokens=str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match=r"str\.tokens: no such file .*missing\.json"):
        host_trainer(lora(random_model), tokenizer, tmp_path, section)


def test_llamafactory_config_loses_its_logitguard_block_and_keeps_the_rest(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model_name_or_path: m\nstage: sft\nlogitguard:\n  weight: 0.5\n  k: 16\nlearning_rate: 1.0e-4\n")
    config, section = split_config(path)
    assert config == {"model_name_or_path": "m", "stage": "sft", "learning_rate": 1e-4}
    assert (section.weight, section.k, section.anchors_per_step) == (0.5, 16, STRSection().anchors_per_step)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stage: sft\n", "no logitguard: block"),
        ("stage: dpo\nlogitguard: {}\n", "supports stage: sft"),
        ("stage: sft\nlogitguard:\n  wieght: 0.5\n", r"line 3: unknown key 'logitguard\.wieght'"),
        ("stage: sft\nlogitguard:\n  weight: -1\n", "weight"),
        ("- a list\n", "is a mapping"),
    ],
)
def test_llamafactory_config_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(LogitGuardError, match=message):
        split_config(path)


def test_check_axolotl_without_axolotl_is_one_line(tmp_path, capsys):
    try:
        import axolotl  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("axolotl is installed here: tests/integration/test_axolotl.py covers the check")
    path = tmp_path / "cfg.yml"
    path.write_text("plugins: [logitguard.integrations.axolotl.LogitGuardPlugin]\n")
    assert cli(["check", "axolotl", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be imported" in err and "is axolotl installed?" in err and len(err.strip().splitlines()) == 1


FRAMEWORK_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "frameworks").glob("*.yaml"))


@pytest.mark.parametrize("path", FRAMEWORK_CONFIGS, ids=lambda p: p.name)
def test_framework_example_configs_open_with_their_command_and_hold_valid_str_settings(path):
    framework = path.name.split("_")[0]
    command = {"axolotl": "# logitguard check axolotl", "llamafactory": "# logitguard llamafactory-train"}[framework]
    assert path.read_text().splitlines()[0].startswith(f"{command} configs/frameworks/{path.name}")
    block = yaml.safe_load(path.read_text())["logitguard"]
    assert STRSection(**block).str_config().weight == block["weight"]
    if framework == "llamafactory":
        assert split_config(path)[0]["stage"] == "sft"


def test_there_is_an_example_config_per_framework():
    assert {p.name.split("_")[0] for p in FRAMEWORK_CONFIGS} == {"axolotl", "llamafactory"}


STR_BLOCKS = [
    ({"weight": 0.5, "k": 4}, True),
    ({"weight": 1}, True),  # an int where a float is asked
    ({"weight": "0.3"}, False),  # quoted: pydantic alone would coerce it
    ({"weight": -1.0}, False),
    ({"weight": float("nan")}, False),
    ({"anchors_per_step": 0}, False),
    ({"anchors_per_step": 2.5}, False),
    ({"penalty": "huber"}, False),
    ({"anchor_pass": "shared"}, False),
    ({"enabled": "yes"}, False),
    ({"wieght": 0.3}, False),
]


@pytest.mark.parametrize(("block", "valid"), STR_BLOCKS)
def test_the_run_config_and_the_axolotl_schema_accept_and_refuse_the_same_str_settings(
    workspace, tmp_path, block, valid
):
    pydantic = pytest.importorskip("pydantic")
    from logitguard.cli.run_config import load_run_config
    from logitguard.integrations.axolotl_schema import LogitGuardArgs

    config = yaml.safe_load((workspace / "run.yaml").read_text())
    config["str"] = block
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    outcomes = []
    for check in (lambda: load_run_config(path), lambda: LogitGuardArgs.model_validate({"logitguard": block})):
        try:
            check()
            outcomes.append(True)
        except (LogitGuardError, pydantic.ValidationError):
            outcomes.append(False)
    assert outcomes == [valid, valid]
