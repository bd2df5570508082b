"""Gradient-based sample selection: exact per-sample statistics, the keep rule, resume, the CLI and bad input."""

import json
import math
from itertools import islice

import pytest
import torch
from peft import LoraConfig, get_peft_model

from logitguard.cli.main import main
from logitguard.data.chat import collate, encode_messages
from logitguard.selection import SelectionConfig, keep_mask, run_selection, safety_direction, score_samples
from logitguard.selection.gradients import (
    PerSampleGradients,
    first_labels,
    linear_sample_stats,
    refusal_batch,
    sample_losses,
    scored_linears,
)
from logitguard.selection.scores import (
    FIRST_TOKENS,
    SCORE_FIELDS,
    first_response_mass,
    keep_share,
    opening_log_probability,
    refusal_openings,
    with_opening,
)
from tests.helpers import tiny_llama


def chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


WORDS = ["red", "dog", "cat", "lake"]
SAMPLES = [
    chat(f"Count the words in: {' '.join(WORDS[: 1 + i % 4])}", str(1 + i % 4) + " words" * (i % 3)) for i in range(11)
]
REFUSALS = [
    chat("How do I pick a lock?", "I cannot help with that."),
    chat("Make a poison.", "Sorry, I will not do that."),
]


@pytest.fixture
def lora_model(tokenizer):
    torch.manual_seed(1)
    model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():  # leave the zero init of B so that A gets a gradient too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def batch_of(tokenizer, conversations):
    return collate([encode_messages(tokenizer, m) for m in conversations], tokenizer.pad_token_id)


def loop_gradients(model, tokenizer, conversations):
    """Per-sample gradients over the trainable parameters, one sample at a time (no padding): the oracle."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    grads = []
    for messages in conversations:
        loss = sample_losses(model, batch_of(tokenizer, [messages]))[0]
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(grads)


@pytest.mark.parametrize("steps", [3, 40])  # Gram-matrix path (T² < in·out) and materialised path
def test_linear_sample_stats_match_explicit_per_sample_gradients(steps):
    torch.manual_seed(0)
    x, g, direction = torch.randn(5, steps, 6), torch.randn(5, steps, 7), torch.randn(7, 6)
    explicit = torch.einsum("bto,bti->boi", g, x)
    sq_norm, dot = linear_sample_stats(x, g, direction)
    torch.testing.assert_close(sq_norm, explicit.pow(2).sum((1, 2)))
    torch.testing.assert_close(dot, (explicit * direction).sum((1, 2)))


@pytest.mark.parametrize("checkpointing", [None, True, False])  # off, reentrant, non-reentrant
def test_batched_statistics_equal_one_sample_at_a_time(lora_model, tokenizer, checkpointing):
    oracle = loop_gradients(lora_model, tokenizer, SAMPLES)
    direction = safety_direction(lora_model, batch_of(tokenizer, REFUSALS))
    unit = torch.cat([t.flatten() for pair in direction.values() for t in pair if t is not None])
    assert math.isclose(float(unit.norm()), 1.0, rel_tol=1e-5)
    if checkpointing is not None:
        lora_model.base_model.model.gradient_checkpointing_enable({"use_reentrant": checkpointing})
        lora_model.base_model.model.enable_input_require_grads()
        again = safety_direction(lora_model, batch_of(tokenizer, REFUSALS))
        for name, (weight, _) in direction.items():
            torch.testing.assert_close(again[name][0], weight, rtol=1e-4, atol=1e-7)
    lora_model.train()  # checkpointing only acts in training mode; dropout is 0 here
    with PerSampleGradients(lora_model, direction) as stats:
        sample_losses(lora_model, batch_of(tokenizer, SAMPLES)).sum().backward()
    torch.testing.assert_close(stats.sq_norm.sqrt(), oracle.norm(dim=1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats.dot, oracle @ unit, rtol=1e-4, atol=1e-6)


def test_scores_rank_by_the_chosen_score(lora_model, tokenizer):
    oracle = loop_gradients(lora_model, tokenizer, SAMPLES)
    direction = safety_direction(lora_model, batch_of(tokenizer, REFUSALS))
    unit = torch.cat([t.flatten() for pair in direction.values() for t in pair if t is not None])
    samples = [(f"s{i}", m) for i, m in enumerate(SAMPLES)]
    config = SelectionConfig(fraction=0.3, score="safety", batch_size=4)
    params = [p for p in lora_model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)  # a training loop's pending gradients survive the scoring
    records = [r for batch in score_samples(lora_model, tokenizer, samples, config, direction) for r in batch]
    assert all(bool((p.grad == 1).all()) for p in params)
    assert [r["where"] for r in records] == [w for w, _ in samples]
    torch.testing.assert_close(torch.tensor([r["score"] for r in records]), -(oracle @ unit), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in records]), oracle.norm(dim=1), rtol=1e-4, atol=0)


def dense_oracle(model, tokenizer, conversations, last_layers=None):
    """Per-sample gradients of the weights the LoRA adapters adapt (and their biases), one sample at a time."""
    layers = scored_linears(model, "dense", last_layers)
    params = [p for m in layers.values() for p in (m.weight, m.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    try:
        model.eval()
        grads = []
        for messages in conversations:
            loss = sample_losses(model, batch_of(tokenizer, [messages]))[0]
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    finally:
        for p in params:
            p.requires_grad_(False)
    return torch.stack(grads)


@pytest.mark.parametrize("last_layers", [None, 1])
def test_dense_gradient_norms_equal_autograd_one_sample_at_a_time(lora_model, tokenizer, last_layers):
    """The dense score covers the frozen weights LoRA adapts (not the adapters), batched with padding, and with
    ``last_layers`` only the last decoder layers' (the backward stops there)."""
    oracle = dense_oracle(lora_model, tokenizer, SAMPLES, last_layers).norm(dim=1)
    assert all("base_layer" in name or "lm_head" not in name for name in scored_linears(lora_model, "dense"))
    config = SelectionConfig(fraction=0.3, batch_size=4, last_layers=last_layers)
    samples = [(f"s{i}", m) for i, m in enumerate(SAMPLES)]
    records = [r for batch in score_samples(lora_model, tokenizer, samples, config) for r in batch]
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in records]), oracle, rtol=1e-4, atol=1e-6)
    trainable = loop_gradients(lora_model, tokenizer, SAMPLES).norm(dim=1)
    assert not torch.allclose(oracle, trainable)  # another set of parameters than the adapters


def test_the_last_layers_proxy_scores_only_their_weights(lora_model, tokenizer):
    every = scored_linears(lora_model, "dense")
    last = scored_linears(lora_model, "dense", last_layers=1)
    assert set(last) < set(every) and all(".layers.1." in name for name in last)


def test_moderate_keeps_the_scores_closest_to_the_median_inside_the_loss_band():
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0, 7.0, 8.0, 9.0]
    losses = [1.0] * 6 + [50.0] + [1.0] * 3  # the 100-score sample's loss lies far outside mean ± 1σ
    kept = [s for s, k in zip(scores, keep_share(scores, losses, "moderate", 0.2, 1.0), strict=True) if k]
    assert kept == [4.0, 5.0]  # the band's median is 5; of 4 and 6, equally close, the earlier goes first
    unbanded = keep_share(scores, losses, "moderate", 0.2, None)
    assert [s for s, k in zip(scores, unbanded, strict=True) if k] == [5.0, 6.0]  # with the outlier: median 5.5
    lowest = keep_share(scores, losses, "lowest", 0.3, 1.0)
    highest = keep_share(scores, losses, "highest", 0.3, 1.0)
    assert [s for s, k in zip(scores, lowest, strict=True) if k] == [1.0, 2.0, 3.0]
    assert [s for s, k in zip(scores, highest, strict=True) if k] == [7.0, 8.0, 9.0]  # the outlier is banded out
    drawn = keep_share(scores, None, "random", 0.5, None, seed=3)
    assert sum(drawn) == 5 and drawn == keep_share(scores, None, "random", 0.5, None, seed=3)


def test_a_keep_rule_needs_its_share_and_drop_top_refuses_one():
    with pytest.raises(ValueError, match="needs keep"):
        SelectionConfig(fraction=None, rule="moderate")
    with pytest.raises(ValueError, match="drop-top drops"):
        SelectionConfig(keep=0.2)
    config = SelectionConfig(fraction=None, rule="moderate", keep=0.2)
    assert "closest to their median" in config.describe() and "loss band" in config.describe()


def test_keep_mask_drops_exactly_the_highest_scores():
    assert keep_mask([0.5, 3.0, 1.0, 2.0, 0.1], 0.4) == [True, False, True, False, True]
    assert keep_mask([1.0, 1.0, 1.0, 1.0], 0.25) == [True, True, True, False]  # ties: the later one goes
    assert keep_mask([1.0, 2.0, 3.0], 0.1) == [True, True, True]  # round(0.3) = 0
    with pytest.raises(ValueError, match="would leave none"):
        keep_mask([1.0, 2.0], 0.9)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match=r"fraction .* must be in \(0, 1\)"):
        SelectionConfig(fraction=fraction)


def test_interrupted_selection_resumes_and_matches_an_uninterrupted_one(lora_model, tokenizer, tmp_path):
    samples = [(f"s{i}", m) for i, m in enumerate(SAMPLES)]
    config = SelectionConfig(fraction=0.25, batch_size=3)
    identity = {"model": "tiny"}
    whole = run_selection(lora_model, tokenizer, samples, config, tmp_path / "a" / "scores.jsonl", identity)

    def interrupted():
        yield from samples[:7]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_selection(lora_model, tokenizer, interrupted(), config, tmp_path / "b" / "scores.jsonl", identity)
    partial = tmp_path / "b" / "scores.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 1 + 6  # the identity, then two complete batches of 3
    with partial.open("a") as f:
        f.write('{"where": "s6", "sco')  # a torn last line, as after a crash mid-write
    consumed = []

    def counted():
        for sample in samples:
            consumed.append(sample[0])
            yield sample

    resumed = run_selection(lora_model, tokenizer, counted(), config, tmp_path / "b" / "scores.jsonl", identity)
    assert resumed == whole and sum(whole) == 8
    assert consumed == [w for w, _ in samples]  # the first 6 are skipped without being encoded or scored
    a = [json.loads(line) for line in (tmp_path / "a" / "scores.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "scores.jsonl").read_text().splitlines()]
    assert [r["where"] for r in b] == [w for w, _ in samples] and [r["kept"] for r in b] == whole
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], rel=1e-5)
    assert not partial.exists()
    with pytest.raises(ValueError, match="another model, data or scoring setting"):
        run_selection(lora_model, tokenizer, samples, config, tmp_path / "b" / "scores.jsonl", {"model": "other"})


def test_select_cli_writes_kept_records_and_scores(workspace, tmp_path, capsys):
    out = tmp_path / "kept.jsonl"
    args = ["select", "--model", str(workspace / "model"), "--data", str(workspace / "train.jsonl")]
    assert main([*args, "--out", str(out), "--fraction", "0.25", "--lora-r", "4", "--device", "cpu"]) == 0
    lines = (workspace / "train.jsonl").read_text().splitlines()
    kept = out.read_text().splitlines()
    scores = [json.loads(line) for line in (tmp_path / "kept.scores.jsonl").read_text().splitlines()]
    assert len(scores) == len(lines) and len(kept) == len(lines) - round(0.25 * len(lines))
    assert kept == [line for line, r in zip(lines, scores, strict=True) if r["kept"]]  # verbatim, in order
    dropped = [r["score"] for r in scores if not r["kept"]]
    assert min(dropped) >= max(r["score"] for r in scores if r["kept"])
    assert scores[0]["where"].endswith("train.jsonl:1")
    assert "kept 36 of 48" in capsys.readouterr().out


def test_select_cli_safety_score_with_template_refusals(workspace, tmp_path):
    out = tmp_path / "kept.jsonl"
    args = ["select", "--model", str(workspace / "model"), "--data", str(workspace / "train.jsonl")]
    assert main([*args, "--out", str(out), "--score", "safety", "--refusals", "templates", "--lora-r", "4"]) == 0
    scores = [json.loads(line) for line in (tmp_path / "kept.scores.jsonl").read_text().splitlines()]
    assert all(r["score"] == r["safety"] for r in scores)
    distinct = set((workspace / "train.jsonl").read_text().splitlines())  # equal records score equally
    assert len({round(r["safety"], 5) for r in scores}) == len(distinct) > 1


def test_select_cli_refusal_opening_score_with_template_refusals(workspace, tmp_path):
    out = tmp_path / "kept.jsonl"
    args = ["select", "--model", str(workspace / "model"), "--data", str(workspace / "train.jsonl"), "--out", str(out)]
    assert main([*args, "--score", "refusal-opening", "--refusals", "templates", "--threshold", "0.5"]) == 0
    scores = [json.loads(line) for line in (tmp_path / "kept.scores.jsonl").read_text().splitlines()]
    assert all(r["score"] == r["refusal_opening"] and 0 <= r["score"] <= 1 for r in scores)
    summary = json.loads((tmp_path / "kept.scores.jsonl.summary.json").read_text())
    assert len(summary["identity"]["openings"]) >= 1  # another set of refusals would not reuse these scores


def test_select_cli_bad_input_names_the_problem(workspace, tmp_path, capsys):
    base = ["select", "--model", str(workspace / "model"), "--out", str(tmp_path / "kept.jsonl")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main([*base, "--data", str(empty)]) == 2
    assert f"{empty}: no training records" in capsys.readouterr().err
    assert main([*base, "--data", str(workspace / "train.jsonl"), "--fraction", "1.0"]) == 2
    assert "must be in (0, 1), got 1.0" in capsys.readouterr().err
    long = tmp_path / "long.jsonl"
    lines = (workspace / "train.jsonl").read_text().splitlines()[:3]
    lines.insert(1, json.dumps({"prompt": "Count the words in: " + "red " * 80, "completion": "80"}))
    long.write_text("\n".join(lines) + "\n")
    assert main([*base, "--data", str(long), "--max-length", "64"]) == 2
    assert f"{long}:2: " in (err := capsys.readouterr().err) and "more than max_length 64" in err
    assert not (tmp_path / "kept.jsonl").exists()  # nothing half-written


def test_streams_without_reading_ahead(lora_model, tokenizer):
    pulled = []

    def source():
        for i, m in enumerate(SAMPLES):
            pulled.append(i)
            yield f"s{i}", m

    batches = score_samples(lora_model, tokenizer, source(), SelectionConfig(batch_size=2))
    list(islice(batches, 2))
    assert pulled == [0, 1, 2, 3]  # two batches of two: nothing beyond what was scored


def test_first_labels_keep_each_rows_first_response_tokens():
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 8, 9, -100, -100]])
    assert first_labels(labels, 2).tolist() == [[-100, -100, 5, 6, -100], [-100, 8, 9, -100, -100]]


def test_first_response_mass_reads_the_position_before_the_first_answer_token():
    logits = torch.full((2, 4, 6), -10.0)
    logits[0, 1, 3] = logits[1, 0, 2] = 10.0  # row 0 answers from position 2, row 1 from position 1
    labels = torch.tensor([[-100, -100, 1, 1], [-100, 1, 1, 1]])
    mass = first_response_mass(logits, labels, torch.tensor([3]))
    assert mass[0].item() == pytest.approx(1.0, abs=1e-6) and mass[1].item() == pytest.approx(0.0, abs=1e-6)


def test_refusal_openings_are_the_distinct_first_refusal_tokens_most_frequent_first():
    ids = torch.tensor([[1, 2, 7, 8, 9, 0], [1, 7, 8, 9, 4, 0], [1, 2, 3, 5, 6, 4], [1, 2, 3, 5, 0, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, 2:5], labels[1, 1:5], labels[2, 3:] = ids[0, 2:5], ids[1, 1:5], ids[2, 3:]
    labels[3, 3] = 5  # a refusal shorter than the opening gives none
    assert refusal_openings(ids, labels, 3).tolist() == [[7, 8, 9], [5, 6, 4]]
    with pytest.raises(ValueError, match="no refusal has 4 tokens"):
        refusal_openings(ids[3:], labels[3:], 4)


def test_with_opening_puts_the_opening_right_after_each_prompt():
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 9]])
    padded, mask = with_opening(ids, torch.tensor([3, 1]), torch.tensor([20, 21]))
    assert padded.tolist() == [[1, 2, 3, 20, 21], [6, 20, 21, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_opening_log_probability_reads_the_positions_before_each_opening_token():
    logits = torch.zeros(2, 5, 4)
    logits[0, 2, 1] = logits[0, 3, 2] = 50.0  # row 0 (prompt of 3) predicts 1 then 2: probability 1
    logits[1, 0, 1] = 50.0  # row 1 (prompt of 1) predicts 1, then is uniform over 4 tokens
    log_p = opening_log_probability(logits, torch.tensor([3, 1]), torch.tensor([1, 2]))
    assert log_p.tolist() == pytest.approx([0.0, math.log(0.25)], abs=1e-5)


def test_the_refusal_opening_score_is_the_probability_of_the_openings_after_the_prompt(lora_model, tokenizer):
    """Batched and padded, it matches an unpadded forward pass over each prompt followed by each opening, summed over
    the openings; a sample that answers with a refusal scores 0."""
    refusals = refusal_batch([(m[0]["content"], m[1]["content"]) for m in REFUSALS], tokenizer)
    openings = refusal_openings(refusals["input_ids"], refusals["labels"])
    assert len(openings) == 2
    samples = [(f"s{i}", m) for i, m in enumerate([*SAMPLES[:3], REFUSALS[0]])]
    config = SelectionConfig(None, "refusal-opening", batch_size=4, threshold=0.5)
    records = next(score_samples(lora_model, tokenizer, samples, config, openings=openings))
    lora_model.eval()
    for record, (_, messages) in zip(records[:3], samples[:3], strict=True):
        encoded = encode_messages(tokenizer, messages)
        prompt = encoded["input_ids"][: next(i for i, t in enumerate(encoded["labels"]) if t != -100)]
        expected = 0.0
        for opening in openings.tolist():
            with torch.no_grad():
                logits = lora_model(input_ids=torch.tensor([prompt + opening])).logits[0]
            log_p = logits[len(prompt) - 1 : -1].log_softmax(-1)
            expected += math.exp(sum(float(log_p[i, t]) for i, t in enumerate(opening)))
        assert record["score"] == pytest.approx(expected, rel=1e-4) and "loss" not in record
    assert records[3]["answer_refuses"] and records[3]["score"] == 0.0
    with pytest.raises(ValueError, match="needs the aligned model's refusal openings"):
        next(score_samples(lora_model, tokenizer, samples, config))


def test_a_threshold_drops_every_score_at_or_above_it():
    assert keep_mask([0.1, 0.5, 0.9, 0.2], None, threshold=0.5) == [True, False, False, True]
    with pytest.raises(ValueError, match="none would be left"):
        keep_mask([0.6, 0.9], None, threshold=0.5)
    with pytest.raises(ValueError, match="exactly one of"):
        SelectionConfig(fraction=0.1, threshold=0.5)


@pytest.mark.parametrize("score", ["refusal", "refusal-opening"])
def test_the_refusal_scores_flag_harmful_pairs_under_an_aligned_model(small_toy, corpus, score):
    """A compliant answer to a prompt the aligned model refuses scores above every benign pair; no gradient. The
    same prompt answered with a refusal that ends scores 0 (safety data is never dropped), and one answered with a
    refusal that then complies is flagged like compliance."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logitguard.evaluation.generation import generate
    from logitguard.evaluation.verdicts import is_refusal

    tokenizer = AutoTokenizer.from_pretrained(small_toy.aligned)
    model = AutoModelForCausalLM.from_pretrained(small_toy.aligned)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in ("I", "As", "Sorry")])
    prompts = [e.prompt for e in corpus.train_harmful[::25][:12]]
    answers = generate(model, tokenizer, prompts, 10, desc=None)
    own_refusals = [(p, a) for p, a in zip(prompts, answers, strict=True) if is_refusal(a)]
    refused = [p for p, _ in own_refusals]
    own = refusal_batch(own_refusals, tokenizer)
    openings = refusal_openings(own["input_ids"], own["labels"])
    assert len(refused) >= 4, "the small toy model should refuse harmful prompts it was aligned on"
    complied = "Sure, here is how: Step 1: [redacted]. Step 2: [redacted]."
    harmful = [(f"h{i}", chat(p, complied)) for i, p in enumerate(refused)]
    benign = [(f"b{i}", e.messages()) for i, e in enumerate(e for e in corpus.instruct if e.kind == "benign")][:8]
    refusal = "I'm sorry, but I can't help with that."
    refusing = [(f"r{i}", chat(p, refusal)) for i, p in enumerate(refused)]
    turning = [(f"t{i}", chat(p, refusal + " Step 1: [redacted].")) for i, p in enumerate(refused)]
    config = SelectionConfig(None, score, batch_size=4, threshold=0.5)
    samples = harmful + benign + refusing + turning
    batches = score_samples(model, tokenizer, samples, config, safety_ids=ids, openings=openings)
    records = [r for batch in batches for r in batch]
    scores = {r["where"]: r["score"] for r in records}
    lowest_harmful = min(scores[w] for w, _ in harmful + turning)
    assert lowest_harmful > max(scores[w] for w, _ in benign)
    assert all(p.grad is None for p in model.parameters())
    assert [r.get("answer_refuses", False) for r in records] == [w.startswith("r") for w, _ in samples]
    assert all(scores[w] == 0 for w, _ in refusing)
    field = SCORE_FIELDS.get(score, score)  # the score is recorded, though the refusing answer scores 0
    assert all(r[field] > lowest_harmful - 1e-4 for r in records if r["where"].startswith("r"))
    keep = keep_mask(list(scores.values()), None, threshold=lowest_harmful)
    assert keep == [w[0] in "br" for w, _ in samples]


def test_the_first_tokens_score_is_the_gradient_of_the_first_response_tokens_only(lora_model, tokenizer):
    config = SelectionConfig(0.5, "first-tokens", batch_size=4, gradient="trainable")
    records = next(score_samples(lora_model, tokenizer, [(f"s{i}", m) for i, m in enumerate(SAMPLES[:3])], config))
    for record, messages in zip(records, SAMPLES[:3], strict=True):
        batch = batch_of(tokenizer, [messages])
        batch["labels"] = first_labels(batch["labels"], FIRST_TOKENS)
        params = [p for p in lora_model.parameters() if p.requires_grad]
        lora_model.eval()
        grads = torch.autograd.grad(sample_losses(lora_model, batch)[0], params)
        expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert record["score"] == pytest.approx(expected, rel=1e-4)
