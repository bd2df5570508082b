#!/usr/bin/env bash
# The benchmark rows that need a GPU, as run on one H200 (merge what it writes into benchmarks/results/).
#
# Run: bash benchmarks/gpu_session.sh overhead OUT            # STR step time and memory at Llama-1B and -8B shapes
#      bash benchmarks/gpu_session.sh rows OUT WORK DATA_ROOT [STEPS]  # real_smollm2.py: 3 seeds of the main rows,
#                                                                     # 1 of peers, at STEPS (default 40) steps
#      bash benchmarks/gpu_session.sh aligned OUT DATA_ROOT [SEED_CACHE]  # aligned_sweep.py: 8 recipes, rows on 3
#
# "overhead" writes OUT/str_overhead.json after every measurement (random-weight models, bf16; the Llama-1B shape
# took 2.5 minutes, the 8B shape about 40 s a variant). "rows" first prepares WORK (real_smollm2.py --prepare-only:
# about 11 minutes on 2 CPU cores, 1 on the GPU; skipped when WORK is prepared), then writes
# OUT/real_smollm2_main_STEPSsteps.json and OUT/real_smollm2_peers_STEPSsteps.json after every run (the two
# invocations share the GPU, 10 runs at a time: 19 of the 34 runs took 6 minutes; the step times of runs that share
# a GPU are not a cost measurement). "aligned" builds the safety adapter's recipe variants 8 at a time (about 4
# minutes) and fine-tunes the best 3 (about 4 more); it writes OUT/aligned_sweep.json and keeps each variant's
# adapter in OUT/aligned-work. Resume any of them with the same command.
set -euo pipefail
cd "$(dirname "$0")"
what=$1 out=$2
mkdir -p "$out"
case $what in
overhead)
    python str_overhead.py --device cuda --dtype bfloat16 --preset llama-1b --repeats 2 \
        --out "$out/str_overhead.json"
    python str_overhead.py --device cuda --dtype bfloat16 --preset llama-8b --repeats 1 \
        --variants sft "str anchors (auto pass)" "str anchors every 4th step" --out "$out/str_overhead.json"
    ;;
rows)
    work=$3 data=$4 steps=${5:-40}
    python real_smollm2.py --work "$work" --data-root "$data" --prepare-only  # once, before two invocations share it
    main=(sft "str (anchors, default)" "selection (refusal score ≥ 0.1)" "selection (refusal score ≥ 0.1) + str")
    peers=("str (anchors from many phrasings)" "PACT-style restricted KL (λ=1, T=2)" "SafeInstr (+3% refusals)"
        "selection (drop 10%, gradient norm)" "selection (gradient norm) + str")
    python real_smollm2.py --work "$work" --data-root "$data" --seeds 0 1 2 --jobs 6 --resume --steps "$steps" \
        --methods "${main[@]}" --out "$out/real_smollm2_main_${steps}steps.json" >"$out/rows_main.log" 2>&1 &
    python real_smollm2.py --work "$work" --data-root "$data" --seeds 0 --jobs 4 --resume --steps "$steps" \
        --methods "${peers[@]}" --out "$out/real_smollm2_peers_${steps}steps.json" >"$out/rows_peers.log" 2>&1 &
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
