"""padam-search with a stand-in padam-fit: the budget, kills and reruns, workers sharing a study.

The stand-in is ``fake_fit.py`` (as padam-sweep's tests use) wrapped so that a finished trial's
``finished.json`` holds ``val/err`` = its ``model.x`` value; ``--fake.steps N`` makes each trial
train N steps, each appended to ``steps.txt`` in its run folder, saving where a signal stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from padam_lightning.cli import EXIT_PRUNED
from padam_lightning.experiments.search import load_spec, main, trial_job

FAKE_FIT = Path(__file__).with_name("fake_fit.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
WRAPPER = """
import json, sys
from pathlib import Path
sys.path.insert(0, FOLDER)
import fake_fit
argv = sys.argv[1:]
status = fake_fit.main(argv)
options = dict(zip(argv[1::2], argv[2::2]))
if argv[-1] != "--print_config":
    logger = "--trainer.logger.init_args."
    run = Path(*(options[logger + key] for key in ("save_dir", "name", "version")))
    if (run / "finished.json").is_file():
        finished = json.loads((run / "finished.json").read_text())
        finished["metrics"]["val/err"] = float(options["--model.x"])
        (run / "finished.json").write_text(json.dumps(finished))
sys.exit(status)
""".replace("FOLDER", repr(str(FAKE_FIT.parent)))
SPACE = {
    "model.x": {"low": 0.0, "high": 1.0},
    "model.width": {"low": 1, "high": 64, "log": True},
    "model.kind": {"choices": ["a", "b"]},
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fit.py").write_text(WRAPPER)
    spec = {"name": "demo", "space": SPACE, "trials": 12, "pruner": "median", "seed": 0}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path


def _arguments(project: Path, *extra: str) -> list[str]:
    fit = f"{shlex.quote(sys.executable)} {shlex.quote(str(project / 'fit.py'))}"
    return ["search.yaml", "--save-dir", "logs", "--fit-command", fit, "--heartbeat", "1", *extra]


def _search(project: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """padam-search in this process (no start-up to pay); its exit status and output."""
    os.environ["FAKE_FIT_STEP_S"] = "0.05"
    try:
        code = main(_arguments(project, *extra))
    finally:
        del os.environ["FAKE_FIT_STEP_S"]
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _start(project: Path, *extra: str, step_s: float = 0.05) -> subprocess.Popen[str]:
    env = {**os.environ, "FAKE_FIT_STEP_S": str(step_s), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "padam_lightning.experiments.search", *_arguments(project, *extra)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _study(storage: str = "sqlite:///logs/demo/study.db") -> optuna.Study:
    return optuna.load_study(study_name="demo", storage=storage)


def _states(study: optuna.Study) -> Counter[str]:
    return Counter(trial.state.name for trial in study.get_trials())


def _check_each_trial_ran_once(project: Path, steps: int) -> None:
    """Every run folder trained each step once, and only finished trials have folders."""
    runs = sorted((project / "logs" / "demo").glob("trial-*"))
    assert len(runs) == 12, [run.name for run in runs]
    for run in runs:
        assert (run / "finished.json").is_file(), run
        trained = (run / "steps.txt").read_text().split()
        assert trained == [str(step) for step in range(steps)], (run, trained)


def _check_params_distinct(study: optuna.Study) -> None:
    """No two trials drew the same values (a retry repeats its original trial's on purpose)."""
    drawn = [
        tuple(sorted(t.params.items()))
        for t in study.trials
        if t.params and "failed_trial" not in t.system_attrs
    ]
    assert len(drawn) >= 12 and len(set(drawn)) == len(drawn), drawn


def test_a_12_trial_search_with_the_median_pruner_completes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = _search(project, capsys, "--max-parallel", "2")

    assert code == 0, output
    study = _study()
    assert _states(study) == {"COMPLETE": 12}
    assert "Traceback" not in output
    assert output.splitlines()[-1].startswith(
        f"padam-search: study demo (search.yaml) in sqlite:///logs/demo/study.db: 12 finished, "
        f"0 pruned, 0 running, 0 failed of 12; best: trial {study.best_trial.number}, val/err "
    )
    trial = study.trials[7]
    identity = json.loads((project / "logs/demo/trial-0007/run.json").read_text())
    assert identity["run"] == "trial-0007" and identity["trial"] == 7 and identity["seed"] == 0
    assert identity["axes"] == {"trial": {"label": "trial-0007", "title": "trial 7", "index": 7}}
    assert identity["params"] == trial.params
    assert trial.value == trial.params["model.x"]
    arguments = identity["arguments"]
    assert arguments[arguments.index("--model.width") + 1] == str(trial.params["model.width"])
    assert arguments[arguments.index("--trainer.callbacks.trial") + 1] == "7"
    # What trains these settings again outside the study: no pruning callback, no trial folder.
    assert identity["retrain"] == arguments[: arguments.index("--trainer.callbacks+")]
    assert not any("trial" in a or "logger" in a for a in identity["retrain"])
    assert trial.user_attrs["run_dir"] == str(project / "logs/demo/trial-0007")

    assert _search(project, capsys)[0] == 0 and len(_study().trials) == 12  # the budget is spent


def test_a_fresh_search_draws_the_same_values_from_its_seed(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for save_dir in ("one", "two"):
        assert _search(project, capsys, "--trials", "3", "--save-dir", save_dir)[0] == 0
    one, two = (_study(f"sqlite:///{d}/demo/study.db") for d in ("one", "two"))
    assert [t.params for t in one.trials] == [t.params for t in two.trials]
    assert len({t.params["model.x"] for t in one.trials}) == 3


def test_a_study_keeps_its_heartbeat_and_setup(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _search(project, capsys, "--trials", "1")[0] == 0
    assert _study().user_attrs["heartbeat"] == 1
    code, output = _search(project, capsys, "--trials", "2", "--heartbeat", "5")
    made = "go on as made (its search file, --heartbeat 1) or give the search another name: for a "
    assert code == 2 and output == (
        "padam-search: error: search.yaml: study demo in sqlite:///logs/demo/study.db was made "
        f"with another heartbeat; {made}new study.\n"
    )
    spec = yaml.safe_load((project / "search.yaml").read_text())
    for change in ({"space": {**SPACE, "model.x": {"choices": [0.5]}}}, {"base": ["x.yaml"]}):
        (project / "x.yaml").write_text("{}\n")
        (project / "search.yaml").write_text(yaml.safe_dump({**spec, **change}))
        code, output = _search(project, capsys, "--trials", "2")
        assert code == 2 and output == (
            "padam-search: error: search.yaml: study demo in sqlite:///logs/demo/study.db was "
            f"made with another {next(iter(change))}; {made}new study.\n"
        )
    assert len(_study().trials) == 1


def test_a_worker_whose_trial_another_gave_up_goes_on(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another worker failing trial 0 as silent while it runs (and queueing its retry)."""

    def give_up_trial_0() -> None:
        while not (project / "logs/demo/trial-0000/steps.txt").is_file():
            time.sleep(0.02)
        study = _study()
        frozen = study.trials[0]
        study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback(True)(study, study.trials[0])
        gave_up.touch()  # only now may trial 0's run go on and end

    gave_up = project / "gave_up"
    other = threading.Thread(target=give_up_trial_0)
    other.start()
    options = ("--fake.steps", "4", "--fake.hold", str(gave_up))
    code, output = _search(project, capsys, "--trials", "2", "--", *options)
    other.join()

    assert code == 0 and "Traceback" not in output, output
    assert "padam-search: trial 0: another worker gave it up; its retry takes it over" in output
    study = _study()
    assert _states(study)["COMPLETE"] == 2
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state.name == "COMPLETE" and retry.value == study.trials[0].params["model.x"]


def _stop_when_started(
    project: Path, search: subprocess.Popen[str], trial: int, signum: int
) -> str:
    started = project / f"logs/demo/trial-{trial:04d}/steps.txt"
    deadline = time.monotonic() + 30
    while not started.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    search.send_signal(signum)
    return search.communicate(timeout=30)[0]


def test_a_search_killed_part_way_and_rerun_ends_with_exactly_12_trials(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C first (its trials save, stop and are queued again), then SIGKILL, then to the end."""
    search = _start(project, "--max-parallel", "2", "--", "--fake.steps", "6", step_s=0.2)
    output = _stop_when_started(project, search, 2, signal.SIGINT)
    assert search.returncode == 130, output
    assert output.endswith("padam-search: interrupted; run the same command again to go on.\n")
    stopped = _states(_study())
    assert stopped["WAITING"] >= 1 and not stopped["RUNNING"], (stopped, output)

    search = _start(project, "--max-parallel", "2", "--", "--fake.steps", "6", step_s=0.2)
    output += _stop_when_started(project, search, 6, signal.SIGKILL)  # its trials stay RUNNING;
    killed = _states(_study())  # their padam-fit get SIGTERM from the kernel, save and stop
    assert killed["RUNNING"] >= 1 and killed["COMPLETE"] < 12, (killed, output)

    code, last = _search(project, capsys, "--max-parallel", "2", "--", "--fake.steps", "6")
    output += last

    assert code == 0, output
    study = _study()
    states = _states(study)
    assert states["COMPLETE"] + states["PRUNED"] == 12 and not states["RUNNING"], states
    retries = [t for t in study.trials if "failed_trial" in t.system_attrs and t.user_attrs]
    for retry in retries:  # each retry continued its original trial's run folder
        original = study.trials[retry.system_attrs["failed_trial"]]
        assert retry.params == original.params
        assert retry.user_attrs["run_dir"] == original.user_attrs["run_dir"]
        assert f"(retry of trial {original.number})" in output
    _check_each_trial_ran_once(project, steps=6)
    _check_params_distinct(study)  # the rerun drew new values, not trials 0, 1, ... again


def test_two_workers_sharing_a_sqlite_study_run_no_trial_twice(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _shared_study_runs_each_trial_once(project, capsys, [])


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server on a free port, run as the postgres user (it refuses root)."""
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "initdb").is_file() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 (Debian's /usr/lib/postgresql/15/bin) or runuser is missing")
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL as the postgres user needs root (runuser)")
    folder = Path(tempfile.mkdtemp(prefix="padam-search-pg-"))
    shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    as_postgres = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data)],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log")]
    subprocess.run([*ctl, "-o", options, "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_sharing_a_postgresql_study_run_no_trial_twice(
    project: Path, capsys: pytest.CaptureFixture[str], postgres: str
) -> None:
    _shared_study_runs_each_trial_once(project, capsys, ["--storage", postgres], postgres)


def _shared_study_runs_each_trial_once(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    storage: str = "sqlite:///logs/demo/study.db",
) -> None:
    """A worker in its own process and one in this process share the study."""
    other = _start(project, *extra, "--", "--fake.steps", "4")
    code, output = _search(project, capsys, *extra, "--", "--fake.steps", "4")
    outputs = [other.communicate(timeout=60)[0], output]

    assert [other.returncode, code] == [0, 0], outputs
    study = _study(storage)
    states = _states(study)
    assert states["COMPLETE"] == 12 and not states["RUNNING"], states
    ran = [line for output in outputs for line in output.splitlines() if ": model.x=" in line]
    assert all(ran.count(line) == 1 for line in ran) and len(ran) == 12, ran
    for output in outputs:  # both took part; over-budget placeholders are not "failed"
        assert ": model.x=" in output and ", 0 failed of 12" in output.splitlines()[-1], output
    _check_each_trial_ran_once(project, steps=4)
    _check_params_distinct(study)  # the two workers' samplers did not draw the same values
    assert all(
        len((run / "calls.jsonl").read_text().splitlines()) == 1
        for run in (project / "logs/demo").glob("trial-*")
    )
    over = [t for t in study.trials if t.user_attrs.get("over_budget")]
    assert all(t.state.name == "FAIL" and "run_dir" not in t.user_attrs for t in over)


def test_a_dry_run_with_a_postgresql_storage_writes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str], postgres: str
) -> None:
    import sqlalchemy

    code, output = _search(project, capsys, "--dry-run", "--storage", postgres)

    assert code == 0 and "fit.py" in output, output
    assert sqlalchemy.inspect(sqlalchemy.create_engine(postgres)).get_table_names() == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"trials": 0}, "search.yaml: trials must be a positive integer, got 0."),
        ({"trials": None}, "search.yaml: trials must be a positive integer, got None."),
        ({"pruner": "asha"}, "search.yaml: pruner must be one of median, hyperband, none, got"),
        ({"space": {"model.x": {"low": 1, "high": 0}}}, "search.yaml: space.model.x must be {low"),
        ({"space": {"model.x": {"low": 0, "hi": 1}}}, "search.yaml: space.model.x must be {low"),
        ({"space": {"model.x": {"low": 0, "high": 1, "log": True}}}, "space.model.x must be {lo"),
        ({"space": {"model.x": {"choices": []}}}, "search.yaml: space.model.x must be {low"),
        ({"space": {"model.x": {"low": 8, "high": 32.0}}}, "search.yaml: space.model.x must be"),
        ({"space": {"model.x": {"choices": [[1, 2], {"a": 1}]}}}, "space.model.x must be {low"),
        ({"space": {"model.x": {"low": 0.1, "high": float("inf"), "log": True}}}, "space.model.x"),
        ({"space": {"model.x": {"low": float("nan"), "high": 1.0}}}, "space.model.x must be"),
        ({"space": {"trainer.logger.x": {"choices": [1]}}}, "trainer.logger.x is set by padam-"),
        ({"space": {"not a key": {"choices": [1]}}}, "space or overrides key 'not a key' must be"),
        ({"overrides": {"seed_everything": 1}}, "search.yaml: seed_everything is set by padam-"),
        ({"base": [3]}, "search.yaml: base must be a config file path"),
        ({"grid": {}}, "search.yaml: unknown key(s) grid; allowed: name, description, base,"),
    ],
)
def test_a_bad_search_file_is_one_line_naming_the_key(
    project: Path, capsys: pytest.CaptureFixture[str], change: dict, named: str
) -> None:
    spec = {**yaml.safe_load((project / "search.yaml").read_text()), **change}
    spec = {key: value for key, value in spec.items() if value is not None}
    (project / "search.yaml").write_text(yaml.safe_dump(spec))

    assert main(["search.yaml", "--fit-command", "unused"]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("padam-search: error: search.yaml: "), captured.err
    assert named in captured.err
    assert captured.err.count("\n") == 1


def test_options_that_cannot_work_are_one_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in (
        (["missing.yaml"], "search file missing.yaml cannot be read as YAML: No such file"),
        (["search.yaml", "--trials", "0"], "--trials and --heartbeat must be at least 1."),
        (["search.yaml", "--executor", "slurm", "--no-wait"], "--no-wait is padam-sweep's"),
        (["search.yaml", "--storage", "nosuch://x"], "--storage nosuch://x: "),
    ):
        fit = f"{shlex.quote(sys.executable)} {shlex.quote(str(project / 'fit.py'))}"
        assert main([*args, "--fit-command", fit]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"padam-search: error: {message}") and err.count("\n") == 1, err


def test_every_choice_and_both_ends_are_parsed_and_dry_run_writes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = yaml.safe_load((project / "search.yaml").read_text())
    spec["space"]["model.kind"] = {"choices": ["a", "b", "c"]}
    (project / "search.yaml").write_text(yaml.safe_dump(spec))
    storage = f"sqlite:///{project / 'elsewhere.db'}"

    code, output = _search(project, capsys, "--dry-run", "--storage", storage)

    assert code == 0 and "fit.py" in output, output
    assert not (project / "elsewhere.db").exists() and not (project / "logs").exists()
    calls = [
        json.loads(line) for line in (project / "print_config.jsonl").read_text().split("\n")[:-1]
    ]
    tried = {(c[i], c[i + 1]) for c in calls for i in range(len(c) - 1) if c[i][:8] == "--model."}
    assert len(calls) == 3 and tried == {  # three runs: the longest list of values to try
        *[("--model.x", v) for v in ("0.0", "1.0")],
        *[("--model.width", v) for v in ("1", "64")],
        *[("--model.kind", v) for v in "abc"],
    }


@pytest.mark.parametrize("option", [["--model.x", "0.5"], ["--model.kind=b"]])
def test_a_searched_key_after_the_double_dash_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    code, output = _search(project, capsys, "--", "--trainer.max_epochs", "2", *option)
    key = option[0].split("=")[0][2:]
    assert code == 2 and output == (
        f"padam-search: error: -- {option[0]}: {key} is searched (space.{key}); "
        "remove one of them.\n"
    )
    assert not (project / "logs").exists()


def test_the_pruning_callback_stops_a_real_run_as_pruned(
    tmp_path: Path, tiny_fit_args: list[str]
) -> None:
    """A trial worse than five finished ones is pruned after its first epoch: one line, no
    resume command, stop "pruned" in finished.json, the study's trial told nothing more."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="demo", storage=storage)
    for _ in range(5):  # the median pruner's n_startup_trials, each with val/err 0
        study.add_trial(optuna.create_trial(value=0.0, intermediate_values={1: 0.0, 2: 0.0}))
    trial = study.ask()
    callback = ["--trainer.callbacks+", "padam_lightning.training.pruning.OptunaPruning"]
    for key, value in (("storage", storage), ("study_name", "demo"), ("trial", trial.number)):
        callback += [f"--trainer.callbacks.{key}", str(value)]
    padam_fit = Path(sys.executable).parent / "padam-fit"

    result = subprocess.run(
        [str(padam_fit), *tiny_fit_args, *callback], capture_output=True, text=True
    )

    assert result.returncode == EXIT_PRUNED == 3, result.stderr
    assert "Traceback" not in result.stderr and "To continue" not in result.stderr
    line = (
        "padam-fit: trial 5 pruned after epoch 1: its best val/err 0.9062 is worse than the "
        "median 0 of 5 finished trials at that epoch; the run ends here (stop: pruned)."
    )
    assert line in result.stderr.splitlines(), result.stderr
    (finished,) = (tmp_path / "logs" / "run").glob("*/finished.json")
    record = json.loads(finished.read_text())
    assert record["stop"] == "pruned" and record["epoch"] == 1
    assert (finished.parent / "checkpoints" / "last.ckpt").is_file()
    reported = optuna.load_study(study_name="demo", storage=storage).trials[5]
    assert reported.intermediate_values == {1: pytest.approx(0.90625)}
    assert reported.state.name == "RUNNING"  # padam-search tells the study, not padam-fit


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from padam_lightning.training.pruning import OptunaPruning

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="demo", storage=storage)
    for _ in range(5):
        study.add_trial(optuna.create_trial(value=0.0, intermediate_values={1: 0.0, 2: 0.0}))
    callback = OptunaPruning(storage, "demo", study.ask().number)
    callback._study, callback._storage = study, study._storage
    for epochs, steps, pruned in ((3, -1, True), (2, -1, False), (-1, 20, False), (3, 30, True)):
        trainer = SimpleNamespace(
            callback_metrics={"val/err": 0.9}, current_epoch=1, max_epochs=epochs,
            max_steps=steps, global_step=20,
        )  # fmt: skip
        message = callback._report(trainer)  # type: ignore[arg-type]
        assert (message is not None) == pruned, (epochs, steps)


@pytest.mark.parametrize(
    "search_file", sorted(p.name for p in (REPO_ROOT / "configs" / "searches").glob("*.yaml"))
)
def test_a_shipped_search_parses_with_padam_fit_at_both_ends_of_its_space(
    search_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from padam_lightning.cli import build_cli

    monkeypatch.chdir(REPO_ROOT)  # the searches name configs relative to the project root
    spec = load_spec(Path("configs/searches") / search_file)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = argparse.Namespace(extra=[], storage=storage, save_dir=str(tmp_path), fit_command=None)
    parser = build_cli(["--trainer.logger.init_args.save_dir", str(tmp_path)], run=False).parser
    for end in ("low", "high"):
        params = {key: value[end] for key, value in spec.space.items()}
        job = trial_job(spec, 3, params, args)
        config = parser.parse_args(job.identity["arguments"][1:])  # without "fit"
        for key, value in params.items():
            assert config[key] == value, (key, end)
        (pruning,) = [c for c in config.trainer.callbacks if c.class_path.endswith("Pruning")]
        assert pruning.init_args.trial == 3 and pruning.init_args.storage == storage
        assert config.trainer.logger.init_args.version == "trial-0003"
