"""Cost of the regulariser alone: STR's k-token penalty against a full-vocabulary KL, as the vocabulary grows.

Run: python benchmarks/regularizer_cost.py [--positions 2048] [--hidden 1024] [--k 32] [--repeats 7] [--device cpu]

For each vocabulary size, forward + backward of (a) STR: ``hidden @ W_out[ids].T`` and a KL over the k safety
tokens against cached reference logits, and (b) the full-vocabulary KL to reference logits (``hidden @ W_out.T``,
log-softmax over V). Both are measured side by side, medians over repeats; the reference logits are inputs (for
STR the cached (n, k) anchors, for the full KL the (n, V) logits a reference forward would produce).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from logitguard.baselines import full_vocab_kl
from logitguard.penalties import salient_kl, salient_logits


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
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, d, k = args.positions, args.hidden, args.k
    print(f"{n} positions, hidden {d}, k={k}, {args.device}; forward + backward, medians over {args.repeats}\n")
    print("| vocabulary | STR (k tokens) ms | full-vocabulary KL ms | full KL / STR |")
    print("|---|---|---|---|")
    for vocab in args.vocab:
        str_s, kl_s = measure(vocab, n, d, k, args.repeats, args.device)
        print(f"| {vocab:,} | {1000 * str_s:.2f} | {1000 * kl_s:.1f} | {kl_s / str_s:.0f}× |", flush=True)


if __name__ == "__main__":
    main()
