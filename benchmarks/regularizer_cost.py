"""Cost of the regulariser alone: STR's k-token penalty against a full-vocabulary KL, as the vocabulary grows.

Run: python -m benchmarks.regularizer_cost [--positions 2048] [--hidden 1024] [--k 32] [--repeats 7] [--device cpu]
     python -m benchmarks.regularizer_cost --table
(a minute or two on 2 CPU cores; the rows go to ``benchmarks/results/regularizer_cost.json``.)

For each vocabulary size, forward + backward of (a) STR: ``hidden @ W_out[ids].T`` and a KL over the k safety
tokens against cached reference logits, and (b) the full-vocabulary KL to reference logits (``hidden @ W_out.T``,
log-softmax over V). Both are measured side by side, medians over repeats; the reference logits are inputs (for
STR the cached (n, k) anchors, for the full KL the (n, V) logits a reference forward would produce).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.harness import show_table
from logitguard.baselines import full_vocab_kl
from logitguard.core.penalties import salient_kl, salient_logits


def timed(step, repeats: int, device: str) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after one warm-up."""
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(vocab: int, n: int, d: int, k: int, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of the STR term and of the full-vocabulary KL, forward + backward."""
    weight = torch.randn(vocab, d, device=device) / d**0.5
    hidden = torch.randn(n, d, device=device, requires_grad=True)
    ids = torch.randperm(vocab, device=device)[:k]
    ref_salient, ref_full = torch.randn(n, k, device=device), torch.randn(n, vocab, device=device)
    mask = torch.ones(n, dtype=torch.bool, device=device)

    def str_step() -> None:
        salient_kl(salient_logits(hidden, weight[ids]), ref_salient, mask).backward()

    def kl_step() -> None:
        full_vocab_kl(hidden @ weight.T, ref_full, mask).backward()

    return timed(str_step, repeats, device), timed(kl_step, repeats, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=2048, help="penalised positions per step")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000, 256_000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "regularizer_cost.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        show_table(args.out, table)
        return
    from logitguard.io import write_json

    torch.manual_seed(0)
    n, d, k = args.positions, args.hidden, args.k
    results = {"positions": n, "hidden": d, "k": k, "device": args.device, "repeats": args.repeats, "rows": []}
    for vocab in args.vocab:
        str_s, kl_s = measure(vocab, n, d, k, args.repeats, args.device)
        results["rows"].append({"vocab": vocab, "str_ms": 1000 * str_s, "full_kl_ms": 1000 * kl_s})
        write_json(args.out, results)
    print(table(results))


def table(results: dict) -> str:
    lines = [
        f"{results['positions']} positions, hidden {results['hidden']}, k={results['k']}, {results['device']}; "
        f"forward + backward, medians over {results['repeats']}",
        "",
        "| vocabulary | STR (k tokens) ms | full-vocabulary KL ms | full KL / STR |",
        "|---|---|---|---|",
    ]
    for r in results["rows"]:
        ratio = r["full_kl_ms"] / r["str_ms"]
        lines.append(f"| {r['vocab']:,} | {r['str_ms']:.2f} | {r['full_kl_ms']:.1f} | {ratio:.0f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
