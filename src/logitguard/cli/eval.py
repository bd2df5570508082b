"""``logitguard eval``: refusal, attack success, over-refusal and task utility of a model or of saved responses.

Run: logitguard eval --model NAME_OR_PATH [--adapter DIR] [--harmful F] [--lookalike F] [--benign F] [--task F]
                     --out DIR
     logitguard eval --responses FILE --out DIR      (score existing responses; no model is loaded)
Writes one JSONL per split (every response with its verdict) and summary.json: harmful refusal and over-refusal
side by side (on safe look-alikes, e.g. XSTest's safe rows, OR-Bench-Hard or CoCoNot's contrast set, and on
ordinary benign prompts, each under its own key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from logitguard.cli.common import ArgumentParser, add_model_arguments, load_model_and_tokenizer, number
from logitguard.errors import LogitGuardError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="logitguard eval", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, require_model=False)
    parser.add_argument("--responses", help="JSONL of {prompt, response[, kind, answer]} to score without a model")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder to load on top of --model")
    parser.add_argument(
        "--any-adapter-base",
        action="store_true",
        help="load --adapter even though it records another base model (a renamed copy of it)",
    )
    parser.add_argument("--harmful", default=None, help="harmful prompts: a file (AdvBench, JBB, ... CSVs) or dataset")
    parser.add_argument(
        "--lookalike",
        default=None,
        help="safe prompts that sound unsafe (XSTest safe rows, OR-Bench-Hard, CoCoNot contrast: JSONL with 'prompt')",
    )
    parser.add_argument("--benign", default=None, help="ordinary benign prompts (over-refusal on everyday requests)")
    parser.add_argument("--task", default=None, help="JSONL/JSON task records with 'prompt' and 'answer'")
    parser.add_argument("--column", default=None, help="prompt column or field of --harmful/--lookalike/--benign")
    parser.add_argument("--split", default="train", help="split, when a prompt option names a datasets dataset")
    parser.add_argument("--task-metric", choices=["exact", "contains"], default="exact")
    parser.add_argument("--judge", default="keyword", help="'keyword' (offline) or a guard model name or path")
    parser.add_argument(
        "--max-new-tokens",
        type=number(int),
        default=128,
        help="tokens generated per answer (default 128: enough to see whether a refusal goes on to comply)",
    )
    parser.add_argument("--batch-size", type=number(int), default=16)
    parser.add_argument(
        "--limit", type=number(int), default=None, help="evaluate only the first N prompts of each split"
    )
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.responses is None):
        parser.error("give exactly one of --model and --responses")
    summary = run(args)
    print(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    print(f"wrote per-response verdicts and summary.json to {args.out}")
    return 0


def load_splits(args: argparse.Namespace) -> dict[str, list]:
    """Prompts per split (built-in harmful and benign prompts when no file is given)."""
    from logitguard.artifacts.builtin_prompts import BENIGN_PAIRS, HARMFUL_PROMPTS
    from logitguard.data.prompt_files import read_prompts, read_task

    splits = {
        "harmful": read_prompts(args.harmful, args.column, args.split) if args.harmful else list(HARMFUL_PROMPTS),
        "lookalike": read_prompts(args.lookalike, args.column, args.split) if args.lookalike else [],
        "benign": read_prompts(args.benign, args.column, args.split) if args.benign else [p for p, _ in BENIGN_PAIRS],
        "task": read_task(args.task) if args.task else [],
    }
    return {name: rows[: args.limit] for name, rows in splits.items()}


def saved_responses(path: str) -> dict[str, list[dict]]:
    """Records of a responses file grouped by ``kind`` (default harmful), checked field by field."""
    from logitguard.data.prompt_files import read_records

    grouped: dict[str, list[dict]] = {"harmful": [], "lookalike": [], "benign": [], "task": []}
    for where, record in read_records(path):
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("response"), str):
            raise LogitGuardError(f"{where}: a response record needs string fields 'prompt' and 'response'")
        kind = record.get("kind", "harmful")
        if kind not in grouped:
            raise LogitGuardError(f"{where}: kind must be one of {sorted(grouped)}, got {kind!r}")
        if kind == "task" and not isinstance(record.get("answer"), str):
            raise LogitGuardError(f"{where}: a task record needs a string 'answer'")
        grouped[kind].append(record)
    return grouped


def check_output_dir(args: argparse.Namespace) -> Path:
    """``--out`` must be new, empty or an earlier eval's (whose files a rerun replaces, and only those), and hold none
    of the inputs."""
    from logitguard.io import ensure_writable_dir
    from logitguard.outputs import claim_folder

    out = Path(args.out)
    for option in ("responses", "harmful", "lookalike", "benign", "task", "adapter", "model"):
        given = getattr(args, option, None)
        if given and Path(given).exists() and Path(given).resolve().is_relative_to(out.resolve()):
            raise LogitGuardError(
                f"--{option} {given} lies inside --out {out}, where eval writes its results; choose another --out"
            )
    claim_folder(out, "eval")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    return out


def run(args: argparse.Namespace) -> dict:
    """Check ``--out``, then evaluate while holding it (a second eval into it stops at once)."""
    from logitguard.outputs import OutputLock

    out = check_output_dir(args)
    with OutputLock(out):
        check_output_dir(args)  # again, now that no other eval can write it
        return evaluate(args, out)


def evaluate(args: argparse.Namespace, out: Path) -> dict:
    """Generate (or read) the responses, judge them, and replace ``out`` with the verdicts and the summary."""
    from logitguard.evaluation.judges import make_judge
    from logitguard.evaluation.metrics import judge_refusals, score_task, summarize
    from logitguard.io import write_json, write_text
    from logitguard.outputs import replace_output

    if args.responses:
        grouped = saved_responses(args.responses)
        responses = {k: ([r["prompt"] for r in v], [r["response"] for r in v]) for k, v in grouped.items()}
        answers = [r["answer"] for r in grouped["task"]]
    else:
        splits = load_splits(args)
        generate_responses = responder(args)
        responses = {
            name: (splits[name], generate_responses(splits[name], name)) for name in ("harmful", "lookalike", "benign")
        }
        task_prompts = [p for p, _ in splits["task"]]
        responses["task"] = (task_prompts, generate_responses(task_prompts, "task") if task_prompts else [])
        answers = [a for _, a in splits["task"]]

    judge = make_judge(args.judge)
    records = {name: judge_refusals(*responses[name], judge) for name in ("harmful", "lookalike", "benign")}
    records["task"] = score_task(*responses["task"], answers, args.task_metric)
    summary = {"source": args.responses or args.model, "adapter": args.adapter, "judge": judge.name}
    summary |= summarize(records["harmful"], records["benign"], records["task"], records["lookalike"])
    if not any(records.values()):
        raise LogitGuardError("nothing to evaluate: every split is empty")

    def write(tmp: Path) -> None:  # one unit: never an old summary beside new results, nor stale files of ours
        for name, rows in records.items():
            if rows:
                write_text(tmp / f"{name}.jsonl", "".join(_json_line(r) for r in rows))
        write_json(tmp / "summary.json", summary)

    replace_output(out, "eval", write)
    return summary


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def responder(args: argparse.Namespace):
    """A function (prompts, split name) -> greedy responses, from the model (and adapter) of ``args``."""
    from logitguard.evaluation.generation import generate

    tokenizer, model = load_model_and_tokenizer(args)
    if args.adapter:
        from logitguard.models import load_adapter

        model = load_adapter(model, args.adapter, args.model, args.any_adapter_base)

    def respond(prompts: list[str], name: str) -> list[str]:
        responses = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, desc=f"{name} prompts")
        if prompts and not any(r.strip() for r in responses):
            print(f"logitguard eval: warning: every {name} response is empty", file=sys.stderr)
        return responses

    return respond
