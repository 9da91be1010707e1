"""Run ``padam-fit`` and stop it at one chosen moment (a helper of benchmarks/chaos.py).

Usage::

    python benchmarks/_chaos_child.py '<stop as JSON>' -- fit --config ... (padam-fit's arguments)

The stop is a JSON object (:class:`chaos.Stop` writes it):

- ``at``: where to stop. ``train_batch`` (end of training batch ``batch`` of epoch ``epoch``),
  ``val_batch`` (start of validation batch ``batch`` of epoch ``epoch``; -1 is the last batch),
  ``sanity`` (start of sanity-check batch ``batch``), ``after_save`` (right after this process's
  write number ``save`` of ``last.ckpt``, 0 the first), ``during_save`` (half-way through that
  write: the first half of the temporary file is on disk), or ``none`` (no signal: for
  ``max_time``). Saves are counted, not matched by epoch, so the moment stays the same when the
  package changes when in an epoch it saves;
- ``signal``: ``SIGKILL``, ``SIGTERM``, ``SIGINT`` or ``SIGUSR1``, sent to this process itself;
- ``sleep_per_batch``: seconds to sleep after each training batch, so that a short
  ``--trainer.max_time`` falls inside training (no effect on what is computed).

The stop is added without changing the run's config (which a resume compares): ``Trainer.fit``
is wrapped to append a callback to ``trainer.callbacks``, and ``torch.save`` /
``Trainer.save_checkpoint`` are wrapped for the two checkpoint moments. The callback has no
state, so the checkpoint's ``callbacks`` entry is the same as a plain run's.

Before it signals, the child prints ``chaos: <signal> at <moment>`` on stderr, so the harness knows
the moment was reached.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

#: Printed on stderr just before the signal is sent.
REACHED_MARK = "chaos: "
LAST_CHECKPOINT = "last.ckpt"


def _send(stop: dict[str, Any], where: str) -> None:
    print(f"{REACHED_MARK}{stop['signal']} at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.Signals[stop["signal"]])


def _install(stop: dict[str, Any]) -> None:
    """Wrap Lightning and torch so that ``stop`` happens (imports Lightning)."""
    import lightning as L
    import torch
    from lightning.pytorch import Trainer

    at, epoch, batch = stop["at"], stop.get("epoch", 0), stop.get("batch", 0)
    nth = stop.get("save", 0)
    sent = False  # one signal per process: later matches (a resumed epoch's) are ignored

    def fire(where: str) -> None:
        nonlocal sent
        if not sent:
            sent = True
            _send(stop, where)

    class ChaosStop(L.Callback):
        """Signals this process at the chosen training or validation batch."""

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: Any, outputs: Any, b: Any, batch_idx: int
        ) -> None:
            if at == "train_batch" and trainer.current_epoch == epoch and batch_idx == batch:
                fire(f"the end of training batch {batch_idx} of epoch {epoch}")
            if stop.get("sleep_per_batch"):
                time.sleep(float(stop["sleep_per_batch"]))

        def on_validation_batch_start(
            self, trainer: L.Trainer, pl_module: Any, b: Any, batch_idx: int, dl: int = 0
        ) -> None:
            count = trainer.num_val_batches[dl] if trainer.num_val_batches else 0
            target = batch if batch >= 0 else int(count) - 1
            if at == "sanity" and trainer.sanity_checking and batch_idx == batch:
                fire(f"the start of sanity-check batch {batch_idx}")
            elif (
                at == "val_batch"
                and not trainer.sanity_checking
                and trainer.current_epoch == epoch
                and batch_idx == target
            ):
                fire(f"the start of validation batch {batch_idx} of epoch {epoch}")

    original_fit = Trainer.fit

    @functools.wraps(original_fit)  # LightningCLI reads fit's signature for its options
    def fit(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        self.callbacks.append(ChaosStop())  # type: ignore[attr-defined]
        return original_fit(self, *args, **kwargs)

    Trainer.fit = fit  # type: ignore[method-assign]

    saves = 0  # writes of last.ckpt so far in this process (after_save, during_save count them)

    if at == "after_save":
        original_save_checkpoint = Trainer.save_checkpoint

        def save_checkpoint(self: Trainer, filepath: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal saves
            original_save_checkpoint(self, filepath, *args, **kwargs)
            if Path(filepath).name == LAST_CHECKPOINT:
                if saves == nth:
                    fire(
                        f"right after save #{nth + 1} of {LAST_CHECKPOINT} (epoch "
                        f"{self.current_epoch}, step {self.global_step})"
                    )
                saves += 1

        Trainer.save_checkpoint = save_checkpoint  # type: ignore[method-assign]

    if at == "during_save":
        original_torch_save = torch.save

        def partial_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal saves
            name = str(getattr(f, "name", f))
            if LAST_CHECKPOINT not in Path(name).name or not isinstance(obj, dict):
                original_torch_save(obj, f, *args, **kwargs)
                return
            saves += 1
            if saves - 1 != nth:
                original_torch_save(obj, f, *args, **kwargs)
                return
            buffer = io.BytesIO()
            original_torch_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            half = len(data) // 2
            out = f if hasattr(f, "write") else open(f, "wb")  # noqa: SIM115 (closed below)
            try:
                out.write(data[:half])
                out.flush()
                os.fsync(out.fileno())
                fire(
                    f"half-way through save #{nth + 1} of {LAST_CHECKPOINT} (epoch "
                    f"{obj.get('epoch')}, step {obj.get('global_step')}; {half} of {len(data)} "
                    f"bytes written to {Path(name).name})"
                )
                out.write(data[half:])  # a process that survives the signal finishes the write
            finally:
                if out is not f:
                    out.close()

        torch.save = partial_save


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: _chaos_child.py STOP_JSON -- PADAM_FIT_ARGS...")
    stop = json.loads(sys.argv[1])
    args = sys.argv[3:]
    _install(stop)
    # As the console script runs it: the arguments in sys.argv (LightningCLI warns when it is given
    # a list while sys.argv holds arguments too).
    sys.argv = [str(Path(sys.executable).with_name("padam-fit")), *args]
    from padam_lightning.cli import main as padam_fit

    padam_fit()


if __name__ == "__main__":
    main()
