#!/usr/bin/env bash
# Measure the performance goals of docs/performance.md on one CUDA GPU, in one run of < 8 minutes.
#
# Once, on a machine with network access and the project's .venv (fills the git-ignored .gpu_data/
# folder: the CIFAR-10 JPEG tarball and the pure-Python wheels of jsonargparse[signatures], which
# an offline GPU machine's Python may lack):
#
#     bash benchmarks/gpu.sh prepare
#
# Then on the GPU machine, from the repository root, with .gpu_data/ carried along:
#
#     bash benchmarks/gpu.sh            # OUT=dir keeps summary.txt and gpu-bench.log there
#
# Dry run of every step on the CPU with tiny sizes (a few minutes), to check the script:
#
#     GPU_SH_SMOKE=1 bash benchmarks/gpu.sh
#
# Steps, each under `timeout` (one failing step does not stop the others): the wheels installed
# into a temporary folder put first on PYTHONPATH; the environment; Padam on CUDA against
# the CPU for-loop (tests/optim, a few seconds); the JPEGs (extracted, decoded
# once); the data path against torchvision; a padam-fit step against a plain loop; ResNet-18
# throughput by precision and compilation; a faithful released-code epoch (the 10x baseline);
# WRN-16-4 and VGG-16 throughput; the optimizer step; then a padam-fit training run of ResNet-18
# with Padam on the JPEGs under a fixed --trainer.max_time (no sanity validation), printing epoch
# times and test error per epoch. The whole run is bounded by GPU_SH_BUDGET_S (470 s): the
# measurements must end by a deadline that keeps GPU_SH_TRAIN_S (120 s) of training free; a step
# that would run past it is cut short or skipped. The training then gets whatever the budget has
# left, at least GPU_SH_TRAIN_S and at most GPU_SH_TRAIN_MAX_S (300 s, the issue's five minutes):
# with the measurements (about four minutes) the full five minutes do not fit in eight.
#
# Output: stdout; with $OUT set, only two files there: $OUT/summary.txt (every ratio, the epoch
# times and the test error per epoch; also printed at the very end of stdout) and
# $OUT/gpu-bench.log (every step's stdout and stderr). Without $OUT both go to a temporary folder.
#
# Environment: PYTHON (the interpreter; default: the first of .venv/bin/python, python3 that has
# torch), CIFAR_TARBALL (the tarball), GPU_DATA_DIR (where to extract it; default
# ${TMPDIR:-/tmp}/padam-gpu-data), GPU_SH_WHEELS (default .gpu_data/wheels), GPU_SH_BUDGET_S,
# GPU_SH_TRAIN_S, GPU_SH_TRAIN_MAX_S (seconds, above), GPU_SH_SKIP (comma-separated step names
# to leave out, e.g. GPU_SH_SKIP=optimizer_step,throughput_others), GPU_SH_SMOKE (1: CPU dry run).

set -uo pipefail # no -e: a failed step is reported and the next one runs

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)
WHEELS=${GPU_SH_WHEELS:-.gpu_data/wheels}
# The extra packages padam_lightning.cli needs beyond torch and Lightning: jsonargparse with its
# [signatures] extra. Their own requirements (PyYAML, typing-extensions) are on the GPU image.
WHEEL_PACKAGES=(jsonargparse docstring_parser typeshed_client)

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
    # The versions of the project's venv, pure-Python wheels for the GPU image's Python 3.12.
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

# -- budget --------------------------------------------------------------------------------------

START=$SECONDS
SMOKE=${GPU_SH_SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    DEVICE=cpu
    BUDGET=${GPU_SH_BUDGET_S:-900} # a small, busy CPU
    TRAIN_MIN_S=${GPU_SH_TRAIN_S:-20}
    TRAIN_MAX_S=${GPU_SH_TRAIN_MAX_S:-30}
    TRAIN_SLACK=150 # padam-fit's start-up and wind-down around max_time
else
    DEVICE=cuda
    BUDGET=${GPU_SH_BUDGET_S:-470}
    TRAIN_MIN_S=${GPU_SH_TRAIN_S:-120}
    TRAIN_MAX_S=${GPU_SH_TRAIN_MAX_S:-300}
    TRAIN_SLACK=40
fi
KILL_S=5        # timeout --kill-after of a measurement step
TRAIN_KILL_S=10 # ... of the training run (it saves a checkpoint on the way out)
REPORT_S=15     # the summary at the end
# Every step before the training ends (killed at worst) by this many seconds after the start.
MEASURE_END=$((BUDGET - REPORT_S - TRAIN_KILL_S - TRAIN_SLACK - TRAIN_MIN_S))
MIN_STEP_S=15 # a step with less time than this left is skipped

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX") # per-step logs, read by the report
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

now() { echo $((SECONDS - START)); }

say() { # a line to stdout, the summary and the log
    echo "$*"
    echo "$*" >>"$SUMMARY_FILE"
    echo "$*" >>"$LOG"
}

die() {
    say "gpu.sh: $*"
    say "gpu.sh: stopped after $(now) s; log: $LOG"
    exit 1
}

# limit_for CAP [END]: the seconds a command may run so that, killed at worst, it ends by END
# (default MEASURE_END); at most CAP.
limit_for() {
    local cap=$1 end=${2:-$MEASURE_END} left
    left=$((end - $(now) - ${STEP_KILL:-$KILL_S}))
    ((left < cap)) && cap=$left
    ((cap < 1)) && cap=1
    echo "$cap"
}

# step NAME CAP COMMAND...: run COMMAND under timeout, at most CAP seconds and not past
# MEASURE_END (STEP_END overrides it); stdout to $WORK/NAME.out, stderr to $WORK/NAME.err, both
# then appended to the log; the stdout is printed.
step() {
    local name=$1 cap=$2
    shift 2
    local limit kill=${STEP_KILL:-$KILL_S}
    if [[ ,${GPU_SH_SKIP:-}, == *",$name,"* ]]; then
        LAST_STATUS=0
        echo "== $name: skipped (GPU_SH_SKIP)" | tee -a "$LOG"
        echo "$name	skipped (GPU_SH_SKIP)" >>"$WORK/steps.tsv"
        return 0
    fi
    limit=$(limit_for "$cap" "${STEP_END:-$MEASURE_END}")
    if ((limit < MIN_STEP_S)); then
        LAST_STATUS=124
        echo "== $name: SKIPPED (time budget spent at $(now) s)" | tee -a "$LOG"
        echo "$name	SKIPPED: out of time" >>"$WORK/steps.tsv"
        return 0
    fi
    local shown="$*"
    shown=${shown//$'\n'/ }
    ((${#shown} > 200)) && shown="${shown:0:200} ..."
    echo ""
    echo "== $name (at $(now) s, limit ${limit} s): $shown" | tee -a "$LOG"
    local began=$SECONDS status
    timeout --kill-after="$kill" "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    status=$?
    LAST_STATUS=$status
    local took=$((SECONDS - began)) verdict
    case $status in
        0) verdict="ok" ;;
        124 | 137) verdict="TIMED OUT at ${limit} s" ;;
        *) verdict="FAILED (exit $status)" ;;
    esac
    {
        echo "-- stdout"
        cat "$WORK/$name.out"
        echo "-- stderr"
        cat "$WORK/$name.err"
        echo "== $name: $verdict after ${took} s"
    } >>"$LOG"
    cat "$WORK/$name.out"
    ((status != 0)) && tail -n 15 "$WORK/$name.err"
    echo "== $name: $verdict after ${took} s"
    echo "$name	$verdict, ${took} s" >>"$WORK/steps.tsv"
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

# jsonargparse[signatures] from the carried wheels, first on the path. No index is reachable on
# the GPU machine, so nothing else is installed: the rest must be in $PY already.
SITE=""
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE="$WORK/site"
    timeout 60 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
        --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1 ||
        die "installing the wheels of $WHEELS into $SITE failed (see $LOG)."
elif ! "$PY" -c "import jsonargparse, docstring_parser, typeshed_client" >/dev/null 2>&1; then
    die "$PY lacks jsonargparse[signatures] (padam-fit's CLI) and $WHEELS holds no wheels." \
        "Run 'bash benchmarks/gpu.sh prepare' where there is network (it downloads them into" \
        ".gpu_data/wheels), then carry .gpu_data along."
fi
# The wheels first; then the tree itself, not an installed copy; benchmarks/ holds the helpers.
export PYTHONPATH="${SITE:+$SITE:}$REPO:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

say "gpu.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), Python $PY ($(command -v "$PY" || echo "$PY")), smoke=$SMOKE"
say "gpu.sh: budget ${BUDGET} s; measurements end by ${MEASURE_END} s; training ${TRAIN_MIN_S}..${TRAIN_MAX_S} s"

step environment 45 "$PY" -c "
import os, platform
import jsonargparse, lightning, torch, torchmetrics, torchvision
from lightning.pytorch.cli import _JSONARGPARSE_SIGNATURES_AVAILABLE
assert _JSONARGPARSE_SIGNATURES_AVAILABLE, 'Lightning does not see jsonargparse[signatures]'
import padam_lightning.cli  # padam-fit's CLI, with all it imports
print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
      f'torchvision {torchvision.__version__}, lightning {lightning.__version__}, '
      f'torchmetrics {torchmetrics.__version__}, {os.cpu_count()} CPUs')
print(f'jsonargparse {jsonargparse.__version__} from {os.path.dirname(jsonargparse.__file__)}')
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
    die "the environment check failed: padam_lightning.cli or its dependencies do not import (above)."
if [[ $DEVICE == cuda ]] && ! grep -q "^GPU: [^n]" "$WORK/environment.out" 2>/dev/null; then
    die "torch sees no CUDA device; nothing to measure (GPU_SH_SMOKE=1 runs on the CPU)."
fi
command -v nvidia-smi >/dev/null 2>&1 && timeout 10 nvidia-smi -L 2>&1 | tee -a "$LOG"

# Padam on CUDA against the CPU for-loop, every state tensor: the multi-tensor path (the GPU
# default) for every configuration, and one compiled (fused) graph.
CUDA_TESTS=tests/optim/test_padam_paths.py::test_cuda_paths_match_the_cpu_for_loop
step cuda_correctness 90 "$PY" -m pytest -q -p no:cacheprovider "$CUDA_TESTS" \
    -k "not fused or fused-0.125-amsgrad"

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
        timeout "$(limit_for 60)" tar -xzf "$TARBALL" -C "$DATA_DIR" || say "gpu.sh: extracting failed"
    fi
    step decode_jpegs "$([[ $SMOKE == 1 ]] && echo 240 || echo 60)" "$PY" -c "
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

# -- 3. Measurements (in order of importance: the later ones are cut first) ----------------------

if [[ $SMOKE == 1 ]]; then
    step data_path 150 "$PY" benchmarks/data_path.py --device cpu ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} \
        --rounds 1 --baseline-batches 2 --batches 5
    step training_step 150 "$PY" benchmarks/training_step.py --device cpu --arch wrn10_1 \
        --batch-size 16 --rounds 1 --warmup 1 --steps 2
    step throughput 150 "$PY" benchmarks/throughput.py --device cpu --networks wrn10_1 \
        --batch-size 8 --steps 1 --rounds 1 --modes 32-true,bf16-mixed+cl
    step released_epoch 150 "$PY" benchmarks/epoch_time.py --device cpu \
        ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --arch wrn10_1 --epochs 1 --limit-batches 2 --skip-padam-fit
    step throughput_others 90 "$PY" benchmarks/throughput.py --device cpu --networks wrn10_1 \
        --batch-size 8 --steps 1 --rounds 1 --modes 32-true
    step optimizer_step 150 "$PY" benchmarks/optimizer_step.py --rounds 1 --steps 1
else
    step data_path 60 "$PY" benchmarks/data_path.py --device cuda ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} \
        --rounds 3
    step training_step 75 "$PY" benchmarks/training_step.py --device cuda --arch resnet18 \
        --rounds 2 --warmup 5 --steps 30
    # Compiling ResNet-18 here also fills Inductor's on-disk cache for the training run.
    step throughput 120 "$PY" benchmarks/throughput.py --device cuda --batch-size 128 \
        --steps 20 --rounds 2 --networks resnet18 \
        --modes 32-true,bf16-mixed,bf16-mixed+cl,16-mixed+cl,bf16-mixed+cl+compile
    step released_epoch 75 "$PY" benchmarks/epoch_time.py --device cuda \
        ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --arch resnet18 --epochs 2 --skip-padam-fit
    step throughput_others 60 "$PY" benchmarks/throughput.py --device cuda --batch-size 128 \
        --steps 20 --rounds 2 --networks wrn16_4,vgg16 --modes 32-true,bf16-mixed+cl
    step optimizer_step 60 "$PY" benchmarks/optimizer_step.py --rounds 2 --steps 3
fi

# -- 4. Training ResNet-18 with Padam through padam-fit ------------------------------------------

# The training gets what the budget has left (at least TRAIN_MIN_S, reserved above), at most
# TRAIN_MAX_S, as a fixed max_time. The timer starts with the first training batch (compilation
# included); num_sanity_val_steps 0 keeps the evaluation graph's compilation inside it too.
TRAIN_END=$((BUDGET - REPORT_S))
TRAIN_S=$((TRAIN_END - $(now) - TRAIN_KILL_S - TRAIN_SLACK))
((TRAIN_S > TRAIN_MAX_S)) && TRAIN_S=$TRAIN_MAX_S
printf -v MAX_TIME "00:00:%02d:%02d" $((TRAIN_S / 60)) $((TRAIN_S % 60))
say "gpu.sh: training for max_time $MAX_TIME (${TRAIN_S} s) from $(now) s"
RUN_DIR="$DATA_ROOT/runs"
if [[ $SMOKE == 1 ]]; then
    TRAIN_ARGS=(--trainer.accelerator cpu --model.arch wrn10_1 --data.batch_size 16
        --trainer.max_epochs 2 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2)
else
    TRAIN_ARGS=(--trainer.accelerator gpu)
fi
STEP_END=$TRAIN_END STEP_KILL=$TRAIN_KILL_S step padam_fit_resnet18 $((TRAIN_S + TRAIN_SLACK)) \
    "$PY" -m padam_lightning.cli fit \
    --config configs/resnet18.yaml "${FIT_DATA[@]}" \
    --model.channels_last null --model.compile null \
    --trainer.enable_progress_bar false \
    --trainer.num_sanity_val_steps 0 \
    --trainer.max_time "$MAX_TIME" \
    --trainer.logger.init_args.save_dir "$RUN_DIR" \
    --trainer.callbacks+=_timing.EpochReport \
    "${TRAIN_ARGS[@]}"

# -- Summary -------------------------------------------------------------------------------------

say ""
timeout 10 "$PY" benchmarks/_gpu_report.py "$WORK" >"$WORK/report.txt" 2>&1 ||
    echo "(the report failed; the per-step output is in $LOG)" >>"$WORK/report.txt"
cat "$WORK/report.txt" >>"$SUMMARY_FILE"
say "== gpu.sh done in $(now) s (budget ${BUDGET} s); summary $SUMMARY_FILE, log $LOG"
echo ""
echo "==================== summary.txt ===================="
cat "$SUMMARY_FILE"
exit 0
