"""One run across two "nodes" on localhost: the run of two processes on one node, resumable.

Each node is a process started the way a cluster starts one, in a folder of its own, over gloo:

- with Lightning's environment variables (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``,
  ``LOCAL_RANK``): Lightning's ``LightningEnvironment`` takes the process as created outside
  (``LOCAL_RANK`` is set) and computes the world size from ``num_nodes`` x ``devices``;
- with torchrun's static rendezvous (``python -m torch.distributed.run --nnodes 2 ...``):
  Lightning detects ``TorchElasticEnvironment`` and checks ``num_nodes`` x ``devices`` against
  torchrun's world size.

The reference is Lightning's own launch of two processes on one node (``--trainer.strategy ddp
--trainer.devices 2``). The same world size gives the same data shards and all-reduces, so the
weights and curves are equal bit for bit. docs/clusters.md gives the commands.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
PADAM_FIT = [sys.executable, "-m", "padam_lightning.cli"]
#: A launch's time limit, in seconds (a tiny run takes 10 to 30 on two shared cores).
TIMEOUT_S = 300
#: tiny.yaml's 64 samples in batches of 16 over two processes: two steps an epoch, four in all.
STEPS = 4
#: Variables that would make Lightning detect another launcher (SLURM, torchrun) than the one
#: under test, e.g. when the tests themselves run inside a SLURM job.
_LAUNCHER_VARIABLES = frozenset(
    {"MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "RANK"}
    | {"LOCAL_RANK", "LOCAL_WORLD_SIZE"}
)

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with the gloo backend",
    ),
    pytest.mark.slow,  # several padam-fit processes
]


def _fit_args(save_dir: Path, name: str, *extra: str) -> list[str]:
    """``padam-fit fit`` of the tiny CPU run into ``save_dir/name``, config paths absolute."""
    return [
        "fit",
        "--config", str(CONFIGS / "wrn.yaml"),
        "--config", str(CONFIGS / "tiny.yaml"),
        "--trainer.accelerator", "cpu",
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.logger.init_args.name", name,
        "--trainer.strategy", "ddp",
        *extra,
    ]  # fmt: skip


def _clean_environment(**variables: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _LAUNCHER_VARIABLES and not key.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))
    }
    env["OMP_NUM_THREADS"] = "1"  # two processes share the machine's cores
    return {**env, **variables}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_together(commands: Sequence[tuple[list[str], dict[str, str], Path]]) -> list[int]:
    """Run the commands at once, each as ``(argv, env, cwd)``, to success; their pids.

    Each runs in a session of its own. The first failure, or the time limit, ends every process
    of all of them at once: the other node would wait for its peer (and Lightning's and
    torchrun's children would outlive their parent).
    """
    with ExitStack() as files:
        logs = [files.enter_context(tempfile.TemporaryFile("w+")) for _ in commands]
        processes = [
            subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            for (argv, env, cwd), log in zip(commands, logs, strict=True)
        ]
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                codes = [process.poll() for process in processes]
                if all(code == 0 for code in codes) or any(code not in (None, 0) for code in codes):
                    break
                time.sleep(0.2)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        failures = []
        for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
            if process.returncode != 0:  # -9: ended here, after another one failed
                log.seek(0)
                failures.append(
                    f"command {index}, exit {process.returncode}:\n{log.read()[-3000:]}"
                )
        assert not failures, "\n".join(failures)
    return [process.pid for process in processes]


def _one_node(save_dir: Path, name: str) -> None:
    """One node, two processes: Lightning starts the second one itself."""
    args = _fit_args(save_dir, name, "--trainer.devices", "2")
    _run_together([([*PADAM_FIT, *args], _clean_environment(), REPO_ROOT)])


def _two_nodes(
    save_dir: Path, name: str, *extra: str, launcher: Literal["env", "torchrun"] = "env"
) -> list[int]:
    """Two nodes of one process each, started as a cluster would; the nodes' pids.

    Each node runs in a new folder, which must stay empty: all files go to the run folder.
    """
    args = _fit_args(save_dir, name, "--trainer.num_nodes", "2", "--trainer.devices", "1", *extra)
    port = str(_free_port())
    commands = []
    for rank in range(2):
        (save_dir / "cwd").mkdir(exist_ok=True)
        cwd = Path(tempfile.mkdtemp(prefix=f"{name}-node{rank}-", dir=save_dir / "cwd"))
        if launcher == "env":
            env = _clean_environment(
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank), LOCAL_RANK="0"
            )
            commands.append(([*PADAM_FIT, *args], env, cwd))
        else:
            torchrun = [
                sys.executable, "-m", "torch.distributed.run",
                "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                "--master-addr", "127.0.0.1", "--master-port", port,
                "-m", "padam_lightning.cli",
            ]  # fmt: skip
            commands.append(([*torchrun, *args], _clean_environment(), cwd))
    pids = _run_together(commands)
    for rank, (_, _, cwd) in enumerate(commands):
        assert not any(cwd.iterdir()), f"node {rank} wrote into its working directory"
    return pids


def _only_run_folder(save_dir: Path, name: str) -> Path:
    folders = sorted((save_dir / name).iterdir())
    assert [folder.name for folder in folders] == ["version_0"], "one run, one folder"
    return folders[0]


def _files(run_dir: Path) -> list[str]:
    """The run folder's files, an event file's name (time, host, pid) shortened to its kind."""
    names = (path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file())
    return sorted(name.split(".out.")[0] if ".out.tfevents." in name else name for name in names)


def _load(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=False)


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of nested dicts and lists, with its path (an optimizer's state dict)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}/{index}")
    else:
        yield path, value


def _assert_same_training_state(run_dir: Path, reference_dir: Path) -> None:
    """Every tensor of the weights, optimizer and schedule of ``last.ckpt``, bit for bit."""
    run, reference = _load(run_dir), _load(reference_dir)
    assert run["global_step"] == reference["global_step"] == STEPS
    assert run["callbacks"]["RunRecord"]["world_size"] == 2
    assert run["state_dict"].keys() == reference["state_dict"].keys()
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(run["state_dict"][name], tensor), name
    for key in ("optimizer_states", "lr_schedulers"):
        leaves, expected = dict(_leaves(run[key])), dict(_leaves(reference[key]))
        assert leaves.keys() == expected.keys(), key
        for path, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(leaves[path], value), f"{key}{path}"
            else:
                assert leaves[path] == value, f"{key}{path}"


def _curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar as TensorBoard shows it: a resumed writer's purge drops the stopped points."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def _assert_same_curves(run_dir: Path, reference_dir: Path) -> None:
    curves, expected = _curves(run_dir), _curves(reference_dir)
    assert {"train/loss_step", "train/loss", "val/loss", "optim/lr"} <= expected.keys()
    assert curves.keys() == expected.keys()
    for tag, points in expected.items():
        assert curves[tag] == points, tag


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference (one node, two processes) and the same run on two nodes, uninterrupted."""
    save_dir = tmp_path_factory.mktemp("multinode")
    _one_node(save_dir, "one_node")
    pids = _two_nodes(save_dir, "two_nodes")
    # Only global rank 0, node 0's process, writes the curves (the pid is in the file's name).
    (events,) = _only_run_folder(save_dir, "two_nodes").glob("events.out.tfevents.*")
    assert events.name.split(".")[-2] == str(pids[0])
    return save_dir


def test_two_nodes_train_the_run_of_two_processes_on_one_node(runs: Path) -> None:
    run_dir = _only_run_folder(runs, "two_nodes")
    reference = _only_run_folder(runs, "one_node")
    assert _files(run_dir) == _files(reference)  # config, checkpoints, finished.json, events
    _assert_same_training_state(run_dir, reference)
    _assert_same_curves(run_dir, reference)


def test_a_two_node_run_stopped_mid_epoch_resumes_bit_exactly(runs: Path) -> None:
    # Stopped one batch into the second epoch (the loader's position is saved), then continued
    # on two nodes: equal to the uninterrupted run in every tensor and every curve point. The
    # second attempt starts its nodes with torchrun, which thereby gets tested too (one launch
    # fewer): a run is the same run whichever launcher starts its processes.
    _two_nodes(runs, "resumed", "--trainer.max_steps", "3")
    stopped = _load(_only_run_folder(runs, "resumed"))
    assert stopped["global_step"] == 3
    assert stopped["callbacks"]["RunRecord"]["batches"] == 1
    _two_nodes(
        runs, "resumed", "--trainer.max_steps", "-1", "--ckpt_path", "last", launcher="torchrun"
    )
    run_dir = _only_run_folder(runs, "resumed")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # the resume's writer
    straight = _only_run_folder(runs, "two_nodes")
    _assert_same_training_state(run_dir, straight)
    _assert_same_curves(run_dir, straight)
