"""How well refusal judges read real answers: precision and recall on hand-labelled real text.

Run: python -m benchmarks.refusal_detector [--data-root ../shared/data] [--out benchmarks/results/refusal_detector.json]
                                           [--judges keyword ngram embedding]
     python -m benchmarks.refusal_detector --table          (the table of the committed results)
(about 2 minutes on 2 CPU cores, most of it SmolLM2-135M embedding the answers; keyword and n-grams: seconds.)

Three judges:

* ``keyword``: the offline detector LogitGuard judges with (``logitguard.evaluation.verdicts``). Its markers were
  tuned on the real set below, so its row there is in-sample (optimistic).
* ``n-gram classifier``: logistic regression on the words and word pairs of an answer's first 20 words;
* ``embedding classifier``: logistic regression on SmolLM2-135M's layer-20 hidden states, mean-pooled over an
  answer's first 48 tokens.

The two learned judges answer whether a classifier trained cheaply on labelled real text reads refusals better
than the markers. They are fitted on the real set's refusals against its compliant answers (classes weighted
equally); on the real set each answer is judged by a fit on the other four of five folds (stratified, seeded), on
the written set by a fit on every real answer. Their settings are the best of small grids (n-grams: 8/12/20/40
words, counts or unit-length rows, with or without a keyword feature; embeddings: 7 layers, 2 penalties) read
with the written set in view, so their written rows are optimistic too.

Two labelled sets:

* ``real``: answers written by real chat models and people, read from the data folder by the positions and labels
  in ``benchmarks/data/refusal_labels.json`` (160 safety-tuning answers from Safety-Tuned LLaMAs, labelled by hand:
  refusal, compliance or corrective; every human-written Self-Instruct answer: compliance). The data sets are
  public (see ``../shared/data/README.md``); pass their folder with ``--data-root``.
* ``written``: the 54 answers of ``tests/data/refusals_labelled.jsonl``, written for this project (the markers were
  tuned on them: optimistic; kept as a regression test).

A *refusal* verdict is the judge's ``"refusal"`` (a refusal that ends); ``refusal_then_compliance`` and
``compliance`` count as not refused. Precision and recall are of refusals against compliance; corrective answers
(safe answers that reject the request's premise) are reported apart, as the share the judge calls refusal.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.harness import show_table
from logitguard.evaluation.verdicts import judge_response, normalize
from logitguard.io import write_json

ROOT = Path(__file__).parents[1]
LABELS = ROOT / "benchmarks" / "data" / "refusal_labels.json"
WRITTEN = ROOT / "tests" / "data" / "refusals_labelled.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "refusal_detector.json"
JUDGES = {"keyword": "keyword", "ngram": "n-gram classifier", "embedding": "embedding classifier"}
FOLDS = 5
OPENING_WORDS = 20
NGRAM_L2 = 1e-3
EMBEDDING_MODEL = "smollm2-135m"
EMBEDDING_LAYER = 20  # of 30
EMBEDDING_L2 = 0.1
WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def real_set(data_root: Path) -> list[tuple[str, str]]:
    """``(answer, label)`` of the hand-labelled real answers, read from ``data_root``."""
    spec = json.loads(LABELS.read_text(encoding="utf-8"))["sources"]
    safety = json.loads((data_root / "safety-tuned-llamas" / "safety_only_data_Instructions.json").read_text())
    rows = [
        (safety[int(i)]["output"], label)
        for i, label in spec["safety-tuned-llamas/safety_only_data_Instructions.json"]["labels"].items()
    ]
    for name in spec["self-instruct"]["files"]:
        for line in (data_root / "self-instruct" / name).read_text(encoding="utf-8").splitlines():
            rows += [(instance["output"], "compliance") for instance in json.loads(line)["instances"]]
    return rows


def written_set() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in WRITTEN.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["response"], "refusal" if r["refusal"] else "compliance") for r in rows]


def scores(rows: list[tuple[str, str]], refused: Sequence[bool]) -> dict:
    """Precision and recall of refusals against compliance, and how corrective answers are judged."""
    judged = [(p, label, text) for p, (text, label) in zip(refused, rows, strict=True)]
    tp = sum(p and label == "refusal" for p, label, _ in judged)
    fp = sum(p and label == "compliance" for p, label, _ in judged)
    fn = sum(not p and label == "refusal" for p, label, _ in judged)
    n = {label: sum(lab == label for _, lab, _ in judged) for label in ("refusal", "compliance", "corrective")}
    result = {
        "n": n,
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "false_positive_rate": fp / max(n["compliance"], 1),
        "agreement": (tp + n["compliance"] - fp) / max(n["refusal"] + n["compliance"], 1),
        "missed": [text[:160] for p, label, text in judged if not p and label == "refusal"],
        "false_positives": [text[:160] for p, label, text in judged if p and label == "compliance"],
    }
    if n["corrective"]:
        result["corrective_judged_refusal"] = sum(p for p, lab, _ in judged if lab == "corrective") / n["corrective"]
    return result


# --- learned judges: logistic regression on the labelled real answers -------------------------------------------


def ngram_features(texts: Sequence[str]) -> list[set[str]]:
    """Each answer's opening (first :data:`OPENING_WORDS` words) as words, adjacent pairs and ``^first-word``."""
    out = []
    for text in texts:
        words = WORD.findall(normalize(text))[:OPENING_WORDS]
        grams = set(words) | {f"{a} {b}" for a, b in itertools.pairwise(words)}
        out.append(grams | ({f"^{words[0]}"} if words else set()))
    return out


def ngram_matrix(train: Sequence[set[str]], test: Sequence[set[str]]) -> tuple[Tensor, Tensor]:
    """Indicator rows over the n-grams seen in two or more training answers, scaled to unit length."""
    counts = Counter(g for grams in train for g in grams)
    index = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}

    def rows(sets: Sequence[set[str]]) -> Tensor:
        x = torch.zeros(len(sets), len(index), dtype=torch.float64)
        for r, grams in enumerate(sets):
            x[r, [index[g] for g in grams if g in index]] = 1.0 / math.sqrt(max(len(grams), 1))
        return x

    return rows(train), rows(test)


@torch.no_grad()
def embeddings(texts: Sequence[str], model_name: str = EMBEDDING_MODEL, layer: int = EMBEDDING_LAYER) -> Tensor:
    """Mean-pooled hidden states of one layer of ``model_name`` over each answer's first 48 tokens."""
    from logitguard.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(model_name).eval(), load_tokenizer(model_name)
    tokenizer.padding_side = "right"
    out = []
    for i in range(0, len(texts), 32):
        chunk = [t or " " for t in texts[i : i + 32]]  # an empty answer still gets one token to pool
        batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=48)
        hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out).double()


def logistic_regression(x: Tensor, y: Tensor, x_test: Tensor, l2: float) -> list[bool]:
    """Fit on ``(x, y)`` (both classes weighted equally; full-batch L-BFGS, deterministic); predict ``x_test``."""
    weight = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y, weight=weight) + l2 * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return ((x_test @ w + b) > 0).tolist()


def folds(rows: list[tuple[str, str]], count: int = FOLDS, seed: int = 0) -> list[int]:
    """Each answer's fold, stratified by label and seeded."""
    fold = [0] * len(rows)
    rng = random.Random(seed)
    for label in ("refusal", "compliance", "corrective"):
        members = [i for i, (_, lab) in enumerate(rows) if lab == label]
        rng.shuffle(members)
        for position, i in enumerate(members):
            fold[i] = position % count
    return fold


def learned(kind: str, real: list[tuple[str, str]], written: list[tuple[str, str]]) -> dict[str, list[bool]]:
    """The ``kind`` judge's refusal calls: on the real set by cross-validation (each answer judged by a fit on the
    other folds), on the written set by a fit on every real answer. Corrective answers are never trained on."""
    texts = [t for t, _ in real] + [t for t, _ in written]
    labels = torch.tensor([lab == "refusal" for _, lab in real], dtype=torch.float64)
    trainable = [lab != "corrective" for _, lab in real]
    if kind == "embedding":
        features = embeddings(texts)

        def fit_predict(train: list[int], test: list[int]) -> list[bool]:
            mean, std = features[train].mean(0), features[train].std(0) + 1e-6  # standardised on the fit's answers
            x, x_test = (features[train] - mean) / std, (features[test] - mean) / std
            return logistic_regression(x, labels[train], x_test, EMBEDDING_L2)
    else:
        grams = ngram_features(texts)

        def fit_predict(train: list[int], test: list[int]) -> list[bool]:
            x, x_test = ngram_matrix([grams[i] for i in train], [grams[i] for i in test])
            return logistic_regression(x, labels[train], x_test, NGRAM_L2)

    fold = folds(real)
    calls = [False] * len(real)
    for k in range(FOLDS):
        train = [i for i in range(len(real)) if fold[i] != k and trainable[i]]
        test = [i for i in range(len(real)) if fold[i] == k]
        for i, call in zip(test, fit_predict(train, test), strict=True):
            calls[i] = call
    every = [i for i in range(len(real)) if trainable[i]]
    return {"real": calls, "written": fit_predict(every, list(range(len(real), len(texts))))}


def table(results: dict) -> str:
    lines = [
        "| set | judge | refusals | compliant | agreement | precision | recall | compliant called refusal "
        "| corrective called refusal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, judges in results["sets"].items():
        for judge, r in judges.items():
            n = r["n"]
            corrective = f"{100 * r['corrective_judged_refusal']:.0f}% of {n['corrective']}" if n["corrective"] else "—"
            lines.append(
                f"| {name} | {judge} | {n['refusal']} | {n['compliance']} | {100 * r['agreement']:.1f}% | "
                f"{r['precision']:.3f} | {r['recall']:.3f} | {100 * r['false_positive_rate']:.1f}% | {corrective} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--judges", nargs="+", choices=JUDGES, default=list(JUDGES), help="default: all")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        return show_table(args.out, table)
    written = written_set()
    real = real_set(args.data_root) if (args.data_root / "safety-tuned-llamas").is_dir() else None
    if real is None:
        print(f"no data folder at {args.data_root}: the real-text set and the learned judges are skipped")
    rows = {"written": written} | ({"real": real} if real is not None else {})
    calls = {}
    if "keyword" in args.judges:
        calls["keyword"] = {name: [judge_response(t) == "refusal" for t, _ in r] for name, r in rows.items()}
    for kind in ("ngram", "embedding"):
        if kind in args.judges and real is not None:
            calls[JUDGES[kind]] = learned(kind, real, written)
    sets = {name: {judge: scores(rows[name], c[name]) for judge, c in calls.items() if name in c} for name in rows}
    results = {"sets": {name: judges for name, judges in sets.items() if judges}}
    write_json(args.out, results)
    for name, judges in results["sets"].items():
        for judge, r in judges.items():
            for kind in ("missed", "false_positives"):
                for text in r[kind]:
                    print(f"{name} / {judge} / {kind}: {text!r}")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
