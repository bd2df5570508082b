"""How well cheaper gradient scores stand in for Moderate-Gi's full per-sample gradient norm, and what they cost.

Run: python -m benchmarks.selection_proxy [--data-root ../shared/data] [--n 200] [--domains NAME ...]
                                          [--adapter STAGE/adapter]
     python -m benchmarks.selection_proxy --table
(On 2 CPU cores about 12 minutes a domain of 200 samples. Results: ``benchmarks/results/selection_proxy.json``,
merged after every domain.)

On ``--n`` training pairs of each continual domain (:mod:`benchmarks.continual_domains`), Qwen2.5-Coder-0.5B-Instruct
with a fresh LoRA adapter (r=16, every linear layer) scores every sample once, with hooks on every scored layer,
so each stand-in is read off the same backward pass:

* ``dense``: the reference, the per-sample gradient norm of every weight the adapters adapt (what full fine-tuning
  of those layers would follow);
* ``last N layers``: the same over the last N decoder layers only (with ``SelectionConfig.last_layers`` the backward
  pass stops there, so it costs a forward pass and a short backward);
* ``LoRA adapters``: the norm of the adapters' own gradient (with B at 0, B's gradient is the dense one seen through
  A's random projection).

For each: Spearman's rank correlation with the dense norm, and the overlap of the samples Moderate-Gi keeps (the
±1σ loss band, then the 20% closest to the median) under it and under the dense norm. The seconds per sample of
each scoring pass (full backward, and the truncated ones) are timed on ``--timed`` samples. With ``--adapter`` (a
continual stage's adapter), the dense scores at that stage's weights are also compared with those at the aligned
weights (adapters off): whether it matters where, in a sequence, the gradients are taken.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "selection_proxy.json"
LAST = (1, 2, 4, 8)
KEEP = 0.2


def ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2
        i = j + 1
    return result


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def overlap(scores: list[float], reference: list[float], losses: list[float]) -> float:
    """Share of the samples Moderate-Gi keeps under ``reference`` that it also keeps under ``scores``."""
    from logitguard.selection.scores import keep_share

    ours = keep_share(scores, losses, "moderate", KEEP, 1.0)
    theirs = keep_share(reference, losses, "moderate", KEEP, 1.0)
    return sum(a and b for a, b in zip(ours, theirs, strict=True)) / sum(theirs)


def per_layer_scores(model, tokenizer, pairs, batch_size: int = 8) -> tuple[list[float], dict[str, list[float]]]:
    """Each sample's loss, and each scored stand-in's squared norm, from one backward pass per batch."""
    import torch

    from logitguard.core.model_access import eval_mode
    from logitguard.data.chat import collate, encode_chat
    from logitguard.selection.gradients import (
        PerSampleGradients,
        decoder_layers,
        gradient_entry,
        grads_set_aside,
        layer_index,
        mean_label_nll,
        sample_logits,
        scored_linears,
    )

    dense, adapters = scored_linears(model, "dense"), scored_linears(model, "trainable")
    n_layers = decoder_layers(model)
    losses, sums = [], {"dense": [], "LoRA adapters": [], **{f"last {n} layers": [] for n in LAST}}
    with eval_mode(model), grads_set_aside(model):
        for start in range(0, len(pairs), batch_size):
            batch = collate(
                [encode_chat(tokenizer, *p) for p in pairs[start : start + batch_size]], tokenizer.pad_token_id
            )
            layers = {**{f"dense:{k}": v for k, v in dense.items()}, **{f"lora:{k}": v for k, v in adapters.items()}}
            with gradient_entry(model, 0), PerSampleGradients(model, None, layers, frozen_biases=True) as stats:
                loss = mean_label_nll(sample_logits(model, batch), batch["labels"])
                loss.sum().backward()
            model.zero_grad(set_to_none=True)
            norms = stats.layer_sq_norms
            zero = torch.zeros(len(loss))
            dense_part = {k.removeprefix("dense:"): v for k, v in norms.items() if k.startswith("dense:")}
            sums["dense"] += sum(dense_part.values(), zero).tolist()
            # LoRA's biases are none, and base biases are not the adapters': only the lora modules count here
            sums["LoRA adapters"] += sum((v for k, v in norms.items() if k.startswith("lora:")), zero).tolist()
            for n in LAST:
                first = n_layers - n
                part = [
                    v for k, v in dense_part.items() if (layer_index(k) if layer_index(k) is not None else -1) >= first
                ]
                sums[f"last {n} layers"] += sum(part, zero).tolist()
            losses += loss.detach().tolist()
    return losses, {k: [v**0.5 for v in values] for k, values in sums.items()}


def timed_pass(model, tokenizer, pairs, last_layers: int | None) -> float:
    """Seconds per sample of the selection's own scoring pass (dense; truncated backward for ``last_layers``)."""
    from logitguard.selection import SelectionConfig, score_samples

    config = SelectionConfig(0.5, batch_size=8, max_length=512, on_overflow="truncate", last_layers=last_layers)
    samples = [
        (f"s{i}", [{"role": "user", "content": p}, {"role": "assistant", "content": a}])
        for i, (p, a) in enumerate(pairs)
    ]
    start = time.perf_counter()
    for _ in score_samples(model, tokenizer, samples, config):
        pass
    return (time.perf_counter() - start) / len(pairs)


def run_domain(name: str, args) -> dict:
    import torch
    from peft import PeftModel, get_peft_model

    from benchmarks.continual_domains import domain, stage_data
    from logitguard.lab.gsm8k import finetune_config
    from logitguard.models.loading import load_model, load_tokenizer

    torch.set_num_threads(2)
    tokenizer = load_tokenizer("qwen2.5-coder-0.5b")
    pairs = stage_data(domain(name, args.data_root, tokenizer, 0), args.n, 0)
    base = load_model("qwen2.5-coder-0.5b", dtype="float32")
    torch.manual_seed(0)
    if args.adapter:
        model = PeftModel.from_pretrained(base, str(args.adapter), is_trainable=True)
    else:
        model = get_peft_model(base, finetune_config(0).lora.peft_config())
    losses, scores = per_layer_scores(model, tokenizer, pairs)
    reference = scores["dense"]
    found = {
        "n": len(pairs),
        "stand_ins": {
            key: {"spearman": spearman(values, reference), "overlap": overlap(values, reference, losses)}
            for key, values in scores.items()
            if key != "dense"
        },
    }
    if args.adapter:
        with model.disable_adapter():
            _, aligned = per_layer_scores(model, tokenizer, pairs)
        found["aligned_weights"] = {
            "spearman": spearman(aligned["dense"], reference),
            "overlap": overlap(aligned["dense"], reference, losses),
        }
    timed = pairs[: args.timed]
    found["seconds_per_sample"] = {
        "dense": timed_pass(model, tokenizer, timed, None),
        **{f"last {n} layers": timed_pass(model, tokenizer, timed, n) for n in (2, 4)},
    }
    return found


def table(results: dict) -> str:
    lines = []
    for key, run in results["runs"].items():
        lines += [
            f"{key}: {run['n']} samples; Moderate-Gi's kept set (±1σ loss band, {KEEP:.0%} closest to the median)",
            "",
            "| stand-in for the dense norm | Spearman | kept-set overlap | s / sample |",
            "|---|---|---|---|",
        ]
        seconds = run["seconds_per_sample"]
        lines.append(f"| dense (the reference) | 1.000 | 100% | {seconds['dense']:.2f} |")
        for name, v in run["stand_ins"].items():
            cost = f"{seconds[name]:.2f}" if name in seconds else "—"
            lines.append(f"| {name} | {v['spearman']:.3f} | {100 * v['overlap']:.0f}% | {cost} |")
        if "aligned_weights" in run:
            v = run["aligned_weights"]
            lines.append(f"| dense at the aligned weights | {v['spearman']:.3f} | {100 * v['overlap']:.0f}% | — |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--domains", nargs="+", default=["codealpaca", "gsm8k", "pubmedqa", "squad_v2"])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--timed", type=int, default=32, help="samples each scoring pass is timed on")
    parser.add_argument(
        "--adapter", type=Path, default=None, help="score at a stage's adapter (and at aligned weights)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    from logitguard.io import write_json

    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    if args.table:
        print(table(results))
        return
    for name in args.domains:
        key = f"{name}" + (f" at {args.adapter.parent.name}" if args.adapter else "")
        results["runs"][key] = run_domain(name, args)
        write_json(args.out, results)
        print(table({"runs": {key: results["runs"][key]}}), flush=True)


if __name__ == "__main__":
    main()
