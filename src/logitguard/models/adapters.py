"""Adapters saved with the fingerprint of the base they were trained on, and loaded only onto that base.

An adapter LogitGuard saves records its base's fingerprint (:data:`BASE_FILE`); loading it onto another base is an
error, so an evaluation never silently scores an adapter on the wrong model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

from logitguard.core.model_access import weights_fingerprint
from logitguard.errors import LogitGuardError
from logitguard.io import read_json, write_json

BASE_FILE = "logitguard_base.json"


def base_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the base model's weights (adapters left out:
    :func:`~logitguard.core.model_access.weights_fingerprint`), written beside each adapter LogitGuard saves
    (:data:`BASE_FILE`) and checked when the adapter is loaded for evaluation."""
    return weights_fingerprint(model)


def same_model_name(recorded: str, given: str) -> bool:
    """Whether two model names are the same model: equal, or local paths to the same folder (an absolute path
    recorded in an adapter and a relative one given on the command line)."""
    if recorded == given:
        return True
    return Path(recorded).exists() and Path(given).exists() and Path(recorded).resolve() == Path(given).resolve()


def save_adapter(model: PreTrainedModel, folder: str | Path) -> None:
    """``save_pretrained`` of a PEFT model, plus the fingerprint of the base it was trained on (:data:`BASE_FILE`)."""
    model.save_pretrained(folder)
    write_json(Path(folder) / BASE_FILE, {"base_fingerprint": base_fingerprint(model)})


def load_adapter(
    model: PreTrainedModel,
    adapter: str | Path,
    base_name: str | None = None,
    any_base: bool = False,
    trainable: bool = False,
):
    """``model`` with the PEFT adapter in ``adapter`` (``trainable``: to train it further), after checking that the
    adapter was trained on it.

    An adapter LogitGuard saved records its base's fingerprint, which must match ``model``'s; another adapter
    records its base's name (``base_model_name_or_path``), which must match ``base_name``. ``any_base`` skips the
    check (an adapter known to fit a renamed copy of its base).
    """
    from peft import PeftModel

    folder = Path(adapter)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no adapter_config.json)")
    if not any_base:
        recorded = folder / BASE_FILE
        if recorded.is_file():
            expected = read_json(recorded, dict, "an adapter's base record").get("base_fingerprint")
            found = base_fingerprint(model)
            if expected != found:
                raise LogitGuardError(
                    f"{folder} was trained on another base model (fingerprint {expected}, this model {found}); "
                    "load the model it was trained on"
                )
        else:
            trained_on = read_json(config_path, dict, "an adapter config").get("base_model_name_or_path")
            if trained_on and base_name and not same_model_name(str(trained_on), str(base_name)):
                raise LogitGuardError(
                    f"{folder} was trained on {trained_on!r}, not {base_name!r}; load that model, or pass "
                    "--any-adapter-base if this one is a copy of it"
                )
    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
