"""The toy setting: the embedded aligned model, its corpus, and how the demo and the benchmarks judge it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from logitguard.lab.toy.corpus import TRAIN_TEMPLATES, ToyCorpus, build_corpus
from logitguard.lab.toy.metrics import HARMFUL_TOKENS, sample_responses, toy_metrics
from logitguard.lab.toy.model import ToyRecipe, toy_models

Pairs = list[tuple[str, str]]


def _in_template(prompt: str, template: str) -> bool:
    prefix, suffix = template.split("{act}")
    return prompt.startswith(prefix) and prompt.endswith(suffix)


@dataclass
class ToySetting:
    """The toy aligned model (built or loaded from the cache) with its corpus and held-out evaluation."""

    recipe: ToyRecipe = field(default_factory=ToyRecipe)
    n_monitor_prompts: int = 64
    aligned: str = field(init=False)
    tokenizer: PreTrainedTokenizerBase = field(init=False)
    corpus: ToyCorpus = field(init=False)
    monitor_tokens: int = HARMFUL_TOKENS

    def __post_init__(self) -> None:
        self.aligned = str(toy_models(self.recipe).aligned)
        self.tokenizer = AutoTokenizer.from_pretrained(self.aligned)
        self.corpus = build_corpus(self.recipe.seed)

    @property
    def monitor_prompts(self) -> list[str]:
        return [e.prompt for e in self.corpus.heldout_harmful[: self.n_monitor_prompts]]

    def load_aligned(self) -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(self.aligned)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return toy_metrics(model, self.tokenizer, self.corpus)

    def samples(self, model: nn.Module) -> list[dict]:
        return sample_responses(model, self.tokenizer, self.corpus)

    def benign_data(self) -> Pairs:
        """The benign fine-tuning set: instruction data, the new task and everyday skills."""
        return [(e.prompt, e.response) for e in self.corpus.instruct]

    def anchor_prompts(self, n: int, seed: int, phrasings: int | None = None) -> list[str]:
        """``n`` harmful prompts in training phrasings (the first ``phrasings`` of them, or all), drawn under
        ``seed``: the refusals STR anchors on. Held-out phrasings are never drawn."""
        templates = TRAIN_TEMPLATES[:phrasings]
        pool = [e.prompt for e in self.corpus.train_harmful if any(_in_template(e.prompt, t) for t in templates)]
        return random.Random(seed).sample(pool, min(n, len(pool)))

    def discovery_benign(self, n: int) -> Pairs:
        """Benign requests the aligned model answers, which discovery contrasts with its refusals."""
        return [(e.prompt, e.response) for e in self.corpus.aligned if e.kind == "benign"][:n]
