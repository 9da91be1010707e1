#!/usr/bin/env bash
# Measure the performance goals of docs/performance.md on one CUDA GPU, in one run of < 8 minutes.
#
# On the GPU machine, from the repository root, with the CIFAR-10 JPEG tarball carried along in
# the git-ignored .gpu_data/ folder (or at shared/data/ or ../shared/data/):
#
#     bash benchmarks/gpu.sh
#
# Dry run of every step on the CPU with tiny sizes (about two minutes), to check the script:
#
#     GPU_SH_SMOKE=1 bash benchmarks/gpu.sh
#
# Steps (each under `timeout`, skipped when the time budget is spent; one failing step does not
# stop the others): the Python environment; the JPEGs (extracted, decoded once); the data path
# against torchvision; a padam-fit step against a plain loop; per-network throughput by precision
# and compilation; a faithful released-code epoch (the 10x baseline); a padam-fit training run of
# ResNet-18 with Padam on the JPEGs for as long as the budget allows (at most 5 minutes), with
# epoch times and test error per epoch; the optimizer step. Output goes to stdout and, when $OUT
# is set, to $OUT/gpu-bench/ (one log per step and summary.txt).
#
# Environment: PYTHON (the interpreter; default: the first of .venv/bin/python, python3 that has
# torch), CIFAR_TARBALL (the tarball), GPU_DATA_DIR (where to extract it; default
# ${TMPDIR:-/tmp}/padam-gpu-data), GPU_SH_BUDGET_S (total seconds; default 470),
# GPU_SH_TRAIN_S (most seconds of training; default 300), GPU_SH_SMOKE (1: CPU dry run).
# The measurements before the training take about four minutes, so within the default budget
# the training run gets what is left (two to three minutes); GPU_SH_BUDGET_S=660 gives it the
# full five.

set -uo pipefail # no -e: a failed step is reported and the next one runs

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)
START=$SECONDS
SMOKE=${GPU_SH_SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    BUDGET=${GPU_SH_BUDGET_S:-300}
    DEVICE=cpu
else
    BUDGET=${GPU_SH_BUDGET_S:-470}
    DEVICE=cuda
fi
TRAIN_MAX_S=${GPU_SH_TRAIN_S:-300}

if [[ -n ${OUT:-} ]]; then
    LOG_DIR="$OUT/gpu-bench"
else
    LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX")
fi
mkdir -p "$LOG_DIR"
SUMMARY=()

say() { # print a line to stdout and to the summary file
    echo "$*"
    echo "$*" >>"$LOG_DIR/summary.txt"
}

remaining() { echo $((BUDGET - (SECONDS - START))); }

# step NAME TIMEOUT_S COMMAND...: run COMMAND under timeout, output to stdout and NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    local left
    left=$(remaining)
    if ((left < 20)); then
        say "== $name: SKIPPED (time budget spent)"
        SUMMARY+=("$name: skipped, out of time")
        return 0
    fi
    if ((limit > left)); then limit=$left; fi
    say ""
    say "== $name (at $((SECONDS - START)) s, limit ${limit} s): $*"
    local began=$SECONDS status
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    status=${PIPESTATUS[0]}
    local took=$((SECONDS - began))
    case $status in
        0) SUMMARY+=("$name: ok, ${took} s") ;;
        124 | 137) SUMMARY+=("$name: TIMED OUT after ${took} s") ;;
        *) SUMMARY+=("$name: FAILED (exit $status) after ${took} s") ;;
    esac
    say "== $name: exit $status after ${took} s"
    return 0
}

# -- 1. Python -----------------------------------------------------------------------------------

has_deps() {
    "$1" -c "import torch, torchvision, lightning, torchmetrics, jsonargparse, tensorboard, PIL" \
        >/dev/null 2>&1
}

PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    [[ -z $candidate ]] && continue
    command -v "$candidate" >/dev/null 2>&1 || [[ -x $candidate ]] || continue
    if "$candidate" -c "import torch" >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
if [[ -z $PY ]]; then
    say "gpu.sh: no Python with torch found (tried \$PYTHON, .venv/bin/python, python3, python)."
    exit 1
fi
if ! has_deps "$PY"; then
    # torch is there (with CUDA, one hopes) but not the rest: a venv that sees the system's
    # packages, with the project installed into it (pulls lightning etc. from the index).
    say "gpu.sh: $PY has torch but not all of the project's dependencies; creating .gpu_data/venv"
    timeout 60 "$PY" -m venv --system-site-packages .gpu_data/venv
    timeout 300 .gpu_data/venv/bin/python -m pip install --quiet -e . ||
        say "gpu.sh: pip install -e . failed (no package index reachable?)"
    if has_deps .gpu_data/venv/bin/python; then
        PY=.gpu_data/venv/bin/python
    else
        say "gpu.sh: the dependencies are still missing; the steps below will fail to import."
    fi
fi
# The tree itself, not an installed copy, is measured; benchmarks/ holds the helpers.
export PYTHONPATH="$REPO:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

say "gpu.sh: Python $PY ($(command -v "$PY" || echo "$PY")), smoke=$SMOKE, budget ${BUDGET} s"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG_DIR/summary.txt"
import os, platform
import torch, torchvision, lightning, torchmetrics
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"torchvision {torchvision.__version__}, lightning {lightning.__version__}, "
      f"torchmetrics {torchmetrics.__version__}, {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} device(s)")
else:
    print("GPU: none visible to torch")
try:
    from torch.utils._triton import has_triton
    print(f"triton available: {has_triton()}")
except ImportError:
    print("triton available: unknown")
EOF
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "gpu.sh: torch sees no CUDA device; nothing to measure (GPU_SH_SMOKE=1 runs on the CPU)."
    exit 1
fi
command -v nvidia-smi >/dev/null 2>&1 && timeout 20 nvidia-smi -L

# -- 2. Data -------------------------------------------------------------------------------------

TARBALL=""
for candidate in "${CIFAR_TARBALL:-}" .gpu_data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz \
    ../shared/data/cifar10-jpeg.tar.gz; do
    if [[ -n $candidate && -f $candidate ]]; then
        TARBALL=$candidate
        break
    fi
done
DATA_DIR="${GPU_DATA_DIR:-${TMPDIR:-/tmp}/padam-gpu-data}/cifar10-jpeg"
if [[ -n $TARBALL ]]; then
    say "gpu.sh: CIFAR-10 JPEGs from $TARBALL -> $DATA_DIR"
    if [[ ! -d $DATA_DIR/train || ! -d $DATA_DIR/test ]]; then
        mkdir -p "$DATA_DIR"
        timeout 120 tar -xzf "$TARBALL" -C "$DATA_DIR" || say "gpu.sh: extracting failed"
    fi
    step decode_jpegs 180 "$PY" -c "
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
    say "gpu.sh: NO CIFAR-10 TARBALL FOUND (put it at .gpu_data/cifar10-jpeg.tar.gz); using synthetic data"
    DATA_ARGS=()
    FIT_DATA=(--data.dataset synthetic --data.synthetic_train_size 50000
        --data.synthetic_test_size 10000)
fi

# -- 3. Measurements -----------------------------------------------------------------------------

if [[ $SMOKE == 1 ]]; then
    step data_path 90 "$PY" benchmarks/data_path.py --device cpu ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --rounds 1 \
        --baseline-batches 2 --batches 5
    step training_step 90 "$PY" benchmarks/training_step.py --device cpu --arch wrn10_1 \
        --batch-size 16 --rounds 1 --warmup 1 --steps 2
    step throughput 120 "$PY" benchmarks/throughput.py --device cpu --networks wrn10_1 \
        --batch-size 8 --steps 1 --rounds 1 --modes 32-true,bf16-mixed+cl
    step released_epoch 90 "$PY" benchmarks/epoch_time.py --device cpu ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} \
        --arch wrn10_1 --epochs 1 --limit-batches 2 --skip-padam-fit
else
    step data_path 90 "$PY" benchmarks/data_path.py --device cuda ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --rounds 3
    step training_step 120 "$PY" benchmarks/training_step.py --device cuda --arch resnet18 \
        --rounds 2 --warmup 10 --steps 40
    # Before the training run: compiling ResNet-18 here fills Inductor's cache for it.
    step throughput 150 "$PY" benchmarks/throughput.py --device cuda --batch-size 128 \
        --steps 20 --rounds 2 --networks resnet18 \
        --modes 32-true,bf16-mixed,bf16-mixed+cl,16-mixed+cl,bf16-mixed+cl+compile
    step throughput_others 60 "$PY" benchmarks/throughput.py --device cuda --batch-size 128 \
        --steps 20 --rounds 2 --networks wrn16_4,vgg16 --modes 32-true,bf16-mixed+cl
    step released_epoch 120 "$PY" benchmarks/epoch_time.py --device cuda ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} \
        --arch resnet18 --epochs 2 --skip-padam-fit
fi

# -- 4. Training ResNet-18 with Padam through padam-fit ------------------------------------------

RUN_DIR="${GPU_DATA_DIR:-${TMPDIR:-/tmp}/padam-gpu-data}/runs"
RESERVE=60 # left for the optimizer step after training
if [[ $SMOKE == 1 ]]; then
    TRAIN_ARGS=(--trainer.accelerator cpu --model.arch wrn10_1 --data.batch_size 16
        --trainer.max_epochs 2 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2)
    TRAIN_LIMIT=120
else
    TRAIN_S=$(($(remaining) - RESERVE - 45))
    ((TRAIN_S > TRAIN_MAX_S)) && TRAIN_S=$TRAIN_MAX_S
    ((TRAIN_S < 60)) && TRAIN_S=60
    printf -v MAX_TIME "00:00:%02d:%02d" $((TRAIN_S / 60)) $((TRAIN_S % 60))
    TRAIN_ARGS=(--trainer.accelerator gpu --trainer.max_time "$MAX_TIME")
    TRAIN_LIMIT=$((TRAIN_S + 45))
    say "gpu.sh: training for at most $MAX_TIME (the budget's remainder, capped at ${TRAIN_MAX_S} s)"
fi
step padam_fit_resnet18 "$TRAIN_LIMIT" "$PY" -m padam_lightning.cli fit \
    --config configs/resnet18.yaml "${FIT_DATA[@]}" \
    --model.channels_last null --model.compile null \
    --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir "$RUN_DIR" \
    --trainer.callbacks+=_timing.EpochReport \
    "${TRAIN_ARGS[@]}"

# -- 5. Optimizer step ---------------------------------------------------------------------------

if [[ $SMOKE == 1 ]]; then
    step optimizer_step 120 "$PY" benchmarks/optimizer_step.py --rounds 1 --steps 1
else
    step optimizer_step 90 "$PY" benchmarks/optimizer_step.py --rounds 2 --steps 3
fi

# -- Summary -------------------------------------------------------------------------------------

say ""
say "== summary (total $((SECONDS - START)) s; logs in $LOG_DIR)"
for line in "${SUMMARY[@]}"; do say "  $line"; done
for name in data_path training_step; do
    if [[ -f $LOG_DIR/$name.log ]]; then
        grep -hE "goal" "$LOG_DIR/$name.log" | while IFS= read -r line; do say "  $line"; done
    fi
done
"$PY" benchmarks/_gpu_report.py "$LOG_DIR" 2>&1 | while IFS= read -r line; do say "  $line"; done
exit 0
