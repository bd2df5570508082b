"""What the method-comparison benchmarks share: the methods they can run, the run loop and the tables.

``methods`` (the toy), ``real_smollm2`` and ``real_qwen`` each define how one run is set up and trained; this module
runs them, one fresh process per run (so peak memory is the run's own), writes every finished row to the results
JSON at once (an interrupted benchmark keeps what it finished; ``--resume`` runs only what is missing; ``--update``
merges reruns; ``--merge`` adds another machine's), and prints the tables from the JSON (``--table``). Ctrl-C or
``kill`` stops the runs in flight with it, so an interrupted benchmark leaves no worker behind. A method is a
typed :class:`Method`; each run keeps its files in a folder named by the method's slug, never by its position.
Not a benchmark itself: ``python -m benchmarks.methods`` or ``python -m benchmarks.real_smollm2``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import statistics
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from logitguard.core.config import STRConfig
from logitguard.selection import SelectionConfig

if TYPE_CHECKING:
    from logitguard.lab.demo import DemoSetup
    from logitguard.lab.finetune import FinetuneConfig

DEFAULT_STR = STRConfig()
KL_BASELINE = STRConfig(
    penalty="kl", weight=1.0, reference="task", mask_conflicts=False, rest_bucket=False, target_bucket=False
)
SEPARATE_PASS = replace(DEFAULT_STR, anchor_pass="separate")  # the step before packing, for comparison
DROP_BY_NORM = SelectionConfig(0.1, "gradient-norm", batch_size=16)
DROP_BY_SAFETY = SelectionConfig(0.1, "safety", batch_size=16)
DROP_BY_FIRST_TOKENS = SelectionConfig(0.1, "first-tokens", batch_size=16)
DROP_REFUSED = SelectionConfig(None, "refusal", batch_size=16, threshold=0.1)
DROP_SURELY_REFUSED = SelectionConfig(None, "refusal", batch_size=16, threshold=0.5)  # the toy-calibrated first rule
DROP_BY_REFUSAL = SelectionConfig(0.1, "refusal", batch_size=16)
DROP_OPENING_REFUSED = SelectionConfig(None, "refusal-opening", batch_size=16, threshold=0.1)


@dataclass(frozen=True)
class Method:
    """One row of a method-comparison benchmark: how its run trains.

    Attributes:
        training: the trainer (``logitguard.hosts.builder.TRAINING_METHODS``: ``sft``, ``str``, ``constrained-sft``).
        str_config: STR's settings (``training="str"``).
        selection: sample selection before training, scored on the adapter about to be trained.
        all_tokens: every token a "safety token" (with the task reference: full-vocabulary KL).
        safety_fraction: SafeInstr: this share of refusals mixed into the data.
        anchors: which anchor set a real-model run takes (``default``, ``many`` phrasings, ...).
        k, end_token, phrasings: the toy's artifact variants (another k, the end-of-turn token as a safety token,
            anchors from fewer phrasings).
        lora_dropout: LoRA dropout instead of the benchmark's (0: a run that draws no random masks, so two anchor
            passes that compute the same step train the same model up to float rounding).
    """

    training: str = "sft"
    str_config: STRConfig | None = None
    selection: SelectionConfig | None = None
    all_tokens: bool = False
    safety_fraction: float = 0.0
    anchors: str = "default"
    k: int | None = None
    end_token: bool = False
    phrasings: int | None = None
    lora_dropout: float | None = None

    def __post_init__(self) -> None:
        if (self.training == "str") != (self.str_config is not None):
            raise ValueError("a method trains with STR exactly when it has STR's settings")

    def finetune_config(self, tune: FinetuneConfig) -> FinetuneConfig:
        """The benchmark's fine-tuning settings ``tune`` with this row's own (its LoRA dropout)."""
        if self.lora_dropout is None:
            return tune
        return replace(tune, lora=replace(tune.lora, dropout=self.lora_dropout))


def with_str(str_config: STRConfig = DEFAULT_STR, **fields) -> Method:
    """A method that trains with STR (``fields``: the rest of the :class:`Method`)."""
    return Method("str", str_config, **fields)


def slug(name: str) -> str:
    """A row's folder name: its name in lower-case ASCII words (stable when rows are reordered)."""
    text = name.lower().replace("λ", "lambda").replace("≥", "ge").replace("+", "plus").replace("%", "pct")
    return re.sub(r"[^a-z0-9.=]+", "-", text).strip("-")


METHODS: dict[str, Method] = {
    "sft": Method(),
    "str (anchors, default)": with_str(),
    "str (task reference)": with_str(replace(DEFAULT_STR, reference="task")),
    "str (anchors + task)": with_str(replace(DEFAULT_STR, reference="both")),
    "full-vocabulary KL (λ=1)": with_str(KL_BASELINE, all_tokens=True),
    "PACT-style restricted KL (λ=1, T=2)": with_str(replace(KL_BASELINE, temperature=2.0)),
    "constrained SFT (Qi et al.)": Method("constrained-sft"),
    "SafeInstr (+3% refusals)": Method(safety_fraction=0.03),
    "selection (drop 10%, gradient norm)": Method(selection=DROP_BY_NORM),
    "selection (drop 10%, safety score)": Method(selection=DROP_BY_SAFETY),
    "selection (gradient norm) + str": with_str(selection=DROP_BY_NORM),
    "selection (safety score) + str": with_str(selection=DROP_BY_SAFETY),
    "selection (drop 10%, first-token gradient)": Method(selection=DROP_BY_FIRST_TOKENS),
    "selection (drop 10%, refusal score)": Method(selection=DROP_BY_REFUSAL),
    "selection (refusal score ≥ 0.5)": Method(selection=DROP_SURELY_REFUSED),
    "selection (refusal score ≥ 0.5) + str": with_str(selection=DROP_SURELY_REFUSED),
    "selection (refusal score ≥ 0.1)": Method(selection=DROP_REFUSED),
    "selection (refusal score ≥ 0.1) + str": with_str(selection=DROP_REFUSED),
    "selection (refusal score ≥ 0.1) + str, separate anchor pass": with_str(
        SEPARATE_PASS, selection=DROP_REFUSED
    ),  # whether packing moves the harmful scenario's refusals
    "selection (refusal score ≥ 0.1) + str, no LoRA dropout": with_str(selection=DROP_REFUSED, lora_dropout=0.0),
    "selection (refusal score ≥ 0.1) + str, separate anchor pass, no LoRA dropout": with_str(
        SEPARATE_PASS, selection=DROP_REFUSED, lora_dropout=0.0
    ),  # without dropout's masks, which differ between the passes: is the packed step the separate one?
    "selection (refusal opening ≥ 0.1)": Method(selection=DROP_OPENING_REFUSED),
    "selection (refusal opening ≥ 0.1) + str": with_str(selection=DROP_OPENING_REFUSED),
    "str (anchors + task, conflicts defended)": with_str(replace(DEFAULT_STR, reference="both", mask_conflicts=False)),
}
SCENARIOS = {"benign": 0.0, "harmful (5% harmful compliance mixed in)": 0.05}
SELECTION_METRICS = ("dropped_harmful", "dropped_benign", "harmful_score_min", "benign_score_max")
Run = tuple[str, str, int]  # method, scenario, seed


def cell(values: Sequence[float], percent: bool = True) -> str:
    if not values:
        return "—"
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}%" if percent else f"{mean:.2f} ± {std:.2f}"


def summarize(
    rows: list[dict],
    rows_spec: dict[str, Method],
    metrics: dict[str, tuple[str, bool]],
    steps: int,
    aligned: dict | None = None,
    costs: bool = True,
) -> tuple[list[dict], list[str]]:
    """Per method and scenario: the JSON summary objects and the markdown table lines (the aligned model first).

    ``metrics`` maps a metric key to its column name and whether it is a percentage; ``costs=False`` leaves the
    step-time and memory ratios out of the table (runs that shared a device measure no cost).
    """
    cost_columns = ["× SFT time", "× SFT memory"] if costs else []
    summary, lines = [], []
    for scenario in SCENARIOS:
        scenario_rows = [r for r in rows if r["scenario"] == scenario]
        if not scenario_rows:
            continue
        seeds = sorted({r["seed"] for r in scenario_rows})
        lines += [f"\n{scenario}: seeds {seeds}, {steps} steps, mean ± std\n"]
        header = ["method", "seeds", *(name for name, _ in metrics.values()), *cost_columns]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        if aligned:
            cells = [
                ("—" if key not in aligned else f"{100 * aligned[key]:.1f}%" if percent else f"{aligned[key]:.2f}")
                for key, (_, percent) in metrics.items()
            ]
            cells += ["—"] * len(cost_columns)
            lines += ["| aligned model (before fine-tuning) | — | " + " | ".join(cells) + " |"]
        sft = {r["seed"]: r for r in scenario_rows if r["method"] == "sft"}
        for method in rows_spec:
            runs = [r for r in scenario_rows if r["method"] == method]
            if not runs:
                continue
            paired = [r for r in runs if r["seed"] in sft]
            values = {key: [r[key] for r in runs if key in r] for key in (*metrics, *SELECTION_METRICS)}
            values["time_vs_sft"] = [r["step_time_ms"] / sft[r["seed"]]["step_time_ms"] for r in paired]
            values["memory_vs_sft"] = [r["peak_rss_mib"] / sft[r["seed"]]["peak_rss_mib"] for r in paired]
            values["selection_vs_epoch"] = [  # scoring time over one epoch of plain SFT steps, same seed
                r["selection_s"] / (sft[r["seed"]]["step_time_ms"] / 1000 * r["epoch_steps"])
                for r in paired
                if "selection_s" in r
            ]
            cells = [cell(values[key], percent) for key, (_, percent) in metrics.items()]
            if costs:
                cells += [cell(values["time_vs_sft"], False), cell(values["memory_vs_sft"], False)]
            method_seeds = ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            lines += [f"| {method} | {method_seeds} | " + " | ".join(cells) + " |"]
            summary.append(
                {
                    "method": method,
                    "settings": asdict(rows_spec[method]),
                    "scenario": scenario,
                    "seeds": sorted(r["seed"] for r in runs),
                    "steps": steps,
                    **{
                        key: {"mean": statistics.mean(v), "std": statistics.pstdev(v)} for key, v in values.items() if v
                    },
                }
            )
        for s in (s for s in summary if s["scenario"] == scenario and "selection_vs_epoch" in s):
            dropped = s.get("dropped_harmful")
            other = s.get("dropped_benign")
            share = f"; dropped {100 * dropped['mean']:.0f}% of the mixed-in harmful pairs" if dropped else ""
            if other:
                rest = f"{100 * other['mean']:.0f}%"
                share += f" and {rest} of the rest" if dropped else f"; dropped {rest}"
            if "harmful_score_min" in s and "benign_score_max" in s:
                share += (  # each run's lowest and highest score, averaged over seeds
                    f" (scores, mean over seeds: harmful pairs from {s['harmful_score_min']['mean']:.3g}, "
                    f"the rest up to {s['benign_score_max']['mean']:.3g})"
                )
            took = f"selection took {s['selection_vs_epoch']['mean']:.2f}× one SFT epoch" if costs else ""
            lines += [f"{s['method']}: {(took + share).removeprefix('; ')}"]
    return summary, lines


def one_of(names: Sequence[str]) -> Callable[[str], str]:
    """An argparse ``type`` that takes one of ``names`` or a prefix (any case) that names exactly one of them, so
    ``--scenarios harmful`` needs no copy of the full row name; an exact name wins over a longer one it begins."""

    def resolve(text: str) -> str:
        if text in names:
            return text
        matches = [name for name in names if name.lower().startswith(text.lower())]
        if len(matches) != 1:
            found = "matches " + " | ".join(map(repr, matches)) if matches else "names none"
            raise argparse.ArgumentTypeError(f"{text!r} {found} of: {' | '.join(map(repr, names))}")
        return matches[0]

    return resolve


def by_name(names: Sequence[str]) -> dict:
    """``add_argument`` keywords for an option that takes one of ``names``: any name or a prefix naming only one
    (``one_of``), with the names listed in ``--help``."""
    return {"type": one_of(names), "choices": list(names)}


def add_arguments(parser: argparse.ArgumentParser, rows_spec: dict[str, Method], out: Path, steps: int) -> None:
    """The options every method-comparison benchmark takes; methods and scenarios by name or unique prefix."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--methods", nargs="+", default=None, **by_name(list(rows_spec)))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), **by_name(list(SCENARIOS)))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with cpu_count // jobs threads")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--update", action="store_true", help="merge into the rows already in --out")
    parser.add_argument("--resume", action="store_true", help="merge into --out, running only what it lacks")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    parser.add_argument(
        "--merge", type=Path, nargs="+", metavar="JSON", help="merge these results files' rows into --out and stop"
    )


def set_column(key: str) -> str:
    """The column name of one evaluation set's rate key, ``KIND_RATE/SET`` (``harmful_refusal/catqa_en``)."""
    rate, name = key.split("/")
    return f"{name} ({'refusal' if rate == 'harmful_refusal' else 'over-refusal'})"


def read_results(path: Path) -> dict:
    """A benchmark's results JSON for ``--table``; a missing file is a one-line error, not a traceback."""
    if not path.is_file():
        raise SystemExit(f"{path}: no results yet (run the benchmark without --table first)")
    return json.loads(path.read_text(encoding="utf-8"))


def show_table(path: Path, table: Callable[[dict], str]) -> dict:
    """``--table``: print ``table`` of the results JSON at ``path`` (a one-line error when there is none yet)."""
    results = read_results(path)
    print(table(results))
    return results


def print_tables(
    path: Path, rows_spec: dict[str, Method], metrics: dict[str, tuple[str, bool]], costs: bool = True
) -> dict:
    data = read_results(path)
    lines = summarize(data["rows"], rows_spec, metrics, data["methods"][0]["steps"], data["aligned"], costs)[1]
    print("\n".join(lines))
    return data


def results_only(
    args: argparse.Namespace, rows_spec: dict[str, Method], metrics: dict[str, tuple[str, bool]], costs: bool = True
) -> bool:
    """Do ``--table`` or ``--merge`` if asked (and say so: the benchmark then runs nothing). ``costs=False``
    leaves the step-time and memory ratios out of the tables (see :func:`summarize`)."""
    if args.table:
        print_tables(args.out, rows_spec, metrics, costs)
    elif args.merge:
        merge_results(args.merge, args.out, rows_spec, metrics, costs)
    return bool(args.table or args.merge)


def merge_results(
    paths: Sequence[Path],
    out: Path,
    rows_spec: dict[str, Method],
    metrics: dict[str, tuple[str, bool]],
    costs: bool = True,
) -> dict:
    """``--merge``: add the rows of other runs of this benchmark (another machine's, another session's) to ``out``.

    Every file must hold the same step budget and aligned model as ``out``. A run already in ``out`` is kept; the
    same run measured differently is an error naming it (rerun it with ``--update`` to replace it), so two
    sessions' numbers are never mixed silently."""
    from logitguard.io import write_json

    merged = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
    for path in paths:
        incoming = read_results(path)
        if merged is None:
            merged = {**incoming, "rows": []}
        for what, ours, theirs in (
            ("step budget", merged["methods"][0]["steps"], incoming["methods"][0]["steps"]),
            ("aligned model's results", merged["aligned"], incoming["aligned"]),
        ):
            if ours != theirs:
                raise SystemExit(f"{path}: its {what} is not that of {out}; merge it into another --out")
        known = {(r["method"], r["scenario"], r["seed"]): r for r in merged["rows"]}
        for row in incoming["rows"]:
            key = (row["method"], row["scenario"], row["seed"])
            if key not in known:
                known[key] = row
                merged["rows"].append(row)
            elif known[key] != row:
                run = f"{row['scenario']} | {row['method']} | seed {row['seed']}"
                raise SystemExit(f"{path}: {run} differs from {out}'s row; rerun it with --update")
    steps = merged["methods"][0]["steps"]
    merged["methods"], lines = summarize(merged["rows"], rows_spec, metrics, steps, merged["aligned"], costs)
    write_json(out, merged)
    print("\n".join(lines))
    return merged


def run_all(
    run_one: Callable[..., dict],
    runs: list[Run],
    args: argparse.Namespace,
    aligned: dict,
    rows_spec: dict[str, Method],
    metrics: dict[str, tuple[str, bool]],
    extra: tuple = (),
) -> list[dict]:
    """Run every ``(method, scenario, seed)`` in fresh processes as ``run_one(method, scenario, seed, steps,
    threads, *extra)``; after each, write all rows and their summary to ``args.out``."""
    from logitguard.io import write_json

    path = args.out
    results = json.loads(path.read_text(encoding="utf-8")) if (args.update or args.resume) and path.is_file() else {}
    budgets = {s["steps"] for s in results.get("methods", [])}
    if budgets - {args.steps}:  # the rows are keyed without their budget: merging would mix budgets silently
        raise SystemExit(f"{path} holds {min(budgets)}-step runs, not {args.steps}-step ones: use another --out")
    earlier = results.get("rows", [])
    if args.resume:
        done = {(r["method"], r["scenario"], r["seed"]) for r in earlier}
        asked, runs = len(runs), [run for run in runs if run not in done]
        print(f"{asked} runs asked for, {len(runs)} still to run", flush=True)
    rows = [r for r in earlier if (r["method"], r["scenario"], r["seed"]) not in set(runs)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    failed: list[str] = []
    pool = ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1)
    with pool, workers_stopped_on_interrupt(pool):
        futures = {pool.submit(run_one, m, s, seed, args.steps, threads, *extra): (m, s, seed) for m, s, seed in runs}
        for future in as_completed(futures):
            method, scenario, seed = futures[future]
            try:
                result = future.result()
            except Exception as e:  # one broken run must not cost the others (or the rows already written)
                failed.append(f"{scenario} | {method} | seed {seed}: {type(e).__name__}: {e}")
                print(f"FAILED {failed[-1]}", flush=True)
                continue
            rows.append({"scenario": scenario, "method": method, "seed": seed, "jobs": args.jobs, **result})
            print(f"{scenario} | {method} | seed {seed}: {rows[-1]}", flush=True)
            summary, _ = summarize(rows, rows_spec, metrics, args.steps)
            write_json(path, {"aligned": aligned, "rows": rows, "methods": summary})
    print("\n".join(summarize(rows, rows_spec, metrics, args.steps, aligned)[1]))
    if failed:
        raise SystemExit(f"{len(failed)} of {len(runs)} runs failed (the others are in {path}):\n" + "\n".join(failed))
    return rows


def run_dir(work: str | Path, method: str, scenario: str, seed: int, steps: int) -> Path:
    """Where a run keeps its files (the trained adapter is in ``run_dir(...) / "adapter"``): named by the scenario's
    and the method's slugs, the seed and the step budget (a run at another ``--steps`` keeps its own adapter)."""
    return Path(work) / f"{slug(scenario.split(' (')[0])}-{slug(method)}-seed{seed}-{steps}steps"


def terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's running workers and drop its queued runs: ``shutdown`` alone waits for every run in flight.
    (Python 3.14's ``ProcessPoolExecutor.terminate_workers`` does this; earlier versions have only ``_processes``.)"""
    for process in list((pool._processes or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def workers_stopped_on_interrupt(pool: ProcessPoolExecutor) -> Iterator[None]:
    """While in the block, SIGTERM (``kill``) interrupts as Ctrl-C does, and an interruption kills the runs in
    flight: otherwise the pool's workers outlive the benchmark, holding the CPU until their runs end."""
    previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    except BaseException:
        terminate_workers(pool)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def selection_outcome(examples: list, keep: list[bool], harmful: list, scores: Path) -> dict:
    """Shares of the mixed-in harmful pairs and of the other samples that selection dropped, and the gap a
    threshold must fall in: the lowest score of a harmful pair and the highest of any other sample (from the
    ``scores`` JSONL that :func:`~logitguard.selection.run_selection` wrote)."""
    harmful = set(harmful)
    values = {r["index"]: r["score"] for r in map(json.loads, scores.read_text(encoding="utf-8").splitlines())}
    is_harmful = [e in harmful for e in examples]
    rest = [i for i, h in enumerate(is_harmful) if not h]
    mixed_in = [i for i, h in enumerate(is_harmful) if h]
    outcome = {"dropped_benign": sum(not keep[i] for i in rest) / max(len(rest), 1)}
    if rest:
        outcome["benign_score_max"] = max(values[i] for i in rest)
    if mixed_in:
        outcome["dropped_harmful"] = sum(not keep[i] for i in mixed_in) / len(mixed_in)
        outcome["harmful_score_min"] = min(values[i] for i in mixed_in)
    return outcome


def scenario_table(
    path: Path,
    rows_spec: dict[str, Method],
    metrics: dict[str, tuple[str, bool]],
    scenario: str,
    methods: list[str] | None = None,
    costs: bool = True,
) -> str:
    """The markdown table of one scenario of a results JSON (the scenario's name, or its first word), optionally
    of the named ``methods`` only."""
    data = json.loads(path.read_text(encoding="utf-8"))
    name = next(s for s in SCENARIOS if s == scenario or s.split()[0] == scenario)
    rows = [r for r in data["rows"] if r["scenario"] == name and (methods is None or r["method"] in methods)]
    lines = summarize(rows, rows_spec, metrics, data["methods"][0]["steps"], data["aligned"], costs)[1]
    return "\n".join(line for line in lines if line.startswith("|"))


def select_examples(
    model, setup: DemoSetup, examples: list[tuple[str, str]], selection, scores_path: Path, identity: dict
) -> list[bool]:
    """Sample selection of ``(prompt, response)`` examples on ``model`` (a fresh LoRA model): the keep mask. The
    safety score takes its direction from the anchors' refusals; every record also gets its refusal score."""
    from logitguard.data.chat import chat_messages
    from logitguard.selection import select_samples

    samples = ((f"example {i}", chat_messages(p, r)) for i, (p, r) in enumerate(examples))
    return select_samples(
        model,
        setup.setting.tokenizer,
        samples,
        selection,
        scores_path,
        identity,
        total=len(examples),
        tokens=setup.tokens,
        anchors=setup.anchors,
    )


def toy_harmful_compliance(setting) -> list[tuple[str, str]]:
    """The toy's harmful requests with compliant answers (what its harmful scenario mixes in)."""
    return [(e.prompt, e.response) for e in setting.corpus.base if e.kind == "harmful"]


def toy_refusals(setting) -> list[tuple[str, str]]:
    """The toy's harmful requests in training phrasings with its aligned refusals (SafeInstr's mixed-in data)."""
    return [(e.prompt, e.response) for e in setting.corpus.train_harmful]
