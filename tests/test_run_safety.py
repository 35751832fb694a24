"""Issue 9: a run folder is safe. Each test reproduces one finding of the probe, then shows the fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image

import evo
import evo.graph as eg
from evo.cli import main
from evo.errors import DataError, EvoError
from evo.runs import Run, RunBusyError, RunError

ROOT = Path(__file__).resolve().parents[1]


def _evo(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under `folder` with its bytes and mtime: a read must change nothing."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (p.read_bytes() if p.is_file() else b"", st.st_mtime_ns)
    return out


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _digits_folder(root: Path, labels, n: int = 30, size: int = 32, offset: int = 0) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    count = {lab: 0 for lab in labels}
    for i, (img, lab) in enumerate(zip(d.images, d.target, strict=True)):
        if lab in count and i >= offset and count[lab] < n:
            (root / f"d{lab}").mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 15).astype(np.uint8)).resize((size, size)).save(root / f"d{lab}" / f"{i}.png")
            count[lab] += 1
    return root


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory) -> Path:
    """A small `evo learn` run (small_cnn, two digit classes), made once for the read-only tests."""
    tmp = tmp_path_factory.mktemp("learned")
    assert main(["learn", "small_cnn", "--data", str(_digits_folder(tmp / "a", [0, 1])), "--run-dir",
                 str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run"


# ---- must fix: data loss and corruption -----------------------------------------------------------

@pytest.mark.parametrize("command", ["status", "resume", "learn"])
def test_a_folder_that_is_not_a_run_is_refused_and_untouched(tmp_path, command):
    p = tmp_path / "p"
    p.mkdir()
    subprocess.run(["git", "init", "-q", str(p)], check=True)
    (p / "config.json").write_text("{}")
    (p / ".env").write_text("S=1\n")
    (p / ".ipynb_checkpoints").mkdir()
    (p / ".ipynb_checkpoints" / "x.ipynb").write_text("{}")
    before = _snapshot(p)
    args = {"status": ["status", str(p)], "resume": ["resume", str(p)],
            "learn": ["learn", str(p), "--data", str(_digits_folder(tmp_path / "d", [0, 1], n=3))]}[command]
    proc = _evo(*args)
    _one_line_error(proc, str(p))
    assert _snapshot(p) == before  # .git, .env and the notebook checkpoints are all still there, unchanged


def test_status_writes_nothing_and_leaves_a_writers_temp_files_alone(learned_run):
    (learned_run / "metrics" / ".evo-tmp-rounds.csv.abc").write_text("a writer's half-written file")
    (learned_run / "versions" / ".evo-tmp-9.xyz").mkdir()
    before = _snapshot(learned_run)
    proc = _evo("status", str(learned_run))
    assert proc.returncode == 0 and "v1" in proc.stdout, proc.stderr
    assert _snapshot(learned_run) == before


def test_cleanup_removes_only_evos_own_temporary_names(tmp_path):
    run = Run.create(tmp_path / "r", {})
    run.commit_version(evo.zoo.load("small_cnn"), {"ops": []})
    mine = [run.path / ".evo-tmp-lineage.json.1", run.path / "versions" / ".evo-tmp-1.abc"]
    mine[0].write_text("{")
    mine[1].mkdir()
    theirs = [run.path / ".env", run.path / ".git", run.path / "versions" / ".hidden", run.path / "notes" / ".evo-tmp-x"]
    theirs[0].write_text("S=1")
    theirs[1].mkdir()
    theirs[2].write_text("x")
    theirs[3].parent.mkdir()
    theirs[3].write_text("not in a run folder of evo's: kept")
    with Run.open(run.path).lock("test"):
        pass
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in theirs)


def test_a_second_writer_is_refused_with_the_holders_pid_and_command(learned_run, tmp_path):
    data = _digits_folder(tmp_path / "b", [2, 3], n=5)
    with Run.open(learned_run).lock("launch"):
        proc = _evo("learn", str(learned_run), "--data", str(data), "--no-progress")
    _one_line_error(proc, f"pid {os.getpid()}", "evo launch")
    assert Run.open(learned_run).versions() == [0, 1]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run = Run.create(tmp_path / "r", {})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from evo.runs import Run\n"
        "with Run.open(sys.argv[2]).lock('learn'):\n    print('held', flush=True); time.sleep(120)"),
        str(ROOT), str(run.path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunBusyError, match=f"pid {holder.pid}"), run.lock("learn"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run.lock("learn") as r:
        assert r.took_over["pid"] == holder.pid and r.took_over["command"] == "learn"


def test_a_writer_killed_after_its_commit_loses_no_bookkeeping(tmp_path):
    """Killed between a version's rename and the files derived from it (lineage, tables, the round's
    metrics): the next writer to take the lock re-derives them from the committed folders, exactly."""
    run = Run.create(tmp_path / "r", {})
    g = evo.zoo.load("small_cnn")
    run.commit_version(g, {"ops": [], "increment": None})
    doc = {"increment": 0, "spent_flops": 5, "trials": [{"number": 0, "state": "COMPLETE"}]}
    run.commit_version(g, {"ops": [], "parent": 0, "increment": 0}, round_doc=doc)
    metrics = run.path / "metrics"
    expected = {n: (run.path / n).read_bytes() for n in ("lineage.json", "metrics/rounds.csv", "metrics/round_0.json")}
    assert json.loads(expected["metrics/round_0.json"]) == {**doc, "version": 1}
    (metrics / "round_0.json").unlink()  # the state a kill right after the rename leaves
    (run.path / "lineage.json").write_text(json.dumps({"stale": True}))
    (metrics / "rounds.csv").unlink()
    assert Run.open(run.path).versions() == [0, 1] and not (metrics / "round_0.json").exists()  # readers write nothing
    (run.path / ".evo-lock").write_text(json.dumps({"pid": 999999, "command": "launch"}))  # its holder died
    with Run.open(run.path).lock("resume") as r:
        assert r.took_over["command"] == "launch"
    assert {n: (run.path / n).read_bytes() for n in expected} == expected


def test_a_version_trained_from_an_older_parent_is_refused(tmp_path):
    run = Run.create(tmp_path / "r", {})
    g = evo.zoo.load("small_cnn")
    run.commit_version(g, {"ops": []})
    run.commit_version(g, {"ops": [], "parent": 0})
    with pytest.raises(RunError, match="started from version 0"):
        run.commit_version(g, {"ops": [], "parent": 0})  # the lineage would say v2 ← v1, but it was trained from v0
    assert run.versions() == [0, 1]


def test_work_cut_by_a_killed_driver_is_recorded_apart_not_charged(tmp_path):
    from evo.search.driver import DRIVER_STOPPED, Driver, spent_flops
    from evo.search.storage import open_storage

    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="round-0", storage=storage)
    done = study.ask()
    done.set_user_attr("flops", 10)
    study.tell(done, 0.5)
    cut = study.ask()  # RUNNING when the driver was killed, priced near the whole budget
    cut.set_user_attr("price_flops", 1000)
    drv = Driver.__new__(Driver)
    drv.say, drv.storage = (lambda s: None), storage
    drv._recover(study)
    t = study.trials[1]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["fail_reason"] == DRIVER_STOPPED
    assert t.user_attrs["lost_flops"] == 1000 and spent_flops(study) == 10


def _space(tmp_path: Path, **edits) -> Path:
    doc = {"name": "tiny", "scenario": {"kind": "class_incremental", "source": "digits", "increments": 2, "seed": 0,
                                        "per_class_train": 20, "per_class_test": 10},
           "model": {"name": "small_cnn", "input_size": 32}, "memory": 100,
           "training": {"strategy": ["evo"], "taps": "features"}, "budget": {"fraction_of_joint": 2.0},
           "trials": 2, "concurrency": 1}
    for key, value in edits.items():
        section, _, leaf = key.partition("__")
        if leaf:
            doc[section][leaf] = value
        else:
            doc[section] = value
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("edits,needle", [
    ({"scenario__per_class_train": -5}, "per_class_train"),
    ({"scenario__source": "/no/such/folder"}, "/no/such/folder"),
    ({"scenario__source": "magic"}, "magic"),
    ({"model__name": "no_such_model"}, "no_such_model"),
    ({"training": {"strategy": ["evo_tune"], "lr": -1.0}}, "lr"),
    ({"training": {"strategy": ["evo_tune"], "trainable": [1, 40]}}, r"trainable: 40 is more blocks .*\(5: stem"),
    ({"budget": {"fraction_of_joint": 1e-6}}, "budget.fraction_of_joint 1e-06 buys .* round 0"),
])
def test_launch_validates_everything_before_creating_the_run(tmp_path, edits, needle):
    import ray

    from evo.search.launch import launch

    was_up = ray.is_initialized()
    with pytest.raises(EvoError, match=needle):
        launch(_space(tmp_path, **edits), run_dir=tmp_path / "run", say=lambda s: None)
    assert not (tmp_path / "run").exists()
    assert ray.is_initialized() == was_up  # Ray was not started for a space that cannot run


@pytest.mark.parametrize("args,needle", [(["--memory", "-5"], "memory"), (["--strategy", "magic"], "magic"),
                                         (["--strategy", "evo_latent"], "does not keep"),
                                         (["--head", "sideways"], "head")])
def test_learn_validates_options_before_creating_the_run(tmp_path, args, needle):
    data = _digits_folder(tmp_path / "d", [0, 1], n=5)
    proc = _evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(tmp_path / "run"), *args)
    _one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


# ---- must fix: silently wrong results ------------------------------------------------------------

def test_a_path_that_exists_is_a_path_and_builtins_need_their_prefix(tmp_path):
    _digits_folder(tmp_path / "digits", [5, 6], n=4)
    train, _ = evo.data.load_source(tmp_path / "digits")
    assert train.classes == ["d5", "d6"]
    proc = _evo("learn", "small_cnn", "--data", "digits", "--run-dir", str(tmp_path / "r1"), "--no-progress",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Run.open(tmp_path / "r1").version_meta(1)["classes"] == ["d5", "d6"]  # the folder, not scikit-learn's
    for spec in ("folder", "digitz"):
        proc = _evo("learn", "small_cnn", "--data", spec, "--run-dir", str(tmp_path / "r2"), cwd=tmp_path)
        _one_line_error(proc, spec, "builtin:digits")
    train, _ = evo.data.load_source("builtin:digits")
    assert len(train.classes) == 10


def test_learning_the_same_images_twice_is_caught(learned_run, tmp_path):
    again = _digits_folder(tmp_path / "a", [0, 1])  # the images the fixture's run learned
    proc = _evo("learn", str(learned_run), "--data", str(again), "--no-progress")
    _one_line_error(proc, "learned into this run before", "--allow-duplicates")
    assert Run.open(learned_run).versions() == [0, 1]
    from evo.learn_run import _keys, image_hashes

    _, _, before = Run.open(learned_run).load_version()
    more = _digits_folder(tmp_path / "a", [0, 1], n=40)  # the same 30 per class plus 10 new ones
    train, _ = evo.data.load_source(more, size=(32, 32))
    known = int(np.isin(_keys(image_hashes(train.images)), _keys(before["run.seen"].numpy())).sum())
    assert 0 < known < len(train)
    proc = _evo("learn", str(learned_run), "--data", str(more), "--no-progress")
    assert proc.returncode == 0 and f"skipped {known} image(s) already learned" in proc.stdout, proc.stdout + proc.stderr
    _, _, state = Run.open(learned_run).load_version()
    assert len(state["run.seen"]) == len(before["run.seen"]) + len(train) - known


def test_manifest_rows_twice_and_files_under_two_labels(tmp_path):
    _digits_folder(tmp_path, [0, 1], n=10)
    rows = [f"d{lab}/{p.name},d{lab}" for lab in (0, 1) for p in sorted((tmp_path / f"d{lab}").iterdir())]
    (tmp_path / "twice.csv").write_text("\n".join(rows + rows))
    train, test = evo.data.load_source(tmp_path / "twice.csv")
    assert len(train) + len(test) == 20 and sum("listed twice" in s for s in train.skipped) == 20
    hashes = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in hashes for img in test.images)  # no held-out image is also a training image
    (tmp_path / "clash.csv").write_text("\n".join(rows + [rows[0].split(",")[0] + ",d1"]))
    with pytest.raises(DataError, match="two labels"):
        evo.data.load_source(tmp_path / "clash.csv")
    twin = tmp_path / "d1" / "copy.png"
    twin.write_bytes((tmp_path / rows[0].split(",")[0]).read_bytes())  # a d0 image saved as d1
    with pytest.raises(DataError, match="same image with different labels"):
        evo.data.load_source(tmp_path)


def test_one_class_only_is_refused(tmp_path):
    data = _digits_folder(tmp_path / "d", [3], n=10)
    proc = _evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(tmp_path / "run"))
    _one_line_error(proc, "one class", "d3")
    assert not (tmp_path / "run").exists()


def test_mixed_sizes_are_resized_to_the_model_as_read(tmp_path):
    data = _digits_folder(tmp_path / "d", [0, 1], n=8, size=28)
    for i in range(2):
        Image.new("RGB", (4000, 4000), (200, 10 * i, 0)).save(data / "d0" / f"big{i}.png")
    train, test = evo.data.load_source(data, size=(32, 32))
    assert train.images.shape[1:] == (32, 32, 3) and test.images.shape[1:] == (32, 32, 3)
    proc = _evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr


def test_a_class_the_model_already_has_names_the_cli_option(tmp_path):
    data = tmp_path / "d"
    for name in ("class_4", "other"):
        (data / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((32, 32, 3), 20 * i + (120 if name == "other" else 0), np.uint8)).save(
                data / name / f"{i}.png")
    proc = _evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(tmp_path / "run"))
    _one_line_error(proc, "--head reset", "class_4")
    assert not (tmp_path / "run").exists()
    proc = _evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--head", "reset",
                "--no-progress")
    assert proc.returncode == 0 and "replaced by the 2 classes" in proc.stdout, proc.stdout + proc.stderr


def test_memory_and_strategy_are_saved_with_the_run(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["learn", "small_cnn", "--data", str(_digits_folder(tmp_path / "a", [0, 1], n=40)), "--run-dir",
                 str(run_dir), "--memory", "30", "--no-progress"]) == 0
    assert main(["learn", str(run_dir), "--data", str(_digits_folder(tmp_path / "b", [2, 3], n=40, offset=900)),
                 "--no-progress"]) == 0
    run = Run.open(run_dir)
    assert run.version_meta(2)["learn"]["memory"] == 30
    _, _, state = run.load_version()
    assert len(state["memory.labels"]) == 30


def test_an_integer_tensor_in_a_saved_model_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    eg.save(evo.zoo.load("small_cnn"), tmp_path / "m")
    w = load_file(str(tmp_path / "m" / "weights.safetensors"))
    key = next(k for k in w if k.endswith("weight"))
    w[key] = w[key].to(torch.int64)
    save_file(w, str(tmp_path / "m" / "weights.safetensors"))
    with pytest.raises(EvoError, match="dtype torch.int64"):
        eg.load(tmp_path / "m")


def test_dashboard_message_says_whether_token_auth_is_on():
    from evo.search.cluster import ClusterInfo
    from evo.search.launch import _say_cluster

    said: list[str] = []
    _say_cluster(ClusterInfo("local", "http://127.0.0.1:8265", 2, 0, 1, token_auth=False), said.append)
    _say_cluster(ClusterInfo("local", "http://127.0.0.1:8265", 2, 0, 1, token_auth=True), said.append)
    assert "token auth OFF" in said[0] and "token auth on" in said[1]


# ---- tracebacks turned into one-line errors -------------------------------------------------------

def test_run_dir_naming_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    data = _digits_folder(tmp_path / "d", [0, 1], n=3)
    _one_line_error(_evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(f)), "is a file")
    _one_line_error(_evo("launch", str(_space(tmp_path)), "--run-dir", str(f)), "is a file")
    _one_line_error(_evo("launch", str(_space(tmp_path)), "--run-dir", str(f / "sub")), "which is a file")
    assert f.read_text() == "x"


def test_resume_of_a_run_whose_config_is_damaged(learned_run, tmp_path):
    """A search run's damaged config.json is named in one line, and nothing is written (it was a
    JSONDecodeError, or for a JSON list a wrong 'made by evo learn')."""
    run = tmp_path / "run"
    shutil.copytree(learned_run, run)
    marker = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**marker, "kind": "search"}))
    for damage in ("{", "[1]"):
        (run / "config.json").write_text(damage)
        before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
        _one_line_error(_evo("resume", str(run)), "config.json")
        assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_resume_of_a_learn_run(learned_run):
    _one_line_error(_evo("resume", str(learned_run)), "evo learn")


def test_broken_pipe_and_bad_input_size(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m evo.cli inspect efficientnet_lite0 --random-init | head -1",
                          shell=True, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and proc.stdout.strip()
    _one_line_error(_evo("inspect", "small_cnn", "--input-size", "0"), "input-size")
    with pytest.raises(EvoError, match="input_size"):
        evo.zoo.load("small_cnn", input_size=0)


def test_control_characters_in_class_names_are_escaped(tmp_path):
    data = tmp_path / "d"
    for name in ("a\x1b[31mred", "b"):
        (data / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((32, 32, 3), 20 * i + (120 if name == "b" else 0), np.uint8)).save(
                data / name / f"{i}.png")
    run_dir = tmp_path / "run"
    proc = _evo("learn", "small_cnn", "--data", str(data), "--run-dir", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    status = _evo("status", str(run_dir))
    assert "\x1b" not in proc.stdout + status.stdout + status.stderr


def test_candidate_and_graph_saves_swap_atomically(tmp_path):
    from evo.search.worker import load_candidate, save_candidate

    g = evo.zoo.load("small_cnn")
    out = tmp_path / "round-0" / "trial-1"
    save_candidate(out, g, {"x": torch.zeros(2)}, {"metrics": {"accuracy": 0.1}})
    save_candidate(out, evo.ops.apply(g, "add_classes", k=1), {"x": torch.ones(2)}, {"metrics": {"accuracy": 0.2}})
    graph, state, report = load_candidate(out)
    assert report["metrics"]["accuracy"] == 0.2 and torch.equal(state["x"], torch.ones(2))
    assert len(graph.classes or []) == len(g.classes or []) + 1 or graph.attrs(graph.head)["out_features"] == 11
    assert sorted(p.name for p in out.parent.iterdir()) == ["trial-1"]  # no temporary or old copy left


# ---- fault injection ----------------------------------------------------------------------------

def _versions_bytes(run_dir: Path) -> dict[int, dict[str, bytes]]:
    run = Run(run_dir)
    return {n: {str(p.relative_to(run.version_dir(n))): p.read_bytes()
                for p in sorted(run.version_dir(n).rglob("*")) if p.is_file()} for n in run.versions()}


def test_kill_9_during_learn_with_concurrent_readers(tmp_path):
    """A writer (`evo learn`, one increment after another) is SIGKILLed at random moments while two
    `evo status` readers loop. After every kill: each reader exited 0 or 2 with one line (never a
    traceback), every committed version is byte-identical to before, and the learn, run again, goes on."""
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "run"
    parts = [_digits_folder(tmp_path / f"p{i}", [2 * i, 2 * i + 1], n=20) for i in range(4)]
    assert main(["learn", "small_cnn", "--data", str(parts[0]), "--run-dir", str(run_dir), "--no-progress"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # each reader loops until the part's stop file appears (after the re-learn), at least once, 120 s at most
    reader_code = ("import os, subprocess, sys, time\nend = time.time() + 120; bad = 0; n = 0\n"
                   "while n == 0 or (not os.path.exists(sys.argv[2]) and time.time() < end):\n"
                   "    n += 1\n"
                   "    p = subprocess.run([sys.executable, '-m', 'evo.cli', 'status', sys.argv[1]], capture_output=True,"
                   " text=True)\n"
                   "    bad += p.returncode not in (0, 2) or 'Traceback' in p.stderr\n"
                   "print(bad)")
    kills = 0
    for i, part in enumerate(parts[1:], 1):
        committed = _versions_bytes(run_dir)
        stop = tmp_path / f"stop{i}"
        readers = [subprocess.Popen([sys.executable, "-c", reader_code, str(run_dir), str(stop)], stdout=subprocess.PIPE,
                                    text=True, env=env) for _ in range(2)]
        writer = subprocess.Popen([sys.executable, "-m", "evo.cli", "learn", str(run_dir), "--data", str(part),
                                   "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        time.sleep(float(rng.uniform(1.0, 6.0)))
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
            kills += 1
        writer.wait()
        after = _versions_bytes(run_dir)
        assert all(after[n] == b for n, b in committed.items())  # committed work untouched
        again = _evo("learn", str(run_dir), "--data", str(part), "--no-progress")  # the readers still read
        stop.touch()
        assert all(int(r.communicate(timeout=180)[0].strip()) == 0 for r in readers)
        if again.returncode != 0:  # the killed learn had committed already: its images are known
            assert "learned into this run before" in again.stderr, again.stderr
        assert Run(run_dir).version_meta(Run(run_dir).latest())["classes"][-2:] == [f"d{2 * i}", f"d{2 * i + 1}"]
        for n in Run(run_dir).versions():
            eg.load(Run(run_dir).version_dir(n))  # every version loads
    assert Run(run_dir).versions() == [0, 1, 2, 3, 4]
    assert not list(run_dir.rglob(".evo-tmp-*"))  # a later writer removed what the killed ones left
    assert kills >= 1
    (tmp_path / "kills.json").write_text(json.dumps({"kills": kills}))


def test_trainable_above_the_block_count_means_every_block_unless_a_space_sets_it(tmp_path):
    """evo_tune's default `trainable: 2` must still train a model with fewer blocks; a space that sets N
    above the count is refused (its launch parametrisation above)."""
    from evo.graph.taps import blocks
    from evo.learn.train import STRICT_TRAINABLE, trainable_nodes

    g = evo.zoo.load("small_cnn")
    n = len(blocks(g))
    assert trainable_nodes(g, n + 5) == trainable_nodes(g, n)
    token = STRICT_TRAINABLE.set(True)
    try:
        with pytest.raises(EvoError, match=rf"trainable: {n + 5} is more blocks .*\({n}: "):
            trainable_nodes(g, n + 5)
    finally:
        STRICT_TRAINABLE.reset(token)


def test_a_space_whose_cheapest_candidate_is_another_strategys_is_priced_at_that(tmp_path):
    """`evo_tune` with `trainable: 0` computes the fast path and is priced as `evo`: the budget floor
    must count that, or a space the driver can run is refused (review of the floor)."""
    from evo.search import load_space
    from evo.search.launch import check_space, round_floor
    from evo.search.scenario import stream_for

    evo_only = load_space(_space(tmp_path))
    (tmp_path / "t").mkdir()
    tune = load_space(_space(tmp_path / "t", training={"strategy": ["evo_tune"], "trainable": [0, 2],
                                                       "taps": "features"}))
    floors = []
    for space in (evo_only, tune):
        graph, stream = check_space(space), stream_for(space)
        floors.append([round_floor(space, graph, stream, None, i) for i in range(len(stream))])
    assert [f[0] for f in floors[1]] == ["evo"] * len(floors[1])
    assert [f[1] for f in floors[1]] == [f[1] for f in floors[0]]


def test_a_huge_image_in_a_folder_is_skipped_with_the_reason(tmp_path, capsys):
    data = _digits_folder(tmp_path / "d", [0, 1], n=6)
    Image.new("L", (9000, 8000)).save(data / "d0" / "big.png")
    assert main(["learn", "small_cnn", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 of them over evo's 67 MP limit (downscale them to learn them)" in out and "big.png" in out
