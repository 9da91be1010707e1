#!/usr/bin/env bash
# Measure the performance goals of docs/performance.md on one CUDA GPU, in one run of ~7 minutes.
#
# Once, on a machine with network access and the project's .venv (fills the git-ignored .gpu_data/
# folder: the CIFAR-10 JPEG tarball and pure-Python wheels of what the GPU image lacks:
# jsonargparse[signatures] for padam-fit, submitit for padam-sweep, pytorch_optimizer for the
# Yogi and AdaBound configs):
#
#     bash benchmarks/gpu.sh prepare
#
# Then on the GPU machine, from the repository root, with .gpu_data/ carried along:
#
#     bash benchmarks/gpu.sh            # OUT=dir keeps summary.txt and gpu-bench.log there
#
# Dry run on the CPU, to check the script (docs/performance.md, "Reproducing"):
#
#     GPU_SH_SMOKE=1 bash benchmarks/gpu.sh
#
# The dry run runs every row with the same arguments as the GPU run (bf16-mixed, 16-mixed,
# channels-last, torch.compile, cudnn.benchmark, the sweep's --runs-per-gpu ...): the argument
# lists are built once below, from size variables, and only the sizes differ (a tiny network, a
# few steps, a few batches). Only the CUDA tests skip there.
#
# Rows, in order of importance (a row that would pass the time budget is cut short or skipped,
# so the last ones go first): the environment; CUDA correctness (Padam on CUDA against the CPU
# for-loop, the batched crop/flip on CUDA against torchvision's per-image pipeline); the JPEGs
# decoded once; a padam-fit training run of ResNet-18 with Padam (epoch 0 compiles, the later
# ones are the steady epochs); a padam-fit step against a plain loop; ResNet-18 throughput by
# precision and compilation; a faithful released-code epoch (the 10x baseline); cudnn.benchmark on
# against off; sweep throughput with --runs-per-gpu 1, 2, 4; the data path against torchvision.
# Not in the default plan (GPU_SH_ROWS=all or a list adds them): WRN-16-4 and VGG-16 throughput
# (throughput_others) and the optimizer step (optimizer_step, which compiles Padam's fused step).
#
# Each row runs under `timeout`; its stdout is printed as it comes, and summary.txt is rewritten
# when each row ends, so a failed or timed-out row, or the whole command stopped from outside,
# loses nothing that ended before it. Output: stdout; with $OUT set, two files there:
# $OUT/summary.txt (every row's verdict, tables, ratios, goals, the epochs of the training run;
# printed again at the very end) and $OUT/gpu-bench.log (every row's stdout and stderr). Without
# $OUT both go to a temporary folder.
#
# Environment: PYTHON (the interpreter; default: the first of .venv/bin/python, python3 that has
# torch), CIFAR_TARBALL (the tarball), GPU_DATA_DIR (where to extract it; default
# ${TMPDIR:-/tmp}/padam-gpu-data), GPU_SH_WHEELS (default .gpu_data/wheels), GPU_SH_BUDGET_S (the
# whole run's seconds: 420 on a GPU, 2400 for the dry run), GPU_SH_ROWS (comma-separated rows to
# run instead of the default plan, or "all"; the environment row always runs), GPU_SH_SKIP
# (comma-separated rows to leave out), GPU_SH_SMOKE (1: CPU dry run).

set -uo pipefail # no -e: a failed row is reported and the next one runs

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)
WHEELS=${GPU_SH_WHEELS:-.gpu_data/wheels}
# The project's dependencies that the GPU image lacks (it has torch, torchvision, Lightning,
# torchmetrics, tensorboard, matplotlib, PyYAML, typing-extensions, cloudpickle, numpy):
# jsonargparse with its [signatures] extra (docstring_parser, typeshed_client), submitit and
# pytorch_optimizer. All pure Python; their own requirements are on the image.
WHEEL_PACKAGES=(jsonargparse docstring_parser typeshed_client submitit pytorch_optimizer)

# -- prepare: fill .gpu_data/ (run where there is network, not on the GPU machine) ---------------

if [[ ${1:-} == prepare ]]; then
    py=${PYTHON:-.venv/bin/python}
    mkdir -p .gpu_data "$WHEELS" || exit 1
    if [[ ! -f .gpu_data/cifar10-jpeg.tar.gz ]]; then
        for candidate in "${CIFAR_TARBALL:-}" ../shared/data/cifar10-jpeg.tar.gz \
            shared/data/cifar10-jpeg.tar.gz; do
            if [[ -n $candidate && -f $candidate ]]; then
                cp "$candidate" .gpu_data/cifar10-jpeg.tar.gz && echo "copied $candidate"
                break
            fi
        done
    fi
    [[ -f .gpu_data/cifar10-jpeg.tar.gz ]] ||
        echo "gpu.sh prepare: no CIFAR-10 JPEG tarball found (CIFAR_TARBALL=...); gpu.sh will use synthetic data"
    # The versions of the project's venv, as pure-Python wheels for the GPU image's Python 3.12.
    specs=()
    for name in "${WHEEL_PACKAGES[@]}"; do
        version=$("$py" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
        if [[ -z $version ]]; then
            echo "gpu.sh prepare: $name is not installed in $py (make install first, or PYTHON=...)"
            exit 1
        fi
        specs+=("$name==$version")
    done
    rm -f "$WHEELS"/*.whl # one version of each: two would stop the install
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
        "${specs[@]}" || exit 1
    for wheel in "$WHEELS"/*.whl; do
        echo "$wheel requires: $(unzip -p "$wheel" '*/METADATA' | sed -n 's/^Requires-Dist: //p' |
            grep -v 'extra ==' | tr '\n' ' ')"
    done
    du -sh .gpu_data
    exit 0
fi

# -- sizes: the only thing the dry run changes ---------------------------------------------------

SMOKE=${GPU_SH_SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    DEVICE=cpu
    ACCELERATOR=cpu
    BUDGET=${GPU_SH_BUDGET_S:-2400} # a small, busy CPU: compiling and starting padam-fit
    CAP_FACTOR=6                    # processes take minutes; each row's time cap, times this
    ARCH=wrn10_1                    # the network of every ResNet-18 row
    OTHER_NETWORKS=wrn10_1          # throughput_others
    BATCH=8
    ROUNDS=1
    WARMUP=1
    STEPS=1
    DATA_ROUNDS=1 DATA_BASELINE_BATCHES=2 DATA_BATCHES=5
    FIT_LIMITS=(--data.batch_size "$BATCH" --trainer.limit_train_batches 3
        --trainer.limit_val_batches 2)
    RELEASED_LIMITS=(--limit-batches 2)
    SWEEP_SIZES=(--batch-size "$BATCH" --batches 2)
    # The CUDA tests skip on the CPU; their CPU twin compiles the same fused Padam graph there.
    CORRECTNESS_K="(cuda and (not fused or fused-0.125-amsgrad)) or (float64_paths and fused-0.125-amsgrad)"
else
    DEVICE=cuda
    ACCELERATOR=gpu
    BUDGET=${GPU_SH_BUDGET_S:-420}
    CAP_FACTOR=1
    ARCH=resnet18
    OTHER_NETWORKS=wrn16_4,vgg16
    BATCH=128
    ROUNDS=2
    WARMUP=5
    STEPS=20
    DATA_ROUNDS=3 DATA_BASELINE_BATCHES=20 DATA_BATCHES=200
    FIT_LIMITS=()
    RELEASED_LIMITS=()
    SWEEP_SIZES=(--batch-size "$BATCH" --batches 200)
    CORRECTNESS_K="cuda and (not fused or fused-0.125-amsgrad)"
fi
FIT_EPOCHS=3 # epoch 0 compiles; epochs 1 and 2 are the steady ones
# padam-fit's GPU defaults, spelled out so that the dry run runs them too: bf16-mixed,
# channels-last, compiled, and cudnn.benchmark as PadamCLI sets it (benchmarks/_timing.py).
CUDNN_BENCHMARK=$(sed -n 's/^CUDNN_BENCHMARK = \(True\|False\)$/\1/p' benchmarks/_timing.py |
    tr '[:upper:]' '[:lower:]')
[[ -n $CUDNN_BENCHMARK ]] || CUDNN_BENCHMARK=true
GPU_SETTINGS=(--trainer.precision bf16-mixed --model.channels_last true --model.compile true
    --trainer.benchmark "$CUDNN_BENCHMARK")
DEFAULT_ROWS=(environment cuda_correctness decode_jpegs padam_fit_resnet18 training_step
    throughput released_epoch cudnn_benchmark sweep_throughput data_path)
EXTRA_ROWS=(throughput_others optimizer_step)

KILL_S=10    # timeout --kill-after of a row (padam-fit saves a checkpoint on the way out)
REPORT_S=10  # the summary at the end
MIN_STEP_S=8 # a row with less time than this left is skipped
START=$SECONDS

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX") # per-row logs, read by the report
if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    RESULT_DIR=$OUT
else
    RESULT_DIR=$WORK
fi
SUMMARY_FILE="$RESULT_DIR/summary.txt"
LOG="$RESULT_DIR/gpu-bench.log"
: >"$SUMMARY_FILE"
: >"$LOG"
: >"$WORK/notes.txt"
: >"$WORK/steps.tsv"

now() { echo $((SECONDS - START)); }

say() { # a line to stdout, the log and the summary's notes
    echo "$*"
    echo "$*" >>"$LOG"
    echo "$*" >>"$WORK/notes.txt"
}

summarise() { # rewrite summary.txt from the rows so far (cheap: no torch import)
    if [[ -n ${PY:-} ]] && timeout 20 "$PY" benchmarks/_gpu_report.py "$WORK" >"$WORK/report.txt" 2>&1; then
        cp "$WORK/report.txt" "$SUMMARY_FILE"
    else
        { cat "$WORK/notes.txt" "$WORK/steps.tsv" "$WORK/report.txt"; } >"$SUMMARY_FILE" 2>/dev/null
    fi
}

die() {
    say "gpu.sh: $*"
    say "gpu.sh: stopped after $(now) s; log: $LOG"
    summarise
    exit 1
}

# wanted NAME: whether the row is in this run's plan (GPU_SH_ROWS, else the default plan) and
# not in GPU_SH_SKIP.
wanted() {
    local name=$1 rows
    [[ ,${GPU_SH_SKIP:-}, == *",$name,"* ]] && return 1
    [[ $name == environment ]] && return 0
    rows=${GPU_SH_ROWS:-${DEFAULT_ROWS[*]}}
    rows=",${rows// /,},"
    [[ $rows == *",all,"* || $rows == *",$name,"* ]]
}

# row NAME CAP COMMAND...: run COMMAND under timeout, at most CAP * CAP_FACTOR seconds and not
# past the budget; its stdout is printed as it comes and kept in $WORK/NAME.out, its stderr in
# $WORK/NAME.err; both go to the log, and summary.txt is rewritten after it.
row() {
    local name=$1 cap=$(($2 * CAP_FACTOR))
    shift 2
    if ! wanted "$name"; then
        LAST_STATUS=0
        echo "== $name: not in this run's plan (GPU_SH_ROWS / GPU_SH_SKIP)" >>"$LOG"
        return 0
    fi
    local left=$((BUDGET - REPORT_S - KILL_S - $(now)))
    local limit=$((cap < left ? cap : left))
    if ((limit < MIN_STEP_S)); then
        LAST_STATUS=124
        say "== $name: SKIPPED (time budget spent at $(now) s)"
        printf '%s\tSKIPPED: out of time\n' "$name" >>"$WORK/steps.tsv"
        summarise
        return 0
    fi
    local shown="$*"
    shown=${shown//$'\n'/ }
    ((${#shown} > 240)) && shown="${shown:0:240} ..."
    echo ""
    echo "== $name (at $(now) s, limit ${limit} s): $shown" | tee -a "$LOG"
    local began=$SECONDS status
    timeout --kill-after="$KILL_S" "$limit" "$@" 2>"$WORK/$name.err" </dev/null |
        tee "$WORK/$name.out" | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    LAST_STATUS=$status
    local took=$((SECONDS - began)) verdict
    case $status in
        0) verdict="ok" ;;
        124 | 137) verdict="TIMED OUT at ${limit} s" ;;
        *) verdict="FAILED (exit $status)" ;;
    esac
    {
        echo "-- stderr of $name"
        cat "$WORK/$name.err"
        echo "== $name: $verdict after ${took} s"
    } >>"$LOG"
    ((status != 0)) && tail -n 15 "$WORK/$name.err"
    echo "== $name: $verdict after ${took} s"
    printf '%s\t%s, %s s\n' "$name" "$verdict" "$took" >>"$WORK/steps.tsv"
    summarise
    return 0
}

# -- 1. Python -----------------------------------------------------------------------------------

PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    [[ -z $candidate ]] && continue
    command -v "$candidate" >/dev/null 2>&1 || [[ -x $candidate ]] || continue
    if "$candidate" -c "import torch" >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
[[ -n $PY ]] || die "no Python with torch found (tried \$PYTHON, .venv/bin/python, python3, python)."

# The carried wheels, first on the path. No index is reachable on the GPU machine, so nothing
# else is installed: the rest must be in $PY already.
SITE=""
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE="$WORK/site"
    timeout 60 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
        --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1 ||
        die "installing the wheels of $WHEELS into $SITE failed (see $LOG)."
elif ! "$PY" -c "import jsonargparse, docstring_parser, typeshed_client, submitit, pytorch_optimizer" \
    >/dev/null 2>&1; then
    die "$PY lacks jsonargparse[signatures] (padam-fit), submitit (padam-sweep) or pytorch_optimizer, and" \
        "$WHEELS holds no wheels. Run 'bash benchmarks/gpu.sh prepare' where there is network" \
        "(it downloads them into .gpu_data/wheels), then carry .gpu_data along."
fi
# The wheels first; then the tree itself, not an installed copy; benchmarks/ holds the helpers.
export PYTHONPATH="${SITE:+$SITE:}$REPO:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

PLAN=${GPU_SH_ROWS:-${DEFAULT_ROWS[*]}}
say "gpu.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), Python $PY ($(command -v "$PY" || echo "$PY")), smoke=$SMOKE"
say "gpu.sh: budget ${BUDGET} s; rows: ${PLAN// /,}${GPU_SH_SKIP:+; skipping $GPU_SH_SKIP}" \
    "(not in the default plan: ${EXTRA_ROWS[*]})"

row environment 45 "$PY" -c "
import os, platform
import jsonargparse, lightning, pytorch_optimizer, submitit, torch, torchmetrics, torchvision
from lightning.pytorch.cli import _JSONARGPARSE_SIGNATURES_AVAILABLE
assert _JSONARGPARSE_SIGNATURES_AVAILABLE, 'Lightning does not see jsonargparse[signatures]'
import padam_lightning.cli  # padam-fit's CLI, with all it imports
import padam_lightning.experiments.sweep  # padam-sweep, with submitit
print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
      f'torchvision {torchvision.__version__}, lightning {lightning.__version__}, '
      f'torchmetrics {torchmetrics.__version__}, {os.cpu_count()} CPUs')
print(f'jsonargparse {jsonargparse.__version__} from {os.path.dirname(jsonargparse.__file__)}; '
      f'submitit {submitit.__version__}; pytorch_optimizer from {os.path.dirname(pytorch_optimizer.__file__)}')
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f'GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, '
          f'bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} device(s)')
else:
    print('GPU: none visible to torch')
try:
    from torch.utils._triton import has_triton
    print(f'triton available: {has_triton()}')
except ImportError:
    print('triton available: unknown')
"
((LAST_STATUS == 0)) ||
    die "the environment check failed: padam-fit's or padam-sweep's imports fail (above)."
if [[ $DEVICE == cuda ]] && ! grep -q "^GPU: [^n]" "$WORK/environment.out" 2>/dev/null; then
    die "torch sees no CUDA device; nothing to measure (GPU_SH_SMOKE=1 runs on the CPU)."
fi
command -v nvidia-smi >/dev/null 2>&1 && timeout 10 nvidia-smi -L 2>&1 | tee -a "$LOG"

# Padam on CUDA against the CPU for-loop, every state tensor (the multi-tensor path for every
# configuration, and one compiled fused graph: the others compile for minutes); the batched
# crop/flip on CUDA against the per-image PIL pipeline. They skip on the CPU; pytest's exit
# status 5 (nothing selected) fails the row there too.
row cuda_correctness 120 "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/optim/test_padam_paths.py tests/data/test_augment_cuda.py \
    -k "$CORRECTNESS_K"

# -- 2. Data -------------------------------------------------------------------------------------

TARBALL=""
for candidate in "${CIFAR_TARBALL:-}" .gpu_data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz \
    ../shared/data/cifar10-jpeg.tar.gz; do
    if [[ -n $candidate && -f $candidate ]]; then
        TARBALL=$candidate
        break
    fi
done
DATA_ROOT="${GPU_DATA_DIR:-${TMPDIR:-/tmp}/padam-gpu-data}"
DATA_DIR="$DATA_ROOT/cifar10-jpeg"
if [[ -n $TARBALL ]]; then
    say "gpu.sh: CIFAR-10 JPEGs from $TARBALL -> $DATA_DIR"
    if [[ ! -d $DATA_DIR/train || ! -d $DATA_DIR/test ]]; then
        mkdir -p "$DATA_DIR"
        timeout 120 tar -xzf "$TARBALL" -C "$DATA_DIR" || say "gpu.sh: extracting failed"
    fi
    row decode_jpegs 60 "$PY" -c "
import time
from padam_lightning.data import CIFARDataModule
start = time.perf_counter()
data = CIFARDataModule(dataset='imagefolder', data_dir='$DATA_DIR')
data.prepare_data()
data.setup('fit')
print(f'{len(data.split(\"train\")):,} train + {len(data.split(\"test\")):,} test images, '
      f'{data.num_classes} classes, decoded or loaded in {time.perf_counter() - start:.1f} s')
"
    DATA_ARGS=(--data-dir "$DATA_DIR")
    FIT_DATA=(--data.dataset imagefolder --data.data_dir "$DATA_DIR")
else
    say "gpu.sh: NO CIFAR-10 TARBALL FOUND (bash benchmarks/gpu.sh prepare puts it in .gpu_data/); using synthetic data"
    DATA_ARGS=()
    FIT_DATA=(--data.dataset synthetic --data.synthetic_train_size 50000
        --data.synthetic_test_size 10000)
fi

# -- 3. Training ResNet-18 with Padam through padam-fit ------------------------------------------

# FIT_EPOCHS epochs with EpochReport printing each epoch as it ends: epoch 0 pays for compilation
# (no sanity validation, so the evaluation graph compiles inside it too), the later ones are the
# steady epochs of the goal. A row stopped by its cap keeps the epochs printed before.
row padam_fit_resnet18 210 "$PY" -m padam_lightning.cli fit \
    --config configs/resnet18.yaml "${FIT_DATA[@]}" --model.arch "$ARCH" \
    --trainer.accelerator "$ACCELERATOR" "${GPU_SETTINGS[@]}" \
    --trainer.max_epochs "$FIT_EPOCHS" \
    --trainer.enable_progress_bar false \
    --trainer.num_sanity_val_steps 0 \
    --trainer.logger.init_args.save_dir "$DATA_ROOT/runs" \
    --trainer.callbacks+=_timing.EpochReport \
    ${FIT_LIMITS[@]+"${FIT_LIMITS[@]}"}

# -- 4. Measurements ------------------------------------------------------------------------------

row training_step 60 "$PY" benchmarks/training_step.py --device "$DEVICE" --arch "$ARCH" \
    --batch-size "$BATCH" --precision bf16-mixed --channels-last \
    --rounds "$ROUNDS" --warmup "$WARMUP" --steps "$STEPS"
row throughput 100 "$PY" benchmarks/throughput.py --device "$DEVICE" --networks "$ARCH" \
    --batch-size "$BATCH" --steps "$STEPS" --rounds "$ROUNDS" \
    --modes 32-true,bf16-mixed,bf16-mixed+cl,16-mixed+cl,bf16-mixed+cl+compile
row released_epoch 60 "$PY" benchmarks/epoch_time.py --device "$DEVICE" \
    ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --arch "$ARCH" --epochs 2 --skip-padam-fit \
    ${RELEASED_LIMITS[@]+"${RELEASED_LIMITS[@]}"}
row cudnn_benchmark 50 "$PY" benchmarks/throughput.py --device "$DEVICE" --networks "$ARCH" \
    --batch-size "$BATCH" --steps "$STEPS" --rounds "$ROUNDS" --modes bf16-mixed+cl \
    --cudnn-benchmark both
row sweep_throughput 90 "$PY" benchmarks/sweep_throughput.py --device "$DEVICE" \
    --arch "$ARCH" --runs-per-gpu 1,2,4 --epochs 2 "${SWEEP_SIZES[@]}" \
    ${DATA_ARGS[@]+"${DATA_ARGS[@]}"}
row data_path 45 "$PY" benchmarks/data_path.py --device "$DEVICE" \
    ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --rounds "$DATA_ROUNDS" \
    --baseline-batches "$DATA_BASELINE_BATCHES" --batches "$DATA_BATCHES"
# Not in the default plan.
row throughput_others 60 "$PY" benchmarks/throughput.py --device "$DEVICE" \
    --networks "$OTHER_NETWORKS" --batch-size "$BATCH" --steps "$STEPS" --rounds "$ROUNDS" \
    --modes 32-true,bf16-mixed+cl
row optimizer_step 60 "$PY" benchmarks/optimizer_step.py --devices "$DEVICE" --rounds "$ROUNDS" \
    --steps "$STEPS"

# -- Summary -------------------------------------------------------------------------------------

say "== gpu.sh done in $(now) s (budget ${BUDGET} s); summary $SUMMARY_FILE, log $LOG"
RERUN=$(awk -F'\t' '$2 !~ /^ok/ {print $1}' "$WORK/steps.tsv" | paste -sd, -)
[[ -n $RERUN ]] &&
    say "gpu.sh: to rerun the rows that did not pass: GPU_SH_ROWS=$RERUN GPU_SH_BUDGET_S=240 bash benchmarks/gpu.sh"
summarise
echo ""
echo "==================== summary.txt ===================="
cat "$SUMMARY_FILE"
exit 0
