"""Continual fine-tuning of an aligned model over several domains in turn, and what keeps it safe: moderate-gradient
selection (Moderate-Gi, Bach et al., arXiv 2604.17215), STR, both at once, and the paper's controls.

Run: python -m benchmarks.continual [--data-root ../shared/data] [--seeds 0] [--methods NAME ...]
                                    [--stages codealpaca gsm8k pubmedqa] [--work continual-work]
     python -m benchmarks.continual --table        (the table of benchmarks/results/continual.json)
     python -m benchmarks.continual --plot         (refusal and over-refusal across stages, one line per method)
     python -m benchmarks.continual --merge OTHER.json   (add another machine's rows)
(Needs the Qwen model's packages and ``python -m benchmarks.real_qwen --prepare-only --methods "str (anchors,
default)" --work real-qwen-work`` for STR's anchors and the aligned model's safety results. On 2 CPU cores a stage
of full-data training is about 20 minutes, one on a 20% subset about 5 plus its selection, and every evaluation
about 10.)

The aligned model, Qwen2.5-Coder-0.5B-Instruct, is LoRA-fine-tuned (r=16 on every linear layer, lr 3e-4, cosine
with 10% warm-up, batch 8, one epoch) on each domain of ``--stages`` in turn (:mod:`benchmarks.continual_domains`),
each stage going on from the adapter of the one before (as ``logitguard train``'s ``stages`` do). A stage's data
are ``N_STAGE`` training pairs of its domain, the same for every method of a seed. The methods:

* ``sft``: all of them; ``str``: all of them, with STR's default step;
* ``random subset``: a random ``KEEP`` share of them (the paper's control: as many samples as selection keeps);
* ``moderate-gi``: Moderate-Gi as the paper describes it: the samples whose loss under the model about to be
  trained lies inside mean ± 1σ, then the ``KEEP`` share whose per-sample gradient norm lies closest to the median;
  the gradient is the dense one of the weights the adapters adapt, taken at the start of each stage;
* ``str + moderate-gi``: both at once; ``high-gi``: the band, then the ``KEEP`` share of highest norms (the paper's
  negative control).

After every stage: harmful refusal and look-alike and ordinary over-refusal on the held-out public sets of
``real_qwen``, and each finished domain's task score; at the end, backward transfer (BWT: the mean change of each
earlier domain's score from just after its stage to the end) and the forgetting measure (FM: the mean drop from its
best score). Rows are written to ``benchmarks/results/continual.json`` after every (method, seed, stage), and a
rerun skips them, going on from the last finished stage's adapter in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from logitguard.core.config import STRConfig
from logitguard.selection import SelectionConfig

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "continual.json"
MODEL = "qwen2.5-coder-0.5b"
STAGES = ("codealpaca", "gsm8k", "pubmedqa")
N_STAGE = 240  # training pairs of a stage: 30 steps of batch 8 for the full-data methods
KEEP = 0.2  # the paper's ρ
N_TEST = 100  # test pairs per domain (GSM8K: accuracy on the first 20 generated, NLL on all)
BATCH = 8


@dataclass(frozen=True)
class ContinualMethod:
    """A row: the selection each stage applies to its data (None: all of it) and STR's settings (None: plain SFT)."""

    selection: SelectionConfig | None = None
    str_config: STRConfig | None = None


def keep_rule(rule: str) -> SelectionConfig:
    return SelectionConfig(None, "gradient-norm", BATCH, 512, "truncate", rule=rule, keep=KEEP)


METHODS = {
    "sft": ContinualMethod(),
    f"random subset ({KEEP:.0%})": ContinualMethod(keep_rule("random")),
    f"moderate-gi ({KEEP:.0%})": ContinualMethod(keep_rule("moderate")),
    "str": ContinualMethod(str_config=STRConfig()),
    f"str + moderate-gi ({KEEP:.0%})": ContinualMethod(keep_rule("moderate"), STRConfig()),
    f"high-gi ({KEEP:.0%})": ContinualMethod(keep_rule("highest")),
}
SAFETY = {
    "harmful_refusal": "harmful refusal",
    "lookalike_over_refusal": "over-refusal (look-alikes)",
    "benign_over_refusal": "over-refusal (benign)",
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def stage_dir(work: Path, method: str, seed: int, index: int, stages: tuple[str, ...]) -> Path:
    return work / "continual" / slug(method) / f"seed-{seed}" / f"{index + 1:02d}-{stages[index]}"


class ContinualSetting:
    """The Qwen benchmark's setting (aligned model, held-out safety sets), judged on the finished domains too."""

    def __init__(self, data_root: Path, domains: list) -> None:
        from logitguard.lab.demo import REAL_DEMOS

        self.base = REAL_DEMOS[MODEL].setting(data_root, MODEL)
        self.domains = domains
        self.aligned, self.tokenizer = self.base.aligned, self.base.tokenizer
        self.monitor_prompts, self.monitor_tokens = self.base.monitor_prompts, self.base.monitor_tokens

    def load_aligned(self):
        return self.base.load_aligned()

    def evaluate(self, model) -> dict[str, float]:
        metrics = self.base.safety(model)
        for domain in self.domains:
            for key, value in domain.score(self.base, model, domain.test).items():
                metrics[f"{domain.name}/{key}"] = value
        return metrics

    def samples(self, model) -> list[dict]:
        return []


def run_stage(method: str, seed: int, index: int, stages: tuple[str, ...], work: str, data_root: str) -> dict:
    """One stage of one (method, seed) in this (fresh) process: select, train from the previous stage's adapter,
    evaluate; returns the row."""
    import torch
    from peft import PeftModel

    from benchmarks.continual_domains import domain, stage_data
    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.data.chat import chat_messages
    from logitguard.lab.finetune import finetune, lora_model
    from logitguard.lab.gsm8k import finetune_config
    from logitguard.selection import select_samples

    torch.set_num_threads(2)
    spec, work_dir = METHODS[method], Path(work)
    from logitguard.models.loading import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    domains = [domain(name, Path(data_root), tokenizer, N_TEST) for name in stages[: index + 1]]
    setting = ContinualSetting(Path(data_root), domains)
    examples = stage_data(domains[-1], N_STAGE, seed)
    tune = replace(finetune_config(seed, 1), monitor_every=0)
    if index == 0:
        model = lora_model(setting, tune)
    else:  # the adapter of the stage before, trained on (its base stays the aligned model)
        previous = stage_dir(work_dir, method, seed, index - 1, stages) / "adapter"
        model = PeftModel.from_pretrained(setting.load_aligned(), str(previous), is_trainable=True)
    folder = stage_dir(work_dir, method, seed, index, stages)
    row = {"n": len(examples)}
    if spec.selection is not None:
        start = time.perf_counter()
        samples = ((f"{stages[index]} {i}", chat_messages(p, a)) for i, (p, a) in enumerate(examples))
        selection = replace(spec.selection, seed=seed)
        keep = select_samples(
            model, tokenizer, samples, selection, folder / "selection" / "scores.jsonl", {}, total=len(examples)
        )
        examples = [e for e, k in zip(examples, keep, strict=True) if k]
        row["selection_s"] = time.perf_counter() - start
    row["kept"] = len(examples)
    steps = math.ceil(len(examples) / BATCH)  # one epoch of what is kept
    tune = replace(tune, steps=steps, warmup_steps=max(1, round(0.1 * steps)))
    tokens = anchors = None
    if spec.str_config is not None:
        tokens = SafetyTokens.load(work_dir / "default" / "safety_tokens.json")
        anchors = AnchorCache.load(work_dir / "default" / "anchors.safetensors")
    method_name = "str" if spec.str_config is not None else "sft"
    result = finetune(
        setting,
        tune,
        examples,
        folder,
        method_name,
        str_config=spec.str_config,
        tokens=tokens,
        anchors=anchors,
        model=model,
        progress=False,
    )
    return row | {"steps": steps} | result["metrics"]


def in_process(target, *args):
    """``target(*args)`` in a fresh process (its peak memory its own); its return value."""
    context = mp.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(target, args)


def aligned_scores(work: Path, data_root: Path, stages: tuple[str, ...]) -> dict[str, float]:
    """The aligned model's safety (``real_qwen``'s aligned.json) and every domain's score, computed once."""
    from logitguard.io import write_json

    path = work / "continual-aligned.json"
    found = json.loads(path.read_text()) if path.is_file() else {}
    missing = [name for name in stages if f"{name}/score" not in found]
    if missing:
        found |= in_process(score_aligned, missing, str(data_root))
        write_json(path, found)
    safety = json.loads((work / "aligned.json").read_text())
    return {key: safety[key] for key in SAFETY} | found


def score_aligned(names: list[str], data_root: str) -> dict[str, float]:
    from benchmarks.continual_domains import domain
    from logitguard.models.loading import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    domains = [domain(name, Path(data_root), tokenizer, N_TEST) for name in names]
    setting = ContinualSetting(Path(data_root), domains)
    model = setting.load_aligned()
    return {f"{d.name}/{key}": value for d in domains for key, value in d.score(setting.base, model, d.test).items()}


def transfer(rows: list[dict], stages: tuple[str, ...]) -> dict[str, float]:
    """BWT and FM of one (method, seed)'s finished sequence (``rows`` by stage): over the domains before the last,
    the mean change of each one's score from just after its own stage to the end, and the mean drop from its best."""
    last = len(stages) - 1
    earlier = range(last)
    score = lambda i, j: rows[i][f"{stages[j]}/score"]  # noqa: E731
    bwt = statistics.mean(score(last, j) - score(j, j) for j in earlier)
    fm = statistics.mean(max(score(i, j) for i in range(j, last)) - score(last, j) for j in earlier)
    return {"bwt": bwt, "fm": fm}


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"settings": None, "aligned": None, "rows": []}


def settings(stages: tuple[str, ...]) -> dict:
    return {"model": MODEL, "stages": list(stages), "n_stage": N_STAGE, "keep": KEEP, "n_test": N_TEST, "batch": BATCH}


def done(results: dict, method: str, seed: int, index: int) -> bool:
    return any(r["method"] == method and r["seed"] == seed and r["stage"] == index for r in results["rows"])


def table(results: dict) -> str:
    """Per method, mean over seeds: safety after the last stage, each domain's final score, BWT and FM; and the
    cost of a stage (selection plus training) against SFT's training."""
    stages = tuple(results["settings"]["stages"])
    last = len(stages) - 1
    aligned = results["aligned"]
    header = ["method", "seeds", *SAFETY.values(), *(f"{s} score" for s in stages), "BWT", "FM", "× SFT time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [f"{100 * aligned[k]:.1f}%" for k in SAFETY] + [f"{100 * aligned[f'{s}/score']:.1f}" for s in stages]
    lines.append("| aligned model (before fine-tuning) | — | " + " | ".join([*cells, "—", "—", "—"]) + " |")
    sft_cost = cost_per_stage(results, "sft")
    for method in METHODS:
        seeds = sorted({r["seed"] for r in results["rows"] if r["method"] == method and r["stage"] == last})
        if not seeds:
            continue
        chains = [
            sorted((r for r in results["rows"] if r["method"] == method and r["seed"] == s), key=lambda r: r["stage"])
            for s in seeds
        ]
        final = [chain[last] for chain in chains]
        moved = [transfer(chain, stages) for chain in chains]
        cells = [mean_spread([100 * r[k] for r in final], "%") for k in SAFETY]
        cells += [mean_spread([100 * r[f"{s}/score"] for r in final]) for s in stages]
        cells += [mean_spread([100 * m["bwt"] for m in moved]), mean_spread([100 * m["fm"] for m in moved])]
        ratio = cost_per_stage(results, method) / sft_cost if sft_cost else None
        cells.append(f"{ratio:.2f}" if ratio else "—")
        lines.append(f"| {method} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_per_stage(results: dict, method: str) -> float:
    """Mean seconds of a stage's selection plus training (training: steps × the median step time)."""
    rows = [r for r in results["rows"] if r["method"] == method]
    if not rows:
        return 0.0
    return statistics.mean(r.get("selection_s", 0.0) + r["steps"] * r["step_time_ms"] / 1000 for r in rows)


def mean_spread(values: list[float], unit: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}{unit}"
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}{unit}"


def plot(results: dict, out: Path) -> Path:
    """Refusal and both over-refusals after each stage (stage 0: the aligned model), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = results["settings"]["stages"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for axis, (key, label) in zip(axes, SAFETY.items(), strict=True):
        for method in METHODS:
            rows = [r for r in results["rows"] if r["method"] == method]
            if not rows:
                continue
            points = [(0, results["aligned"][key])]
            for index in range(len(stages)):
                values = [r[key] for r in rows if r["stage"] == index]
                if values:
                    points.append((index + 1, statistics.mean(values)))
            axis.plot(*zip(*points, strict=True), marker="o", label=method)
        axis.set_title(label)
        axis.set_xticks(range(len(stages) + 1), ["aligned", *stages], rotation=20)
        axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    return out


def merge(results: dict, others: list[Path]) -> dict:
    for path in others:
        other = load(path)
        if other["settings"] != results["settings"]:
            raise SystemExit(f"{path}: measured with other settings ({other['settings']}); not merged")
        for row in other["rows"]:
            if not done(results, row["method"], row["seed"], row["stage"]):
                results["rows"].append(row)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("real-qwen-work"), help="real_qwen's prepared --work")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--stages", nargs="+", default=list(STAGES), choices=["codealpaca", "gsm8k", "pubmedqa", "squad_v2"]
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--merge", nargs="+", type=Path, default=[])
    args = parser.parse_args(argv)
    from logitguard.io import write_json

    results = load(args.out)
    if args.table or args.plot:
        if not results["rows"]:
            raise SystemExit(f"{args.out}: no results yet; run python -m benchmarks.continual first")
        print(table(results))
        if args.plot:
            print(plot(results, args.out.with_suffix(".png")))
        return
    stages = tuple(args.stages)
    if results["settings"] not in (None, settings(stages)):
        raise SystemExit(f"{args.out} holds runs of other settings ({results['settings']}); give another --out")
    results["settings"] = settings(stages)
    if args.merge:
        write_json(args.out, merge(results, args.merge))
        print(table(results))
        return
    results["aligned"] = aligned_scores(args.work, args.data_root, stages)
    write_json(args.out, results)
    for seed in args.seeds:
        for method in args.methods:
            for index in range(len(stages)):
                if done(results, method, seed, index):
                    continue
                started = time.perf_counter()
                row = in_process(run_stage, method, seed, index, stages, str(args.work), str(args.data_root))
                row |= {"method": method, "seed": seed, "stage": index, "domain": stages[index]}
                row["wall_s"] = time.perf_counter() - started
                results["rows"].append(row)
                write_json(args.out, results)  # after every stage: an interrupted run keeps what it finished
                print(
                    f"{method}, seed {seed}, stage {index + 1} ({stages[index]}): "
                    f"refusal {row['harmful_refusal']:.1%}, {row['wall_s'] / 60:.0f} min",
                    flush=True,
                )
    print(table(results))


if __name__ == "__main__":
    main()
