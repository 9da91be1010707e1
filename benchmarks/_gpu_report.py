"""Summarise a ``benchmarks/gpu.sh`` run from its step logs: every table, ratio and goal.

Used by gpu.sh (``python benchmarks/_gpu_report.py WORK_DIR``, the folder of its ``NAME.out``,
``NAME.err``, ``steps.tsv`` and ``notes.txt``) after every row, so that the summary always holds
what has ended; not a benchmark itself. Prints, in order: gpu.sh's notes, each row's verdict (with
the end of its stderr when it failed), each measurement's own output (its tables and ratio lines;
for a row stopped early, the medians of the rounds it finished), the padam-fit training run epoch
by epoch (train + eval seconds and test error), and last the goals, so that the end of the output
holds the figures that matter. It imports no torch (it runs in a fraction of a second).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

#: Measurement steps whose stdout (tables, ratio lines) goes into the summary, in run order.
MEASUREMENTS = (
    "environment",
    "cuda_correctness",
    "decode_jpegs",
    "training_step",
    "throughput",
    "released_epoch",
    "cudnn_benchmark",
    "sweep_throughput",
    "data_path",
    "throughput_others",
    "optimizer_step",
)
TRAINING = "padam_fit_resnet18"
#: Most lines of one step's stdout in the summary (the tables are far shorter).
MAX_LINES = 40
#: An epoch is in the CIFAR-10 goal's terms: 50,000 training plus 10,000 test images.
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000

#: An EpochReport line: "epoch   3: train    1.52 s (50,000 images,    32,895 images/s), eval
#: 0.21 s, ... | train/loss ...".
EPOCH_LINE = re.compile(
    r"^epoch +(\d+): train +([\d.]+) s \(([\d,]+) images, +([\d,.]+|nan) images/s\), "
    r"eval +([\d.]+) s,.*\| (.*)$",
    re.M,
)
WALL_LINE = re.compile(r"^epoch +(\d+): +([\d.]+) s with checkpointing", re.M)
METRIC = re.compile(r"(\S+) (-|[\d.]+|nan)(?: |$)")
RELEASED_LINE = re.compile(r"released epoch (\d+): train ([\d.]+) s, eval ([\d.]+) s")
#: A throughput row: "bf16-mixed+cl   12,345 (1.23x)   6,789 (2.00x)".
RATE_CELL = re.compile(r"([\d,]+) \( *[\d.]+x\)")
#: The first line of each benchmark (describe_machine): date and time, CPU, GPU, versions.
MACHINE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d; ")
#: A measurement as _timing.interleaved reports it on stderr: "  round 2/3: NAME: 1,234.5".
ROUND_LINE = re.compile(r"^ +round \d+/\d+: (.+): ([\d,.]+)$", re.M)
#: Lines of a row's stdout that carry its result (a ratio or a goal), kept in the goals.
GOAL_MARKERS = ("goal", "on / off", "runs per GPU", "skipped:")


def read(work: Path, name: str) -> str:
    """The text of ``work/name`` ('' when missing)."""
    path = work / name
    return path.read_text(errors="replace") if path.exists() else ""


def step_lines(work: Path) -> list[str]:
    """Each step's verdict; the last lines of stderr of those that did not succeed."""
    lines = ["== steps"]
    for row in read(work, "steps.tsv").splitlines():
        name, _, verdict = row.partition("\t")
        lines.append(f"  {name}: {verdict}")
        if not verdict.startswith(("ok", "skipped")):
            err = [line for line in read(work, f"{name}.err").splitlines() if line.strip()]
            lines += [f"    | {line[:160]}" for line in err[-4:]]
    return lines


def verdicts(work: Path) -> dict[str, str]:
    """Each row's verdict so far (``ok, 12 s``, ``TIMED OUT at 60 s, 70 s`` ...)."""
    rows = (line.partition("\t") for line in read(work, "steps.tsv").splitlines())
    return {name: verdict for name, _, verdict in rows}


def partial_rounds(err: str) -> list[str]:
    """Medians of the rounds a stopped row finished, from its stderr's round lines."""
    samples: dict[str, list[float]] = {}
    for name, value in ROUND_LINE.findall(err):
        samples.setdefault(name, []).append(float(value.replace(",", "")))
    return [
        f"(stopped early) {name}: median {statistics.median(values):,.1f} of {len(values)} round(s)"
        for name, values in samples.items()
    ]


def measurement_lines(work: Path) -> list[str]:
    """The stdout of each measurement row (and the compile costs, which go to stderr)."""
    lines: list[str] = []
    machine_seen = False
    ended = verdicts(work)
    for name in MEASUREMENTS:
        out = [line.rstrip() for line in read(work, f"{name}.out").splitlines() if line.strip()]
        err = read(work, f"{name}.err")
        compiles = [line.strip() for line in err.splitlines() if "(compiles)" in line]
        if name in ended and not ended[name].startswith("ok"):
            compiles += partial_rounds(err)
        if not out and not compiles:
            continue
        if machine_seen:  # the machine line ("2026-11-28 23:47; CPU ...; torch ...") once
            out = [line for line in out if not MACHINE_LINE.match(line)]
        machine_seen = machine_seen or any(MACHINE_LINE.match(line) for line in out)
        lines.append(f"== {name}")
        if len(out) > MAX_LINES:
            out = [*out[: MAX_LINES // 2], "  [...]", *out[-MAX_LINES // 2 :]]
        lines += [f"  {line}" for line in [*out, *compiles]]
    return lines


def parse_epochs(text: str) -> list[dict[str, float | str]]:
    """The EpochReport records of a padam-fit run's stdout, with ``partial`` set on short epochs.

    An epoch cut short (e.g. by ``--trainer.max_time``) trained on fewer images than the others.
    """
    walls = {int(e): float(w) for e, w in WALL_LINE.findall(text)}
    epochs: list[dict[str, float | str]] = []
    for epoch, train, images, _rate, evaluation, metrics in EPOCH_LINE.findall(text):
        record: dict[str, float | str] = {
            "epoch": int(epoch),
            "train": float(train),
            "eval": float(evaluation),
            "images": float(images.replace(",", "")),
            "wall": walls.get(int(epoch), float("nan")),
        }
        record.update(dict(METRIC.findall(metrics)))
        epochs.append(record)
    for record in epochs:
        record["partial"] = False
    if len(epochs) > 1:  # only the last epoch can be cut short
        most = max(float(r["images"]) for r in epochs[:-1])
        epochs[-1]["partial"] = float(epochs[-1]["images"]) < 0.95 * most
    return epochs


def training_lines(work: Path) -> tuple[list[str], float | None]:
    """The padam-fit run epoch by epoch; and its steady epoch time (train + eval), if any."""
    text = read(work, f"{TRAINING}.out")
    settings = re.search(r"^settings: (.*)$", text, re.M)
    epochs = parse_epochs(text)
    lines = [f"== padam-fit training run with Padam ({len(epochs)} epochs reported)"]
    if settings:
        lines.append(f"  settings: {settings.group(1)}")
    if not epochs:
        return [*lines, "  no epoch finished"], None
    lines.append("  epoch, train + eval s, test error (val/err); * fewer images than the others")
    cells = [
        f"{int(r['epoch']):3d} {float(r['train']) + float(r['eval']):6.2f}s "
        f"{r.get('val/err', '-'):<6}{'*' if r['partial'] else ' '}"
        for r in epochs
    ]
    lines += ["  " + " |".join(cells[i : i + 5]) for i in range(0, len(cells), 5)]
    full = [r for r in epochs if not r["partial"]]
    errors = [(int(r["epoch"]), float(r["val/err"])) for r in full if r.get("val/err") != "-"]
    if errors:
        best = min(errors, key=lambda item: item[1])
        lines.append(
            f"  test error after epoch {errors[-1][0]}: {errors[-1][1]:.4f}; "
            f"best {best[1]:.4f} (epoch {best[0]})"
        )
    # The first epoch pays for compilation and cuDNN tuning; the goal is about the others.
    first = epochs[0]
    steady = [r for r in full if int(r["epoch"]) >= 1]
    if steady:
        which = f"median of the {len(steady)} full epochs after the first"
        if len(steady) < 2:
            which += " (fewer than the 2 planned)"
    else:
        steady, which = [first], "only the first epoch finished; its time"
    seconds = statistics.median(float(r["train"]) + float(r["eval"]) for r in steady)
    wall = statistics.median(float(r["wall"]) for r in steady)
    lines.append(
        f"  epoch 0 (compiles): {float(first['train']) + float(first['eval']):.2f} s; "
        f"{which}: {seconds:.2f} s ({wall:.2f} s with checkpointing)"
    )
    return lines, seconds


def throughput_rates(text: str) -> dict[str, dict[str, float]]:
    """``{network: {mode: images/s}}`` from a throughput.py table."""
    rates: dict[str, dict[str, float]] = {}
    networks: list[str] = []
    for line in text.splitlines():
        if line.startswith("mode "):
            networks = line.split()[1:]
            continue
        cells = RATE_CELL.findall(line)
        if networks and len(cells) == len(networks):
            mode = line.split()[0]
            for network, cell in zip(networks, cells, strict=True):
                rates.setdefault(network, {})[mode] = float(cell.replace(",", ""))
    return rates


def goal_lines(work: Path, fit_epoch: float | None) -> list[str]:
    """Every goal's figure, one line each."""
    lines = ["== goals"]
    for name in (
        "data_path",
        "training_step",
        "optimizer_step",
        "cudnn_benchmark",
        "sweep_throughput",
    ):
        lines += [
            f"  {line.strip()}"
            for line in read(work, f"{name}.out").splitlines()
            if any(marker in line for marker in GOAL_MARKERS)
        ]
    if fit_epoch is not None:
        lines.append(
            f"  padam-fit steady epoch of the training run (ResNet-18 on a GPU; train + eval): "
            f"{fit_epoch:.2f} s (goal <= 2)"
        )
    released = RELEASED_LINE.findall(read(work, "released_epoch.out"))
    if released:
        # The last epoch: the first pays for cuDNN tuning and the workers' start.
        theirs = float(released[-1][1]) + float(released[-1][2])
        line = f"  released-code epoch (ResNet-18 on a GPU): {theirs:.2f} s"
        if fit_epoch:
            line += f"; released / padam-fit = {theirs / fit_epoch:.1f}x (goal >= 10)"
        lines.append(line)
    rates = throughput_rates(read(work, "throughput.out"))
    rates.update(throughput_rates(read(work, "throughput_others.out")))
    for network, by_mode in rates.items():
        mode, rate = max(by_mode.items(), key=lambda item: item[1])
        # Evaluation is a forward pass: about a third of a training step's work per image.
        estimate = TRAIN_IMAGES / rate + TEST_IMAGES / (3 * rate)
        lines.append(
            f"  {network} epoch estimated from throughput ({mode}, {rate:,.0f} images/s): "
            f"{estimate:.2f} s (goal <= 2)"
        )
    return lines


def summarise(work: Path) -> list[str]:
    """The whole report."""
    training, fit_epoch = training_lines(work)
    notes = [line for line in read(work, "notes.txt").splitlines() if line.strip()]
    return [
        *notes,
        *step_lines(work),
        *measurement_lines(work),
        *training,
        *goal_lines(work, fit_epoch),
    ]


def main() -> None:
    if len(sys.argv) != 2:
        print("benchmarks/_gpu_report.py WORK_DIR summarises a gpu.sh run; nothing to run alone.")
        return
    for line in summarise(Path(sys.argv[1])):
        print(line)


if __name__ == "__main__":
    main()
