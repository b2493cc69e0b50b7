"""Several workers on one study: PostgreSQL and journal storages, kills under fire."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import write_study
from optuna.trial import TrialState

from optimizer.config.study_config import StudyConfig
from optimizer.errors import ConfigError
from optimizer.study.storage import open_storage
from optimizer.study.study import Study

PASSWORD_IN_URL = re.compile(r"://[^:/@]+:([^@]+)@")


@pytest.fixture
def pg_url():
    """A fresh database on the PostgreSQL that `.ci/postgres.sh` started."""
    url = os.environ.get("MERGEOPT_TEST_POSTGRES")
    if not url:
        if os.environ.get("MERGEOPT_REQUIRE_POSTGRES"):
            pytest.fail("MERGEOPT_TEST_POSTGRES is not set; run: bash .ci/postgres.sh")
        pytest.skip("no PostgreSQL: export MERGEOPT_TEST_POSTGRES=$(bash .ci/postgres.sh)")
    import sqlalchemy

    name = f"mergeopt_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


HARNESS = Path(__file__).resolve().parents[1] / "worker_harness.py"


def worker(path: Path, log: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``mergeopt run`` in a child (through the test harness, hooks off unless ``env``)."""
    cmd = [sys.executable, str(HARNESS), "run", str(path), "--verbose", *extra]
    return subprocess.Popen(
        cmd,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def load(path: Path) -> optuna.Study:
    cfg = StudyConfig.from_yaml(path)
    return optuna.load_study(study_name=cfg.name, storage=open_storage(cfg.storage))


def start_points(trials) -> list[tuple]:
    """The enqueued start trials, by their parameters (labels repeat); a retry
    of one keeps its label but is not a start point queued again."""
    return [
        tuple(sorted(t.system_attrs["fixed_params"].items()))
        for t in trials
        if "start" in t.user_attrs and "retry_of" not in t.user_attrs
    ]


# Every example, one at a time: a trial lasts about a second on the tiny zoo.
SLOW_OBJECTIVE = {
    "tasks": [
        {"task": "demo_kinds", "metric": "acc"},
        {"task": "demo_larger", "metric": "acc", "weight": 2},
    ],
    "limit": 24,
    "batch_size": 1,
}


@pytest.mark.parametrize("backend", ["postgres", "journal"])
def test_three_workers_share_one_budget(study_zoo, tmp_path, backend, request):
    storage = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"journal:///{tmp_path}/study.log"
    )
    budget = 12
    path = write_study(
        tmp_path,
        study_zoo,
        storage=storage,
        n_trials=budget,
        export=str(tmp_path / "best"),
    )
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    # started together, they race to queue the start points; each one's first candidate waits for
    # the others' (the harness's gate), so the work is shared however fast one loads
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"MERGEOPT_TEST_GATE": str(gate), "MERGEOPT_TEST_GATE_WORKERS": "3"}
    procs = [worker(path, log, env=env) for log in logs]
    for p in procs:
        assert p.wait(timeout=400) == 0, "\n".join(log.read_text()[-3000:] for log in logs)
    trials = load(path).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget  # shared budget, exact
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    seeded = start_points(trials)
    assert len(seeded) == len(set(seeded)) == 7  # queued once, not once per worker
    workers = {t.user_attrs["worker"]["pid"] for t in complete}
    assert len(workers) == 3  # the work was shared
    out = "".join(log.read_text() for log in logs)
    assert out.count("exported trial") == 1  # one worker finishes the study
    assert (tmp_path / "best" / "mergeopt_trial.json").is_file()
    if backend == "postgres":
        password = PASSWORD_IN_URL.search(storage).group(1)
        assert password not in out and "postgres:***@" in out


def _phase(text: str) -> str | None:
    """The last phase a worker logged with --verbose ("trial N <phase>")."""
    lines = [ln for ln in text.splitlines() if "mergeopt[" in ln and " trial " in ln]
    return lines[-1].split(" trial ", 1)[1].split()[1] if lines else None


def _snapshot(path: Path) -> dict[int, tuple]:
    try:
        trials = load(path).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    except KeyError:  # no worker created the study yet
        return {}
    return {t.number: (t.values, t.params) for t in trials}


@pytest.mark.parametrize("pruner", ["none", "wilcoxon"])
def test_sigkill_random_workers_at_random_moments(study_zoo, tmp_path, pg_url, pruner):
    """With pruning on, a kill mid-evaluation lands between two chunks of items."""
    rng = random.Random(int(os.environ.get("MERGEOPT_KILL_SEED", "7")))
    budget = 30
    objective = dict(SLOW_OBJECTIVE, pruner={"name": pruner, "chunk": 8})
    path = write_study(tmp_path, study_zoo, storage=pg_url, n_trials=budget, objective=objective)
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [worker(path, log, "--no-export") for log in logs]
    since = [0, 0, 0]  # log offset where each worker's current process starts
    targets = ["materialize", "evaluate", "record", "recorded", "claimed", "evaluate", "record"]
    kills: list[dict] = []
    deadline = time.monotonic() + 600
    while targets and time.monotonic() < deadline:
        target = targets[0]
        before = _snapshot(path)
        if len(before) >= budget - 6:
            break  # leave room in the budget for the retries
        # a random worker that is up, killed when it next enters the target
        # phase, after a random delay inside that phase
        up = [i for i in range(3) if _phase_in(logs[i].read_text()[since[i] :], "claimed")]
        if not up:
            time.sleep(0.5)
            continue
        i = rng.choice(up)
        targets.pop(0)
        delay = rng.uniform(0, 0.5) if target == "evaluate" else 0.0
        mark = len(logs[i].read_text())
        while time.monotonic() < deadline:
            assert procs[i].poll() is None, logs[i].read_text()[-3000:]
            if _phase_in(logs[i].read_text()[mark:], target):
                break
            time.sleep(0.001)
        time.sleep(delay)
        os.kill(procs[i].pid, signal.SIGKILL)
        procs[i].wait()
        landed = _phase(logs[i].read_text()[mark:])
        kills.append({"pid": procs[i].pid, "target": target, "landed": landed})
        kills[-1]["complete_before"] = before
        since[i] = len(logs[i].read_text())
        procs[i] = worker(path, logs[i], "--no-export")  # restarted, as a supervisor would
    for p, log in zip(procs, logs, strict=True):
        assert p.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = load(path).get_trials()
    by_number = {t.number: t for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for k in kills:  # every trial completed before a kill is intact
        for number, (values, params) in k["complete_before"].items():
            t = by_number[number]
            assert t.state == TrialState.COMPLETE and t.values == values and t.params == params
    killed = [
        t
        for t in trials
        if t.user_attrs.get("worker", {}).get("pid") in {k["pid"] for k in kills}
        and t.state != TrialState.COMPLETE
    ]
    for t in killed:
        assert t.state == TrialState.FAIL and "died" in t.user_attrs["fail_reason"]
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    lost = 0
    for t in killed:
        chain = t
        while chain.state != TrialState.COMPLETE:
            nxt = [r for r in retries if r.user_attrs["retry_of"] == chain.number]
            if not nxt:
                break
            assert len(nxt) == 1  # retried once, never twice
            chain = nxt[0]
        if chain.state != TrialState.COMPLETE or chain.params != t.params:
            lost += 1
    seeded = start_points(trials)
    assert len(seeded) == len(set(seeded)) == 7
    # a retry chain may fail several times, but each parameter set completes once
    done = [tuple(sorted(t.params.items())) for t in complete]
    twice = [
        (t.number, {k: v for k, v in t.user_attrs.items() if k in ("start", "retry_of", "worker")})
        for t in complete
        if done.count(tuple(sorted(t.params.items()))) > 1
    ]
    assert not twice, f"a candidate was evaluated (and counted) twice: {twice}; kills: {kills}"
    print(
        f"\nkill test: kills={len(kills)} (killed in phase: "
        f"{', '.join(str(k['landed']) for k in kills)}) "
        f"completed={len(complete)} failed={len(killed)} retried={len(retries)} lost={lost}"
    )
    assert len(kills) >= 4
    assert lost == 0


def _phase_in(text: str, target: str) -> bool:
    return re.search(rf" trial \d+ {target}\b", text) is not None


def test_wrong_password_is_refused_and_never_printed(study_zoo, tmp_path, pg_url):
    wrong = re.sub(r"(://[^:/@]+:)[^@]+@", r"\1Wr0ngPa55word@", pg_url)
    path = write_study(tmp_path, study_zoo, storage=wrong)
    with pytest.raises(ConfigError) as exc:
        Study(StudyConfig.from_yaml(path))
    assert "password authentication failed" in str(exc.value)
    assert "Wr0ngPa55word" not in str(exc.value) and ":***@" in str(exc.value)
    log = tmp_path / "w.log"
    proc = worker(path, log)
    assert proc.wait(timeout=120) == 2
    out = log.read_text()
    assert "password authentication failed" in out and "Wr0ngPa55word" not in out


def test_changed_models_or_tasks_are_refused(study_zoo, tmp_path, pg_url):
    path = write_study(tmp_path, study_zoo, storage=pg_url, n_trials=1)
    Study(StudyConfig.from_yaml(path)).run()
    write_study(tmp_path, study_zoo, storage=pg_url, n_trials=1, models=[str(study_zoo["e1"])])
    with pytest.raises(ConfigError, match="different search_space, models"):
        Study(StudyConfig.from_yaml(path))
    objective = {"tasks": [{"task": "demo_kinds"}], "limit": 8}
    write_study(tmp_path, study_zoo, storage=pg_url, n_trials=1, objective=objective)
    with pytest.raises(ConfigError, match="different tasks"):
        Study(StudyConfig.from_yaml(path))
    # the stored study is untouched
    write_study(tmp_path, study_zoo, storage=pg_url, n_trials=1)
    assert Study(StudyConfig.from_yaml(path)).run().completed == 1
