"""Build (or load from cache) the embedded tiny base and aligned chat models.

Two stages, as real chat models are made: a *base* Llama-architecture model
trained from scratch on :mod:`logitguard.lab.toy.corpus` that answers everything,
then an *aligned* model fully fine-tuned from it to refuse harmful requests.
Both are saved with ``save_pretrained`` (safetensors) and must be loaded back
with ``from_pretrained``, the same path a user's real model takes. The cache
key hashes the recipe and the source that defines the models, so any change
rebuilds them.

Run it alone: ``python -m logitguard.lab.toy.model`` builds the cache and prints where.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from logitguard.data import chat
from logitguard.fingerprints import fingerprint
from logitguard.lab.toy import corpus as corpus_module
from logitguard.lab.toy import train_loop
from logitguard.lab.toy.corpus import ToyCorpus, build_corpus
from logitguard.lab.toy.train_loop import TrainConfig
from logitguard.models.cache import cache_root
from logitguard.outputs import built_once

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that determines the toy models (with the source files hashed beside it)."""

    seed: int = 0
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    base_steps: int = 1500
    base_lr: float = 3e-3
    aligned_steps: int = 400
    aligned_lr: float = 1e-3
    batch_size: int = 32

    def key(self) -> str:
        """Fingerprint of this recipe and of the source that builds the toy: corpus, model, loop, chat encoding."""
        sources = (corpus_module.__file__, chat.__file__, train_loop.__file__, __file__)
        return fingerprint([json.dumps(asdict(self), sort_keys=True), *(Path(s).read_bytes() for s in sources)], 12)


@dataclass(frozen=True)
class ToyModels:
    base: Path
    aligned: Path


def build_tokenizer(corpus: ToyCorpus) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on every text of the corpus, with a chat template."""
    texts = [e.prompt for e in corpus.base + corpus.aligned + corpus.instruct]
    texts += [e.response for e in corpus.base + corpus.aligned + corpus.instruct]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def new_model(recipe: ToyRecipe, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(recipe.seed)
    return LlamaForCausalLM(config)


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_toy_models(recipe: ToyRecipe, out: Path) -> ToyModels:
    """Train the base then the aligned model into ``out`` (``out/base``, ``out/aligned``)."""
    corpus = build_corpus(recipe.seed)
    tokenizer = build_tokenizer(corpus)
    model = new_model(recipe, tokenizer)

    def pairs(rows):
        return [(e.prompt, e.response) for e in rows]

    common = {"batch_size": recipe.batch_size, "seed": recipe.seed, "weight_decay": 0.01}
    train_loop.train(
        model,
        tokenizer,
        pairs(corpus.base),
        TrainConfig(steps=recipe.base_steps, lr=recipe.base_lr, warmup_steps=50, **common),
        desc="toy base model",
    )
    _save(model, tokenizer, out / "base")
    train_loop.train(
        model,
        tokenizer,
        pairs(corpus.aligned),
        TrainConfig(steps=recipe.aligned_steps, lr=recipe.aligned_lr, warmup_steps=20, **common),
        desc="toy aligned model",
    )
    _save(model, tokenizer, out / "aligned")
    return ToyModels(out / "base", out / "aligned")


def toy_models(recipe: ToyRecipe = ToyRecipe(), cache_dir: Path | None = None) -> ToyModels:
    """Paths of the cached toy models, building them first if the recipe is new.

    The build happens in a temporary directory renamed into place at the end,
    so an interrupted build never leaves a cache entry a later run would trust.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = built_once(
        root / f"toy-{recipe.key()}",
        lambda folder: (folder / "aligned" / "config.json").exists(),
        lambda tmp: build_toy_models(recipe, tmp),
    )
    return ToyModels(final / "base", final / "aligned")


if __name__ == "__main__":
    print(toy_models())
