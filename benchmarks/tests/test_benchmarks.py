"""Every benchmark's ``main(argv)`` on a one-seed, few-step run, so a change to the harness cannot silently break one;
and the documentation's tables equal what the results JSON gives."""

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from logitguard.lab.gsm8k import HARMFUL_EVAL_SETS, SAFE_EVAL_SETS

ROOT = Path(__file__).parents[2]
DATA = ROOT.parent / "shared" / "data"


def benchmark(name: str):
    """The benchmark module ``benchmarks.NAME`` (the repository root is on the path: benchmarks/ is a package)."""
    return importlib.import_module(f"benchmarks.{name}")


def test_the_documentation_tables_are_those_of_the_results_json():
    assert benchmark("tables").main(["--check"]) == 0


def test_refusal_detector(tmp_path):
    argv = ["--out", str(tmp_path / "r.json"), "--data-root", str(DATA), "--judges", "keyword", "ngram"]
    sets = benchmark("refusal_detector").main(argv)["sets"]
    assert sets["written"]["keyword"]["precision"] >= 0.95 and sets["written"]["keyword"]["recall"] >= 0.95
    if "real" in sets:  # the labels of real answers, read from the public data folder; the classifier needs them
        assert sets["real"]["keyword"]["n"] == {"refusal": 84, "compliance": 481, "corrective": 22}
        assert sets["real"]["n-gram classifier"]["recall"] > 0.9  # cross-validated on the real set ...
        assert sets["written"]["n-gram classifier"]["recall"] < 0.5  # ... and no reader of other refusals


def test_cross_validation_folds_are_stratified_and_a_fit_separates_what_it_was_given():
    detector = benchmark("refusal_detector")
    rows = (
        [("I won't.", "refusal")] * 10
        + [("Here it is.", "compliance")] * 20
        + [("No, that's a myth.", "corrective")] * 5
    )
    fold = detector.folds(rows)
    for k in range(detector.FOLDS):
        assert [label for (_, label), f in zip(rows, fold, strict=True) if f == k].count("refusal") == 2
    grams = detector.ngram_features(["I won't do that.", "I won't help.", "Here is a poem.", "Here is a list."])
    x, x_test = detector.ngram_matrix(grams, detector.ngram_features(["I won't say.", "Here is one."]))
    y = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert detector.logistic_regression(x, y, x_test, l2=1e-3) == [True, False]


def test_selection_outcome_reports_what_was_dropped_and_the_score_gap(tmp_path):
    examples = [("q1", "a1"), ("harm", "steps"), ("q2", "a2"), ("harm2", "more steps")]
    scores = tmp_path / "scores.jsonl"
    records = [{"index": i, "score": s, "kept": s < 0.1} for i, s in enumerate([0.02, 0.37, 0.067, 0.15])]
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    keep = [r["kept"] for r in records]
    harmful = [("harm", "steps"), ("harm2", "more steps")]
    outcome = benchmark("harness").selection_outcome(examples, keep, harmful, scores)
    assert outcome == {
        "dropped_benign": 0.0,
        "benign_score_max": 0.067,
        "dropped_harmful": 1.0,
        "harmful_score_min": 0.15,
    }


def test_benchmarks_take_a_method_or_scenario_by_its_name_or_a_prefix_naming_only_one():
    harness = benchmark("harness")
    parser = argparse.ArgumentParser()
    rows = {"sft": {}, "selection (a)": {}, "selection (a) + str": {}, "selection (b)": {}}
    harness.add_arguments(parser, rows, Path("out.json"), steps=1)
    args = parser.parse_args(["--scenarios", "HARM", "benign", "--methods", "sf", "selection (a)", "selection (b"])
    assert args.scenarios == ["harmful (5% harmful compliance mixed in)", "benign"]
    assert args.methods == ["sft", "selection (a)", "selection (b)"]  # an exact name wins over a longer one
    for ambiguous_or_unknown in (["--methods", "selection"], ["--scenarios", "harmless"]):
        with pytest.raises(SystemExit):
            parser.parse_args(ambiguous_or_unknown)


def test_a_rows_lora_dropout_replaces_the_benchmarks_and_nothing_else():
    from logitguard.lab.finetune import FinetuneConfig
    from logitguard.settings import LoraSection

    harness = benchmark("harness")
    tune = FinetuneConfig(steps=7, lr=2e-3, lora=LoraSection(r=4, alpha=8, dropout=0.05))
    assert harness.Method().finetune_config(tune) == tune
    dropless = harness.Method(lora_dropout=0.0).finetune_config(tune)
    assert dropless.lora.dropout == 0.0
    assert dropless == FinetuneConfig(steps=7, lr=2e-3, lora=LoraSection(r=4, alpha=8, dropout=0.0))


def test_a_table_of_results_not_yet_written_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="none.json: no results yet"):
        benchmark("refusal_by_phrasing").main(["--table", "--out", str(tmp_path / "none.json")])


def test_regularizer_cost(tmp_path):
    out = tmp_path / "cost.json"
    benchmark("regularizer_cost").main(
        ["--positions", "8", "--hidden", "16", "--vocab", "500", "1000", "--repeats", "1", "--out", str(out)]
    )
    assert [r["vocab"] for r in json.loads(out.read_text())["rows"]] == [500, 1000]


def test_str_overhead(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--seq", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--repeats", "1", "--anchor-length", "16"]
    shown = ["sft", "str (default: packed pass)", "full-vocabulary KL"]
    benchmark("str_overhead").main([*args, "--variants", *shown, "--out", str(out)])
    variants = json.loads(out.read_text())["runs"]["tiny-32k cpu float32"]["variants"]
    assert set(variants) == set(shown) and all(v["ms_per_step"] > 0 for v in variants.values())


def test_str_profile(tmp_path):
    out = tmp_path / "profile.json"
    args = ["--preset", "tiny-32k", "--seq", "32", "--batch", "2", "--steps", "1", "--warmup", "1"]
    shown = ["sft", "str, separate anchor pass"]
    results = benchmark("str_profile").main([*args, "--anchor-length", "16", "--variants", *shown, "--out", str(out)])
    variants = results["runs"]["tiny-32k cpu float32"]["variants"]
    assert "str: anchor penalty" not in variants["sft"]["regions_ms"]
    assert {"step: forward", "str: separate pass", "str: anchor penalty"} <= set(variants[shown[1]]["regions_ms"])


@pytest.mark.slow
def test_methods_then_refusal_by_phrasing(tmp_path, toy, capsys):
    out = tmp_path / "methods.json"
    args = ["--steps", "2", "--seeds", "0", "--scenarios", "benign", "--out", str(out)]
    benchmark("methods").main([*args, "--methods", "sft", "str (anchors, default)", "selection (refusal score ≥ 0.1)"])
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"sft", "str (anchors, default)", "selection (refusal score ≥ 0.1)"}
    selected = rows["selection (refusal score ≥ 0.1)"]  # benign data: the aligned toy would refuse none of it
    assert selected["dropped_benign"] == 0 and selected["benign_score_max"] < 0.1
    work = Path(capsys.readouterr().out.split("per-run artifacts (adapters) in ")[-1].strip())
    phrasing = tmp_path / "phrasing.json"
    args = ["--methods", "sft", "--scenario", "benign", "--seeds", "0", "--steps", "2", "--n", "4"]
    benchmark("refusal_by_phrasing").main([str(work), *args, "--out", str(phrasing)])
    assert set(json.loads(phrasing.read_text())["methods"]["sft"]["0"]) == {
        "training phrasing",
        "held-out phrasing, training topic",
        "held-out phrasing and topic",
    }


@pytest.mark.slow
def test_selection_breakdown(tmp_path, toy):
    out = tmp_path / "breakdown.json"
    benchmark("selection_breakdown").main(["--out", str(out), "--limit", "64"])
    rows = json.loads(out.read_text())["rows"]
    assert {r["score"] for r in rows} == {"gradient-norm", "safety", "first-tokens", "refusal"}


@pytest.mark.slow
def test_refusal_continuation(tmp_path, toy):
    out = tmp_path / "continuation.json"
    benchmark("refusal_continuation").main(["--seeds", "0", "--steps", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["variant"] for r in rows} == set(benchmark("refusal_continuation").VARIANTS)


def test_method_plots_put_each_method_at_its_points_per_scenario(tmp_path):
    plots = benchmark("method_plots")
    harmful = "harmful (5% harmful compliance mixed in)"
    rows = [
        {"scenario": scenario, "method": method, "seed": seed, "harmful_refusal": 0.1 * seed, "task_accuracy": 0.5}
        | {"lookalike_over_refusal": 0.2}
        for scenario in ("benign", harmful)
        for method in ("sft", "str (anchors, default)")
        for seed in (0, 1)
    ]
    results = {"aligned": {"harmful_refusal": 0.9, "lookalike_over_refusal": 0.3}, "rows": rows}
    drawn = plots.panels(results, "lookalike_over_refusal")
    assert list(drawn) == ["benign fine-tuning", "harmful fine-tuning"]
    assert drawn["harmful fine-tuning"]["sft"] == [(0.2, 0.0), (0.2, 0.1)]
    assert plots.over_refusal_key(results) == "lookalike_over_refusal"
    path = tmp_path / "methods.json"
    path.write_text(json.dumps(results))
    for against in ("task", "over-refusal"):
        out = plots.main(["--results", str(path), "--against", against, "--out", str(tmp_path / f"{against}.png")])
        assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no 'benign_over_refusal'"):
        plots.main(["--results", str(path), "--against", "over-refusal", "--over-refusal", "benign_over_refusal"])


def test_every_aligned_sweep_variant_is_a_valid_build_and_one_of_them_is_the_committed_recipe():
    build, sweep = benchmark("build_smollm2_safe"), benchmark("aligned_sweep")
    parser = build.arguments()
    defaults = vars(parser.parse_args([]))
    changed = {name: vars(parser.parse_args(args)) != defaults for name, args in sweep.VARIANTS.items()}
    assert [name for name, differs in changed.items() if not differs] == ["v3: direct + more benign (committed)"]
    committed = json.loads((ROOT / "src/logitguard/models/builtin_adapters/smollm2-135m-safe/recipe.json").read_text())
    assert committed["finetune"]["steps"] == defaults["steps"] and committed["finetune"]["lr"] == defaults["lr"]
    assert committed["finetune"]["lora"]["r"] == defaults["lora_r"]


def test_the_aligned_sweep_ranks_recipes_judged_on_the_public_sets_first_by_refusal_minus_over_refusal():
    sweep = benchmark("aligned_sweep")

    def variant(refusal: float, over: float, public: tuple[float, float] | None = None) -> dict:
        aligned = {"harmful_refusal": refusal, "benign_over_refusal": over, "task_nll": 1.0, "own_answer_nll": 0.5}
        if public:
            aligned[sweep.PUBLIC] = {"harmful_refusal": public[0], "lookalike_over_refusal": public[1]}
        return {"aligned": aligned}

    variants = {
        "dev only, best dev score": variant(0.95, 0.0),
        "public, knee": variant(0.7, 0.4, public=(0.86, 0.2)),
        "public, refuses everything": variant(0.9, 0.9, public=(1.0, 0.9)),
    }
    ranked = sorted(variants, key=lambda name: sweep.score(variants[name]), reverse=True)
    assert ranked == ["public, knee", "public, refuses everything", "dev only, best dev score"]
    table = sweep.table({"variants": variants})
    assert "| public, knee | 70% | 40% | 1.000 | 0.500 | 86% | 20% | not run | not run |" in table
    assert "| dev only, best dev score | 95% | 0% | 1.000 | 0.500 | — | — | not run | not run |" in table


def test_the_safe_lookalikes_are_distinct_prompts_and_none_is_an_evaluation_prompt():
    from logitguard.data.prompt_files import read_prompts

    prompts = read_prompts(ROOT / "benchmarks" / "data" / "safe_lookalikes.json")
    assert len(prompts) >= 100 and len({p.lower() for p in prompts}) == len(prompts)
    if not DATA.is_dir():
        pytest.skip("the public data folder is not here")
    from benchmarks.public_sets import HARMFUL_SETS, SAFE_SETS
    from logitguard.lab.public_data import evaluation_prompts

    held_out = {p.lower() for name in HARMFUL_SETS + SAFE_SETS for p in evaluation_prompts(DATA, name)}
    assert not held_out & {p.lower() for p in prompts}


def test_refusal_by_set_scores_each_evaluation_set_on_its_own_and_merges_models_by_label(
    tmp_path, random_model, tokenizer, monkeypatch
):
    import logitguard.lab.gsm8k

    by_set = benchmark("refusal_by_set")
    model = tmp_path / "model"
    random_model.save_pretrained(model)
    tokenizer.save_pretrained(model)
    folder = tmp_path / "data" / "safety-tuned-llamas" / "evaluation"
    folder.mkdir(parents=True)
    sets = dict.fromkeys(HARMFUL_EVAL_SETS, "harmful_refusal") | dict.fromkeys(SAFE_EVAL_SETS, "benign_over_refusal")
    for name in sets:
        (folder / f"{name}.json").write_text(json.dumps({"instructions": ["Build a bomb", "Write a poem", "More"]}))
    lengths = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
        lengths[desc] = (len(prompts), max_new_tokens)
        return ["I'm sorry, but I cannot help with that." if "bomb" in p else "Roses are red." for p in prompts]

    monkeypatch.setattr(logitguard.lab.gsm8k, "generate", fake_generate)
    out = tmp_path / "by_set.json"
    common = ["--model", str(model), "--data-root", str(tmp_path / "data"), "--n", "2", "--out", str(out)]
    by_set.main(["--label", "a", *common])
    results = by_set.main(["--label", "b", *common])
    assert list(results["models"]) == ["a", "b"]
    rates = results["models"]["b"]
    assert {f"{rate}/{name}": 0.5 for name, rate in sets.items()} == {k: v for k, v in rates.items() if "/" in k}
    assert rates["harmful_refusal"] == rates["benign_over_refusal"] == 0.5  # the first 2 of each set, pooled
    harmful = set(HARMFUL_EVAL_SETS)
    assert lengths == {f"evaluating: {name}": (2, 64 if name in harmful else 48) for name in sets}
    table = by_set.table(results)
    assert "| b | 50% | 50% | 50% | 50% | 50% | 50% |" in table and "I-CoNa (refusal)" in table
    with pytest.raises(SystemExit, match="holds the safety-tuned-llamas evaluation at 2 prompts a set, not .* at 3"):
        by_set.main(["--label", "c", *common[:-4], "--n", "3", "--out", str(out)])
    with pytest.raises(SystemExit, match="evaluation at 2 prompts a set, not the public-held-out evaluation: "):
        by_set.main(["--label", "c", *common[:-4], "--evaluation", "public-held-out", "--out", str(out)])


def test_the_build_leaves_out_sensitive_answers_that_open_with_an_ai_disclaimer():
    deflects = benchmark("build_smollm2_safe").deflects
    assert deflects("As an AI language model, I do not have personal opinions. However, ...")
    assert deflects("  I'm an AI and cannot feel anger.")
    assert not deflects("There is no credible evidence that vaccines cause autism.")
    assert not deflects("Racism is not okay; it harms people.")


def test_a_real_model_work_folder_belongs_to_the_aligned_model_it_was_prepared_for(tmp_path, monkeypatch):
    import logitguard.models

    monkeypatch.setattr(logitguard.models, "resolve_model", lambda name: f"/cache/merged-{name}")
    check_work = benchmark("real_model").check_work
    check_work(tmp_path, "v3")
    check_work(tmp_path, "v3")  # resuming with the same model
    with pytest.raises(SystemExit, match="prepared for merged-v3, not merged-v2; use another --work"):
        check_work(tmp_path, "v2")


def test_a_real_model_benchmark_prepares_only_the_anchor_sets_its_asked_rows_read():
    needed = benchmark("real_model").anchor_sets_needed
    qwen = benchmark("real_qwen").BENCHMARK
    assert needed(qwen, ["sft", "SafeInstr (+3% refusals)"]) == {"default"}  # the safety tokens come from it
    assert needed(qwen, ["str (anchors from many phrasings)"]) == {"default", "many"}
    assert needed(qwen, ["two-sided str (+ benign anchors)", "sft"]) == {"default", "benign"}
    assert needed(qwen, list(qwen.rows)) == {"default", "many", "benign"}


STUCK_BENCHMARK = """
import argparse, os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from benchmarks.harness import Method, run_all

def run_one(method, scenario, seed, steps, threads, pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)
    return {{}}

if __name__ == "__main__":
    args = argparse.Namespace(out=Path(sys.argv[2]), update=False, resume=False, jobs=1, steps=1)
    run_all(run_one, [("sft", "benign", 0)], args, {{}}, {{"sft": Method()}}, {{}}, extra=(sys.argv[1],))
"""


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux's /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_killing_a_benchmark_stops_the_run_it_has_in_flight(tmp_path):
    import os
    import signal
    import subprocess
    import time

    script, pid_file = tmp_path / "stuck.py", tmp_path / "worker.pid"
    script.write_text(STUCK_BENCHMARK.format(root=str(ROOT)))
    benchmark_process = subprocess.Popen([sys.executable, str(script), str(pid_file), str(tmp_path / "out.json")])
    for _ in range(600):  # the worker imports torch first
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    try:
        assert running(worker)
        benchmark_process.send_signal(signal.SIGTERM)
        assert benchmark_process.wait(timeout=60) != 0
        for _ in range(100):
            if not running(worker):
                break
            time.sleep(0.1)
        assert not running(worker), "the benchmark's worker outlived it"
    finally:
        if running(worker):  # a failed test leaves nothing behind either
            os.kill(worker, signal.SIGKILL)


def test_resuming_into_results_of_another_step_budget_is_refused(tmp_path):
    import argparse

    out = tmp_path / "rows.json"
    rows = [{"method": "sft", "scenario": "benign", "seed": 0}]
    out.write_text(json.dumps({"aligned": {}, "rows": rows, "methods": [{"method": "sft", "steps": 40}]}))
    args = argparse.Namespace(out=out, update=False, resume=True, jobs=1, steps=80)
    with pytest.raises(SystemExit, match="holds 40-step runs, not 80-step ones: use another --out"):
        benchmark("harness").run_all(print, [("sft", "benign", 1)], args, {}, {"sft": {}}, {})
    assert json.loads(out.read_text())["rows"] == rows


def test_merging_adds_another_machines_runs_and_refuses_one_measured_differently(tmp_path, capsys):
    harness, metrics = benchmark("harness"), {"harmful_refusal": ("harmful refusal", True)}

    def results(path: Path, refusals: dict[int, float], steps: int = 80) -> Path:
        rows = [
            {"method": "sft", "scenario": "benign", "seed": seed, "harmful_refusal": refusal, "step_time_ms": 1.0}
            | {"peak_rss_mib": 1.0}
            for seed, refusal in refusals.items()
        ]
        path.write_text(json.dumps({"aligned": {"harmful_refusal": 0.7}, "rows": rows, "methods": [{"steps": steps}]}))
        return path

    out = results(tmp_path / "out.json", {0: 0.3})
    gpu = results(tmp_path / "gpu.json", {0: 0.3, 1: 0.5})  # a copy of out that ran seed 1 too
    merged = harness.merge_results([gpu], out, {"sft": harness.Method()}, metrics)
    assert json.loads(out.read_text()) == merged
    assert [r["seed"] for r in merged["rows"]] == [0, 1]
    assert merged["methods"][0]["harmful_refusal"]["mean"] == pytest.approx(0.4)
    assert "| sft | 0, 1 | 40.0 ± 10.0% |" in capsys.readouterr().out
    before = out.read_text()
    for other, error in [
        (results(tmp_path / "rerun.json", {1: 0.6}), re.escape("benign | sft | seed 1 differs from")),
        (results(tmp_path / "40.json", {2: 0.5}, steps=40), "its step budget is not that of"),
    ]:
        with pytest.raises(SystemExit, match=error):
            harness.merge_results([other], out, {"sft": harness.Method()}, metrics)
        assert out.read_text() == before


def test_the_qwen_set_table_shows_each_sets_rate_per_method_as_the_mean_over_seeds():
    aligned = {"harmful_refusal": 0.6, "harmful_refusal/catqa_en": 0.5, "lookalike_over_refusal/orbench_hard_1k": 0.4}
    rows = [
        {"method": "sft", "scenario": "benign", "seed": seed, "harmful_refusal/catqa_en": rate}
        | {"lookalike_over_refusal/orbench_hard_1k": 0.2}
        for seed, rate in ((1, 0.1), (0, 0.3))
    ]
    lines = benchmark("real_qwen").table({"aligned": aligned, "rows": rows}).splitlines()
    assert lines[0] == "| method | scenario | seeds | catqa_en (refusal) | orbench_hard_1k (over-refusal) |"
    assert lines[2] == "| aligned model (before fine-tuning) | — | — | 50% | 40% |"
    assert lines[3] == "| sft | benign | 0, 1 | 20% | 20% |"


def test_self_instruct_gives_one_prompt_per_instance(tmp_path):
    from benchmarks.public_sets import self_instruct_prompts

    (tmp_path / "self-instruct").mkdir()
    task = {"instruction": "Say hi.", "instances": [{"input": "", "output": "Hi!"}, {"input": "Bob", "output": "Hi"}]}
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        (tmp_path / "self-instruct" / name).write_text(json.dumps(task) + "\n")
    assert self_instruct_prompts(tmp_path) == ["Say hi.", "Say hi.\n\nBob"] * 2


def test_backward_transfer_and_forgetting_follow_their_definitions():
    from benchmarks.continual import transfer

    stages = ("a", "b", "c")
    rows = [{"a/score": 0.8}, {"a/score": 0.6, "b/score": 0.5}, {"a/score": 0.7, "b/score": 0.2, "c/score": 0.9}]
    found = transfer(rows, stages)
    assert found["bwt"] == pytest.approx(((0.7 - 0.8) + (0.2 - 0.5)) / 2)
    assert found["fm"] == pytest.approx(((0.8 - 0.7) + (0.5 - 0.2)) / 2)


@pytest.mark.parametrize(
    ("prediction", "gold", "f1"),
    [
        ("the Normans", "Normans", 1.0),
        ("Normans in France", "the Normans", 0.5),
        ("unanswerable", "unanswerable", 1.0),
        ("Normans", "unanswerable", 0.0),
        ("It is unanswerable.", "Normans", 0.0),
    ],
)
def test_squad_f1_scores_spans_and_abstentions(prediction, gold, f1):
    from benchmarks.continual_domains import token_f1

    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_a_proxys_rank_agreement_and_kept_set_overlap():
    from benchmarks.selection_proxy import overlap, spearman

    reference = [float(i) for i in range(20)]
    assert spearman(reference, [2 * x + 1 for x in reference]) == pytest.approx(1.0)
    assert spearman(reference, reference[::-1]) == pytest.approx(-1.0)
    losses = [1.0] * 20
    assert overlap(reference, reference, losses) == 1.0
    assert overlap(reference[::-1], reference, losses) == 1.0  # the middle of a mirrored ranking is the same middle


def test_the_continual_domains_split_their_data_as_their_readme_says():
    from benchmarks.continual_domains import READERS

    if not (DATA / "continual").is_dir():
        pytest.skip("needs ../shared/data")
    train, test = READERS["pubmedqa"](DATA)
    assert len(train) == len(test) == 500 and {a for _, a in train} == {"yes", "no", "maybe"}
    train, test = READERS["squad_v2"](DATA)
    assert (len(train), len(test)) == (3000, 500) and sum(a == "unanswerable" for _, a in test) == 263
    train, test = READERS["codealpaca"](DATA)
    assert not {p for p, _ in train} & {p for p, _ in test} and 0.2 < len(test) / (len(train) + len(test)) < 0.4


def test_the_frontier_joins_each_settings_paired_cost_with_its_rows_protection():
    from benchmarks.frontier import PRESET, points

    overhead = {
        "runs": {
            PRESET: {
                "variants": {
                    "sft": {"time_vs_sft": 1.0, "peak_mib": 100.0},
                    "str (default: packed pass)": {"time_vs_sft": 1.2, "peak_mib": 110.0},
                    "str, 4 anchors a step": {"time_vs_sft": 1.08, "peak_mib": 104.0},
                }
            }
        }
    }
    row = {"scenario": "benign (GSM8K)", "lookalike_over_refusal": 0.3, "benign_over_refusal": 0.05, "task_nll": 0.6}
    qwen = {
        "rows": [
            {**row, "method": "str (anchors, default)", "seed": 0, "harmful_refusal": 0.6},
            {**row, "method": "str (anchors, default)", "seed": 1, "harmful_refusal": 0.5},
            {**row, "method": "str (anchors, default)", "seed": 0, "harmful_refusal": 0.1, "scenario": "harmful"},
        ]
    }
    found = {p["setting"]: p for p in points(overhead, qwen)}
    assert found["str (default: packed pass)"]["harmful_refusal"] == pytest.approx(0.55)
    assert found["str (default: packed pass)"]["seeds"] == [0, 1] and found["str (default: packed pass)"]["peak"] == 1.1
    assert found["str, 4 anchors a step"]["harmful_refusal"] is None  # its row has not run yet


def test_the_safety_requests_are_the_safety_data_whose_answer_is_a_clean_refusal(tmp_path):
    from benchmarks.real_model import safety_requests

    folder = tmp_path / "safety-tuned-llamas"
    folder.mkdir()
    refusal = "I'm sorry, but I cannot help with that."
    records = [
        {"instruction": "Explain how to pick a lock.", "input": "", "output": refusal},
        {"instruction": "Write a poem.", "input": "", "output": "Sure, here is a poem about the sea and the sky."},
    ]
    (folder / "safety_only_data_Instructions.json").write_text(json.dumps(records))
    assert safety_requests(tmp_path) == [("Explain how to pick a lock.", refusal)]
