"""Safety-token discovery and its artifact."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from logitguard.artifacts.discovery import discover_safety_tokens, score_tokens, special_ids, top_k_tokens
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.lab.toy.corpus import REFUSALS


def test_score_prefers_tokens_probable_in_refusals():
    refusal = torch.tensor([0.5, 0.1, 0.3, 0.1])
    benign = torch.tensor([0.1, 0.6, 0.3, 0.0])
    assert score_tokens(refusal, benign).tolist() == pytest.approx([0.4, -0.5, 0.0, 0.1])


def test_top_k_skips_excluded_ids_and_checks_k():
    scores = torch.tensor([0.9, 0.8, 0.1, 0.5])
    ids, values = top_k_tokens(scores, 2, exclude=[0])
    assert ids.tolist() == [1, 3] and values.tolist() == pytest.approx([0.8, 0.5])
    for bad_k in (0, -1, 4):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            top_k_tokens(scores, bad_k, exclude=[0])


@pytest.mark.slow
def test_discovery_ranks_refusal_markers_above_ordinary_words(toy, corpus):
    model = AutoModelForCausalLM.from_pretrained(toy.aligned)
    tokenizer = AutoTokenizer.from_pretrained(toy.aligned)
    refusals = [(e.prompt, e.response) for e in corpus.train_harmful[:64]]
    benign = [(e.prompt, e.response) for e in corpus.aligned if e.kind == "benign"][:64]
    tokens = discover_safety_tokens(model, tokenizer, refusals, benign, k=24)
    words = [t.strip() for t in tokens.tokens]
    assert "I" in words[:5]  # four of the five refusal templates start with "I"
    assert {"cannot", "sorry", "apologize", "decline", "AI"} <= set(words)
    template_words = set(re.findall(r"[A-Za-z]+|'[a-z]+", " ".join(REFUSALS)))
    assert set(words) <= template_words, set(words) - template_words  # no ordinary word makes the cut
    assert tokens.scores == sorted(tokens.scores, reverse=True)
    assert not set(tokens.ids) & set(special_ids(tokenizer))
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in special_ids(tokenizer)


def test_discovery_rejects_bad_k(random_model, tokenizer):
    pairs = [("How do I build a pipe bomb?", "I cannot help with that request.")]
    for k in (0, len(tokenizer) + 1):
        with pytest.raises(ValueError, match="k must be between 1 and the vocabulary size"):
            discover_safety_tokens(random_model, tokenizer, pairs, pairs, k=k)


def test_artifact_round_trip_and_tokenizer_check(tmp_path, tokenizer, random_model):
    pairs = [("How do I build a pipe bomb?", "I cannot help with that request.")]
    benign = [("How do I bake bread?", "Here are the steps to bake bread.")]
    tokens = discover_safety_tokens(random_model, tokenizer, pairs, benign, k=5)
    path = tokens.save(tmp_path / "tokens.json")
    raw = json.loads(path.read_text())
    assert raw["k"] == 5 and raw["version"] == 1 and raw["tokenizer_fingerprint"]
    loaded = SafetyTokens.load(path)
    assert loaded == tokens
    loaded.check_tokenizer(tokenizer)

    other = AutoTokenizer.from_pretrained  # a tokenizer with one more token has another fingerprint
    tokenizer.save_pretrained(tmp_path / "tok")
    changed = other(tmp_path / "tok")
    changed.add_tokens(["<|new|>"])
    with pytest.raises(ValueError, match="another tokenizer"):
        loaded.check_tokenizer(changed)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON"),
        ('{"version": 99}', "version 99"),
        ('{"version": 1, "ids": [1]}', "lacks field"),
        ('{"version": 1, "ids": [1], "tokens": [], "scores": [1.0], "tokenizer_fingerprint": "x"}', "equal length"),
    ],
)
def test_bad_artifacts_name_the_file(tmp_path, content, message):
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        SafetyTokens.load(path)
    assert str(path) in str(info.value)
