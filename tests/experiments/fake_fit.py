"""A stand-in for ``padam-fit fit`` in sweep tests: records its call and writes a run's files.

It reads the logger flags the sweep passes to find the run folder, appends its argv, working
directory, ``CUDA_VISIBLE_DEVICES`` and process id to ``calls.jsonl`` there, and then, depending
on the overrides it was given:

- ``--print_config`` last: checks the options as padam-fit's parser would (known sections
  only), records the call in ``print_config.jsonl`` in the working directory, exits 0 or 2 with
  a ``padam-fit: error:`` line; no run folder;
- default: writes ``checkpoints/last.ckpt`` and ``finished.json`` (a finished run, with the
  ``max_epochs`` of its configs and flags), exit 0;
- ``--fake.crash_once true``: without ``--ckpt_path`` writes only ``last.ckpt`` and exits 1 (an
  interrupted run); with ``--ckpt_path last`` finishes;
- ``--fake.fail true``: prints an error and exits 3 without writing anything else;
- ``--fake.exit N``: writes ``last.ckpt`` (and ``finished.json`` too with
  ``--fake.finish_first true``), then exits with status N, or, N negative, kills itself with
  signal -N (as a process killed by it); ``--fake.no_checkpoint true`` writes no ``last.ckpt``;
- ``--fake.wait_for_sigint FILE``: writes ``last.ckpt``, creates FILE, waits for Ctrl-C (up to a
  minute) and exits 130 as ``padam-fit`` does after one (143 after SIGTERM);
- ``--fake.steps N``: trains N steps of ``FAKE_FIT_STEP_S`` seconds each (default 0.2), appending
  each step's index to ``steps.txt`` when it is done; ``--ckpt_path last`` goes on after the steps
  ``last.ckpt`` records. SIGINT, SIGTERM or SIGUSR1 (as padam-fit takes them) stop it after the
  current step: it appends the signal's name to ``signals.txt``, saves ``last.ckpt`` and exits
  with 128 + the signal's number. After the last step it writes ``finished.json``;
- ``--fake.hold FILE`` (with ``--fake.steps``): after its first step, waits (up to a minute) until
  FILE exists, so that a test can act while the run is surely still going;
- ``--fake.rendezvous DIR --fake.parties N``: marks its arrival in DIR, then waits (up to a
  minute) until N runs have arrived, so it finishes only if N runs ran at the same time; exit 4
  when they never do.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

#: Option sections padam-fit knows (a stand-in for its parser) and the fake's own.
KNOWN = ("config", "seed_everything", "ckpt_path", "trainer.", "model.", "data.", "fake.")


def print_config(argv: list[str]) -> int:
    """What ``padam-fit fit ... --print_config`` does for the sweep: parse, then exit."""
    with open("print_config.jsonl", "a") as calls:
        calls.write(json.dumps(argv) + "\n")
    for flag in argv[1::2]:
        name = flag.removeprefix("--")
        if not flag.startswith("--") or not name.startswith(KNOWN):
            print(f"padam-fit: error: unknown option {flag}", file=sys.stderr)
            return 2
    print("# the config")
    return 0


def train(run_dir: Path, steps: int, resume: bool, hold: Path | None = None) -> int:
    """``--fake.steps``: steps that a signal stops between, saving where it stopped."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    received: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda number, _: received.append(signal.Signals(number)))
    step = json.loads(checkpoint.read_text())["step"] if resume else 0
    while step < steps and not received:
        time.sleep(float(os.environ.get("FAKE_FIT_STEP_S", "0.2")))
        with open(run_dir / "steps.txt", "a") as done:
            done.write(f"{step}\n")
        step += 1
        deadline = time.monotonic() + 60
        while hold is not None and not hold.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    checkpoint.parent.mkdir(exist_ok=True)
    checkpoint.write_text(json.dumps({"step": step}))
    if received:
        with open(run_dir / "signals.txt", "a") as signals:
            signals.write("".join(f"{signum.name}\n" for signum in received))
        return 128 + received[0]
    (run_dir / "finished.json").write_text(json.dumps({"max_epochs": 1, "metrics": {}}))
    return 0


def main(argv: list[str]) -> int:
    assert argv[0] == "fit", argv
    if argv[-1] == "--print_config":
        return print_config(argv[:-1])
    options: dict[str, str] = {}
    max_epochs = None
    rest = argv[1:]
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        if flag == "--config":
            trainer = (yaml.safe_load(Path(value).read_text()) or {}).get("trainer") or {}
            max_epochs = trainer.get("max_epochs", max_epochs)
        else:
            options[flag.removeprefix("--")] = value
    max_epochs = int(options.get("trainer.max_epochs", max_epochs or 1))
    run_dir = (
        Path(options["trainer.logger.init_args.save_dir"])
        / options["trainer.logger.init_args.name"]
        / options["trainer.logger.init_args.version"]
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "calls.jsonl", "a") as calls:
        record = {
            "argv": argv,
            "cwd": os.getcwd(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
        calls.write(json.dumps(record) + "\n")
    print(f"fake fit of {run_dir.name}")
    if options.get("fake.fail") == "true":
        print("RuntimeError: the fake run failed on purpose", file=sys.stderr)
        return 3
    saves = options.get("fake.no_checkpoint") != "true"
    if saves and ("fake.exit" in options or "fake.wait_for_sigint" in options):
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"fake")
    if "fake.wait_for_sigint" in options:
        signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        Path(options["fake.wait_for_sigint"]).touch()
        time.sleep(60)
        return 4
    if "fake.steps" in options:
        hold = Path(options["fake.hold"]) if "fake.hold" in options else None
        return train(run_dir, int(options["fake.steps"]), options.get("ckpt_path") == "last", hold)
    if "fake.exit" in options:
        if options.get("fake.finish_first") == "true":
            finished = {"epoch": max_epochs - 1, "max_epochs": max_epochs, "metrics": {}}
            (run_dir / "finished.json").write_text(json.dumps(finished))
        status = int(options["fake.exit"])
        if status < 0:
            sys.stdout.flush()
            if -status != signal.SIGKILL:  # SIGKILL has no handler to reset
                signal.signal(-status, signal.SIG_DFL)
            os.kill(os.getpid(), -status)
        return status
    if "fake.rendezvous" in options:
        meeting = Path(options["fake.rendezvous"])
        meeting.mkdir(parents=True, exist_ok=True)
        (meeting / run_dir.name).touch()
        deadline = time.monotonic() + 60
        while len(list(meeting.iterdir())) < int(options["fake.parties"]):
            if time.monotonic() > deadline:
                print("the other runs never came", file=sys.stderr)
                return 4
            time.sleep(0.05)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"fake")
    if options.get("fake.crash_once") == "true" and options.get("ckpt_path") != "last":
        print("crashed after writing last.ckpt", file=sys.stderr)
        return 1
    finished = {"epoch": max_epochs - 1, "max_epochs": max_epochs, "metrics": {}}
    (run_dir / "finished.json").write_text(json.dumps(finished))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
