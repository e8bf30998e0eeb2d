#!/usr/bin/env bash
# Issue 4's GPU numbers in one device call (see benchmarks/README.md, "On the GPU machine"):
#
#   make gpu-wheels                                  # here, once: the peers' wheels in .whl/
#   device run: command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 600
#
#   bash benchmarks/gpu_session.sh --dry-run         # here, no GPU: every step in its CPU
#                                                    # smoke form (also SMOOTHALIGN_GPU_DRY=1)
#
# Steps, most important first, each under `timeout` and all within one time budget
# (SMOOTHALIGN_GPU_BUDGET seconds, default 550, so that the call ends inside the device's
# 600 s): env (wheels, nvidia-smi, versions) → lce (the kernel benchmark: β = 0.1, the
# target, then β = 0 at each shape; its errors against float32 are the GPU correctness
# check) → dpo (one DPO step, one process per row: ours fused, TRL + Liger, TRL, ours
# materialised) → pytest (the tests that run compiled only with CUDA: the Triton kernel
# tests and the CUDA policy tests). SMOOTHALIGN_GPU_STEPS="lce dpo" runs a subset; "tune"
# (opt-in) sweeps block sizes first, "diag" (opt-in) times the backward by part;
# SMOOTHALIGN_GPU_DPO picks DPO rows;
# SMOOTHALIGN_GPU_PROFILE=1 adds a torch.profiler table per DPO row (profile_<row>.txt).
#
# Everything lands in $OUT (else benchmarks/results/): session.log (all output),
# linear_cross_entropy.json, dpo_step.json and summary.md (Markdown for docs/results.md,
# rewritten after each step; the JSON after each row) — four files, so a step cut off
# still leaves what came before.
# Without CUDA and without --dry-run each GPU step says "skipped: no CUDA".
set -u
cd "$(dirname "$0")/.." || exit 1

DRY=${SMOOTHALIGN_GPU_DRY:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
BUDGET=${SMOOTHALIGN_GPU_BUDGET:-550}
STEPS=${SMOOTHALIGN_GPU_STEPS:-env lce dpo pytest}
SITE=${SMOOTHALIGN_GPU_SITE:-/tmp/site}
PY=${PYTHON:-python3}
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
LOG=$RES/session.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE=$!

if [ "$DRY" = 1 ]; then
    # the dry run still installs the carried wheels (to check them) but runs on this
    # machine's own packages: the GPU image's versions (datasets 5 wants httpx, say) would
    # shadow them
    SITE=${SMOOTHALIGN_GPU_SITE:-$RES/dry-site}
    export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONUNBUFFERED=1 PYTHONPATH="src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
START=$SECONDS
PROBLEMS=()
# the device's copy of .git can be older than the tree it runs (seen 2026-11-26): pass the
# commit in (SMOOTHALIGN_GPU_COMMIT=abc1234 bash benchmarks/gpu_session.sh); the sha256
# lines of the env step identify the code either way
COMMIT=${SMOOTHALIGN_GPU_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
[ -z "${SMOOTHALIGN_GPU_COMMIT:-}" ] && COMMIT="$COMMIT (the device's git HEAD, may be stale)"
DATE=$(date -u +%Y-%m-%dT%H:%MZ)

left() { echo $((BUDGET - (SECONDS - START))); }
banner() { printf '\n=== %s  [%ss used, %ss left of %ss]\n' "$*" $((SECONDS - START)) "$(left)" "$BUDGET"; }
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }

# run CAP CMD...: CMD under `timeout`, capped by what is left of the budget
run() {
    local cap=$1 t
    shift
    t=$(left)
    [ "$cap" -lt "$t" ] && t=$cap
    if [ "$t" -lt 20 ]; then
        echo "skipped: out of time budget ($(left)s left): $*"
        PROBLEMS+=("out of budget: $*")
        return 124
    fi
    echo "+ (timeout ${t}s) $*"
    timeout -k 10 "$t" "$@"
    local rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "!! timed out after ${t}s: $*"
    if [ $rc -ne 0 ]; then
        echo "!! exit $rc: $*"
        PROBLEMS+=("exit $rc: $*")
    fi
    return $rc
}

summarize() {
    "$PY" benchmarks/gpu_summary.py "$RES" --commit "$COMMIT" --date "$DATE" >"$RES/summary.md.tmp" \
        && mv "$RES/summary.md.tmp" "$RES/summary.md"
    rm -f "$RES/summary.md.tmp"
}

CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
MODE=gpu
if [ "$CUDA" != 1 ]; then
    if [ "$DRY" = 1 ]; then MODE=dry; else MODE=none; fi
fi
banner "smoothalign GPU session: mode $MODE, commit $COMMIT, $DATE, steps: $STEPS"

# ------------------------------------------------------------------------------------ env
if want env; then
    banner "env: carried wheels → $SITE"
    if ls .whl/*.whl >/dev/null 2>&1; then
        ls -l .whl/
        # one pip call for all; if it refuses (a wheel for another Python, say), one by one,
        # so that one bad wheel costs only its own package
        if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" .whl/*.whl; then
            for w in .whl/*.whl; do
                "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                    --upgrade --target "$SITE" "$w" || echo "!! not installed: $w"
            done
        fi
    else
        echo "no .whl/ here (make gpu-wheels, then carry [\".whl\"]): peers will be skipped"
    fi
    banner "env: device and versions"
    nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
    timeout -k 10 120 "$PY" - <<'EOF' || echo "!! version check failed or timed out"
import importlib, importlib.metadata as md, platform
print("python", platform.python_version())
for p in ("torch", "triton", "transformers", "accelerate", "peft", "huggingface_hub",
          "tokenizers", "numpy", "pandas", "pyarrow", "fsspec", "trl", "liger-kernel",
          "cut-cross-entropy", "datasets", "dill", "multiprocess"):
    try:
        print(f"{p:18} {md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p:18} -- not installed")
for m in ("trl", "liger_kernel.transformers", "cut_cross_entropy", "datasets", "smoothalign.kernels"):
    try:
        importlib.import_module(m)
        print(f"import {m}: ok")
    except Exception as ex:
        print(f"import {m}: FAILED {type(ex).__name__}: {ex}")
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda: {torch.cuda.get_device_name()} ({p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB), torch CUDA {torch.version.cuda}")
else:
    print("cuda: not available")
EOF
    # the code behind every number (kernels, trainers, CALS, lean layers, benchmarks): one
    # line a file, then one digest of them all, printed again in summary.md's log
    find src benchmarks -name '*.py' -o -name '*.sh' | sort | xargs sha256sum | sed 's/^/sha256 /'
    echo "tree-sha256 $(find src benchmarks -name '*.py' -o -name '*.sh' | sort | xargs sha256sum | sha256sum | cut -c1-64)"
    # registers, spills and atomic instructions of the kernels as this machine's Triton
    # compiles them (no GPU needed; seconds): the numbers differ between Triton versions
    if [ "$MODE" = gpu ]; then
        banner "env: the kernels compiled for sm_90 by this Triton (sm90_compile.py)"
        run 90 "$PY" benchmarks/sm90_compile.py --json "$RES/sm90_compile.json"
    fi
fi

# ------------------------------------------------------------- block-size sweep (opt-in)
# SMOOTHALIGN_GPU_STEPS="env tune lce ..." : time a few block configurations per shape and
# export the fastest (SMOOTHALIGN_LCE_FWD/BWD) for the steps after it; see lce_tune.py
if want tune; then
    banner "tune: Triton block sizes (lce_tune.py), the fastest exported for later steps"
    if [ "$MODE" = gpu ]; then
        if run 200 "$PY" benchmarks/lce_tune.py --json "$RES/lce_tune.json" \
            --export "$RES/lce_best.env"; then
            . "$RES/lce_best.env"
            echo "later steps use SMOOTHALIGN_LCE_FWD=$SMOOTHALIGN_LCE_FWD" \
                "SMOOTHALIGN_LCE_BWD=$SMOOTHALIGN_LCE_BWD" \
                "SMOOTHALIGN_LCE_FILTER_DIV=${SMOOTHALIGN_LCE_FILTER_DIV:-32 (default)}"
        fi
    else
        echo "skipped: needs CUDA"
    fi
fi

# ------------------------------------------------ backward time by part (opt-in: "diag")
if want diag; then
    banner "diag: the backward's time by part (lce_tune.py --diagnose)"
    if [ "$MODE" = gpu ]; then
        run 180 "$PY" benchmarks/lce_tune.py --diagnose --json "$RES/lce_diag.json"
    else
        echo "skipped: needs CUDA"
    fi
fi

# ------------------------------------------------------------------- kernel benchmark
if want lce; then
    banner "lce: linear cross-entropy benchmark (β = 0.1 first; errors vs float32)"
    case $MODE in
    gpu) run 270 "$PY" benchmarks/linear_cross_entropy.py --betas 0.1 0.0 \
        --json "$RES/linear_cross_entropy.json" ;;
    dry) run 120 "$PY" benchmarks/linear_cross_entropy.py --device cpu --small --betas 0.1 0.0 \
        --json "$RES/linear_cross_entropy.json" ;;
    *) echo "skipped: no CUDA (--dry-run runs the CPU smoke form)" ;;
    esac
    summarize
fi

# ------------------------------------------- the kernel on a real model's hidden states
# .gpu-inputs/smollm2.safetensors (benchmarks/real_inputs.py, `make gpu-inputs`, carried
# with carry [".whl", ".gpu-inputs"]): the random logits above are filtering's easy case
if want lce; then
    REAL=.gpu-inputs/smollm2.safetensors
    if [ -f "$REAL" ]; then
        banner "lce-real: the kernel benchmark on SmolLM2's hidden states and head"
        case $MODE in
        gpu) run 120 "$PY" benchmarks/linear_cross_entropy.py --inputs "$REAL" --betas 0.1 0.0 \
            --json "$RES/linear_cross_entropy_real.json" ;;
        dry) echo "skipped in the dry run: a full-size shape (tests/test_kernels_benchmark.py" \
            "runs --inputs on a tiny model's export)" ;;
        *) echo "skipped: no CUDA" ;;
        esac
        summarize
    else
        echo "no $REAL (make gpu-inputs, carry .gpu-inputs): no real-input kernel rows"
    fi
fi

# ----------------------------------------------------------------- DPO step benchmark
if want dpo; then
    banner "dpo: one DPO step, one process per row"
    if [ "$MODE" = none ]; then
        echo "skipped: no CUDA (--dry-run runs the CPU smoke form)"
    else
        rm -f "$RES/dpo_step.json"
        small=()
        [ "$MODE" = dry ] && small=(--device cpu --small)
        # SMOOTHALIGN_GPU_DPO: which rows (ours-fused ours-lean ours-lean-rc ours-lean-rc-exact ours-fused-nobm trl-liger trl-liger-ref trl
        # ours-materialised ours-gc trl-liger-gc; ours-lean: --lean-layers; ours-lean-rc: --lean-layers recompute; ours-lean-rc-exact: and
        # --grad-filter off (a trained model's cost: its head's backward skips few blocks); ours-lean-rc-dense: and the head's
        # backward as cuBLAS products (SMOOTHALIGN_LCE_DENSE=512); ours-lean-rc-nostrips: run F's
        # block rule (SMOOTHALIGN_LCE_STRIPS=0, _COMPENSATE=0); ours-fused-nobm: block_max off
        # backward; *-gc: with activation checkpointing, outside the issue's target)
        rows=()
        keys=()
        # KEY@S: the row on the model with its logits scaled by S (dpo_step.py --logit-scale;
        # @7: a softmax as peaked as a trained model's), e.g. "ours-lean-rc@7 trl-liger@7"
        scales=()
        for key in ${SMOOTHALIGN_GPU_DPO:-ours-fused ours-lean ours-lean-rc ours-fused-nobm trl-liger trl ours-materialised ours-gc trl-liger-gc}; do
            scale=1
            case $key in *@*) scale=${key#*@} ;; esac
            case ${key%@*} in
            ours-gc) rows+=("smoothalign (CALS, fused log-probs, checkpointing)") ;;
            trl-liger-gc) rows+=("TRL DPOTrainer + use_liger_kernel, checkpointing") ;;
            ours-fused) rows+=("smoothalign (CALS, fused log-probs)") ;;
            ours-fused-nobm) rows+=("smoothalign (CALS, fused log-probs, no block max)") ;;
            ours-lean) rows+=("smoothalign (CALS, fused log-probs, lean layers)") ;;
            ours-lean-rc) rows+=("smoothalign (CALS, fused log-probs, lean layers, recompute)") ;;
            ours-lean-rc-exact) rows+=("smoothalign (CALS, fused log-probs, lean layers, recompute, no filtering)") ;;
            ours-lean-rc-dense) rows+=("smoothalign (CALS, fused log-probs, lean layers, recompute, dense backward)") ;;
            ours-lean-rc-nostrips) rows+=("smoothalign (CALS, fused log-probs, lean layers, recompute, no strips)") ;;
            trl-liger) rows+=("TRL DPOTrainer + use_liger_kernel") ;;
            trl-liger-ref) rows+=("TRL DPOTrainer + use_liger_kernel, reference patched too") ;;
            trl) rows+=("TRL DPOTrainer") ;;
            ours-materialised) rows+=("smoothalign (CALS, materialised logits)") ;;
            *) echo "!! SMOOTHALIGN_GPU_DPO: unknown row $key"; continue ;;
            esac
            keys+=("$key")
            scales+=("$scale")
        done
        # SMOOTHALIGN_GPU_PROFILE=1: each row also writes profile_<row>.txt (3 more steps
        # under torch.profiler, after the timed ones: the kernels by device time)
        for i in "${!rows[@]}"; do
            prof=()
            [ "${SMOOTHALIGN_GPU_PROFILE:-0}" = 1 ] && prof=(--profile "$RES/profile_${keys[$i]/@/-x}.txt")
            run 90 "$PY" benchmarks/dpo_step.py "${small[@]}" --only "${rows[$i]}" --append \
                --json "$RES/dpo_step.json" --logit-scale "${scales[$i]}" "${prof[@]}"
        done
        summarize
    fi
fi

# --------------------------------------------------------------- CUDA-only tests
if want pytest; then
    banner "pytest: Triton kernel tests (compiled) and CUDA policy tests"
    case $MODE in
    gpu) run 240 "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=120 -rfEs \
        tests/test_kernels_triton.py \
        tests/test_policies.py \
        tests/test_lean_layers.py \
        tests/test_lean_layers_triton.py \
        "tests/test_sft_training.py::test_fused_kernel_trains_like_the_reference" \
        "tests/test_dpo_training.py::test_fused_logps_train_like_materialised_logits" \
        "tests/test_dpo_training.py::test_cuda_defaults_train_like_the_plain_path" ;;
    dry) run 120 "$PY" -m pytest -q -p no:cacheprovider -rfE tests/test_kernels_triton.py \
        tests/test_policies.py -k "not child_process" ;;
    *) echo "skipped: no CUDA (--dry-run runs the CPU smoke form)" ;;
    esac
fi

summarize
banner "done; files in $RES"
ls -l "$RES"
echo "---- summary.md"
cat "$RES/summary.md"
echo "---- ${#PROBLEMS[@]} step(s) with a problem (details in session.log)"
for x in "${PROBLEMS[@]}"; do echo "  $x"; done
exec >&- 2>&-
wait "$TEE" 2>/dev/null # the log is complete before the call returns
exit 0
