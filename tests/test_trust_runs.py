"""A run folder can be trusted: continuing one runs no code from it, it has one writer at a time, and a run killed or
stopped anywhere and continued with -i ends with the uninterrupted run's weights, bit for bit."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

import train
from agents import load_agent
from agents.runs import LOCK
from tests.conftest import write_mvtec_tree
from tests.test_train import run_args

ROOT = Path(__file__).resolve().parents[1]
STEPS = 64  # 8 episodes of 8 steps, rollouts of 16, a checkpoint at every rollout start
EVAL_FREQ = 24  # validations at 24 and 48, which a checkpoint at 32 does not divide
RESUME = ["--no-progress", "-v", "0", "--no-evaluate"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mvtec_tree(root, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    return root


def args(data_root: Path, logs: Path) -> list[str]:
    argv = run_args(data_root, logs, "reinforce", STEPS, "--no-evaluate")
    argv[argv.index("--eval-freq") + 1] = str(EVAL_FREQ)
    return argv


def run_of(logs: Path) -> Path:
    return logs / "reinforce" / "MVTecPatch-v0_1"


def digest(run: Path) -> dict[str, str]:
    """SHA-256 of the best and last detector files and of the sampler's weights."""
    with zipfile.ZipFile(run / "agent.zip") as archive:
        policy = archive.read("policy.pth")
    files = {name: (run / name).read_bytes() for name in ("best_detector.pt", "best_detector.json", "detector.pt")}
    return {name: hashlib.sha256(data).hexdigest() for name, data in {**files, "policy.pth": policy}.items()}


def validation_steps(run: Path) -> set[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: set[int] = set()
    for event in (run / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        if "eval/pixel_f1max" in accumulator.Tags()["scalars"]:
            steps |= {e.step for e in accumulator.Scalars("eval/pixel_f1max")}
    return steps


@pytest.fixture(scope="module")
def uninterrupted(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = tmp_path_factory.mktemp("uninterrupted")
    assert train.main(args(data_root, logs)) == 0
    return run_of(logs)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


# --- a received run folder runs no code ----------------------------------------------------------------------------
class WritesFile:
    """Unpickling this writes ``path``: a stand-in for any code a crafted file could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def plant(zip_path: Path, marker: Path) -> None:
    """Replace the zip's observation space with a pickled payload that writes ``marker`` (as SB3 stores a pickle)."""
    with zipfile.ZipFile(zip_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    payload = base64.b64encode(pickle.dumps(WritesFile(marker))).decode()
    data["observation_space"] = {":type:": "<class 'gymnasium.spaces.box.Box'>", ":serialized:": payload}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)


def test_a_pickled_agent_zip_is_refused_without_running_it(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cloudpickle

    probe = tmp_path / "probe"  # the payload is live: unpickling it (as SB3's load does) writes its file
    cloudpickle.loads(pickle.dumps(WritesFile(probe)))
    assert probe.is_file()

    run = tmp_path / "received"
    shutil.copytree(uninterrupted, run)
    for name in ("agent.zip", "best_detector.pt", "detector.pt"):  # let -i have work left to do
        (run / name).unlink()
    checkpoint = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    marker = tmp_path / "payload_ran"
    plant(checkpoint / "agent.zip", marker)
    config = (run / "config.yml").read_text()
    assert train.main(["-i", str(run), *RESUME]) == 2
    err = one_line_error(capsys)
    assert "pickled" in err and "agent.zip" in err
    assert not marker.exists()
    assert (run / "config.yml").read_text() == config and not (run / "detector.pt").exists()  # nothing written

    with pytest.raises(ValueError, match="pickled Python objects"):
        load_agent("reinforce", checkpoint / "agent.zip")
    assert not marker.exists()
    agent_zip = json.loads(zipfile.ZipFile(uninterrupted / "agent.zip").read("data"))
    assert not [key for key, value in agent_zip.items() if isinstance(value, dict) and ":serialized:" in value]


# --- one writer per run folder ------------------------------------------------------------------------------------
def hold_lock(run: Path) -> int:
    """Hold the run folder's lock as another process would (a separate open file: flock is per open file)."""
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"4242\n", 0)
    return fd


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_a_run_folder_being_trained_refuses_a_second_writer(
    uninterrupted: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "running"
    shutil.copytree(uninterrupted, run)
    (run / "agent.zip").unlink()  # a run still training
    unet = tmp_path / "unet" / "MVTecPatch-v0_1"  # a baseline's folder, its checkpoint written
    unet.mkdir(parents=True)
    from agents.run_config import resolve_config

    parsed = train.build_parser().parse_args(["--method", "unet", "--data-root", str(data_root), "--category", "widget"])
    (unet / "config.yml").write_text(yaml.safe_dump(resolve_config(parsed), sort_keys=False))
    (unet / "checkpoints").mkdir()
    (unet / "checkpoints" / "trainer.pt").write_bytes(b"a baseline's checkpoint")
    for folder, extra in ((run, ["-n", "80"]), (unet, [])):
        fd = hold_lock(folder)
        try:
            before = snapshot(folder)
            assert train.main(["-i", str(folder), *extra, *RESUME]) == 2
            err = one_line_error(capsys)
            assert str(folder) in err and "in use by another training process (pid 4242)" in err
            assert snapshot(folder) == before  # not a byte written
        finally:
            os.close(fd)
    assert train.main(["-i", str(run), *RESUME]) == 0  # free again: the run continues
    assert (run / "agent.zip").is_file()


def test_a_second_process_on_a_run_folder_is_refused(uninterrupted: Path, tmp_path: Path) -> None:
    """The lock holds across processes: a training process keeps it until it ends, however it ends."""
    run = tmp_path / "running"
    shutil.copytree(uninterrupted, run)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from agents.runs import hold_run\nwith hold_run({str(run)!r}):\n    input()"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ((run / LOCK).is_file() and (run / LOCK).read_text().strip() == str(holder.pid)):
            assert holder.poll() is None and time.monotonic() < deadline, "the holder did not take the lock"
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "train.py", "-i", str(run), *RESUME], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr[-2000:]
        err = done.stderr.strip().splitlines()[-1]
        assert str(run) in err and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


# --- a killed and continued run is the uninterrupted run -----------------------------------------------------------
KILL_AT = """
import os, signal, sys
import train
from envs.mvtec_patch import MVTecPatchEnv

step = MVTecPatchEnv.step


def step_then_die(self, action):
    if self.global_step == {at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, action)


MVTecPatchEnv.step = step_then_die
sys.exit(train.main({argv!r}))
"""


@pytest.mark.parametrize("at", [3, 37], ids=["after-the-warm-up-checkpoint", "mid-episode-after-a-checkpoint"])
def test_a_killed_run_continued_with_i_is_the_uninterrupted_run(
    uninterrupted: Path, data_root: Path, tmp_path: Path, at: int
) -> None:
    code = KILL_AT.format(at=at, argv=args(data_root, tmp_path))
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    run = run_of(tmp_path)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["num_timesteps"] == at - at % 16
    assert train.main(["-i", str(run), *RESUME]) == 0
    assert digest(run) == digest(uninterrupted)
    assert validation_steps(run) == validation_steps(uninterrupted) == {24, 48, 64}  # multiples of 24, and the end
    rows = [line.split(",")[:2] for line in (run / "monitor.csv").read_text().splitlines()[2:]]
    assert rows == [line.split(",")[:2] for line in (uninterrupted / "monitor.csv").read_text().splitlines()[2:]]


def test_ctrl_c_in_training_then_i_is_the_uninterrupted_run(
    uninterrupted: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envs.mvtec_patch import MVTecPatchEnv

    step = MVTecPatchEnv.step

    def interrupted_step(self: MVTecPatchEnv, action: int) -> tuple:
        if self.global_step == 41:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, action)

    monkeypatch.setattr(MVTecPatchEnv, "step", interrupted_step)
    assert train.main(args(data_root, tmp_path)) == 130
    assert one_line_error(capsys).startswith("error: interrupted at 48 steps")  # at the next rollout's start
    monkeypatch.setattr(MVTecPatchEnv, "step", step)
    assert train.main(["-i", str(run_of(tmp_path)), *RESUME]) == 0
    assert digest(run_of(tmp_path)) == digest(uninterrupted)


# --- Ctrl-C in the warm-up -----------------------------------------------------------------------------------------
def test_ctrl_c_in_the_warm_up_stops_with_one_line_and_i_starts_again(
    uninterrupted: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envs.mvtec_patch import MVTecPatchEnv

    def interrupted_warm_up(self: MVTecPatchEnv, progress: bool = False) -> None:
        self.detector.pretrain_ae(epochs=1)
        raise KeyboardInterrupt  # Ctrl-C half-way through

    monkeypatch.setattr(MVTecPatchEnv, "warm_up", interrupted_warm_up)
    assert train.main(args(data_root, tmp_path)) == 130
    run = run_of(tmp_path)
    err = one_line_error(capsys)
    assert "before the first checkpoint" in err and f"-i {run}" in err
    monkeypatch.undo()
    assert train.main(["-i", str(run), *RESUME]) == 0  # the same run, from the beginning
    assert digest(run) == digest(uninterrupted)
