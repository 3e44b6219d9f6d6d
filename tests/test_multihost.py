"""Two local processes (4 CPU devices each, coordinator on 127.0.0.1) train the tiny model to the same losses as
one process with 8 devices, through the real entry point: `python -m jaxllm.train --distributed.*`; a dead process,
the coordinator included, ends the other one at once with one line."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from jaxllm.data.prepare import prepare
from jaxllm.train.distributed import EXIT_PEER_LOST
from jaxllm.train.supervisor import HOLD_S, forward, lost_line, lost_processes
from tests.conftest import tiny_config
from tests.multidevice import REPO, env

MESH = ["--mesh.data=2", "--mesh.fsdp=2", "--mesh.tensor=2"]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _experiment(cfg, path):
    path.write_text(
        "import json\nfrom jaxllm.config import config_from_dict\n\n"
        f"def config():\n    return config_from_dict(json.loads({cfg.to_json()!r}))\n"
    )
    return path


def _two_processes(experiment, run_dir) -> list[subprocess.Popen]:
    """`python -m jaxllm.train` as processes 0 and 1 of one run (4 devices each), coordinated on 127.0.0.1."""
    port = _free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jaxllm.train",
                f"--experiment={experiment}",
                *MESH,
                f"--run_dir={run_dir}",
                f"--distributed.coordinator=127.0.0.1:{port}",
                "--distributed.num_processes=2",
                f"--distributed.process_id={i}",
            ],
            env=env(4),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_two_processes_match_one(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, tmp_path / "cache", steps=4, log_every=1, batch_size=8)
    experiment = _experiment(cfg, tmp_path / "tiny_multihost.py")
    command = [sys.executable, "-m", "jaxllm.train", f"--experiment={experiment}", *MESH]

    # One process, 8 devices; it also prepares the data both later processes then reuse.
    single = subprocess.run(
        [*command, f"--run_dir={tmp_path / 'one'}"], env=env(8), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]

    procs = _two_processes(experiment, tmp_path / "two")
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "step 4/4" in outputs[0][0] and "step 4/4" not in outputs[1][0]  # only process 0 reports

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    rel = max(abs(a - b) / abs(b) for a, b in zip(two, one))
    print(f"2 processes x 4 devices: {two}; 1 process x 8 devices: {one}; relative {rel:.1e}")
    assert rel <= 1e-5, (two, one)


def _kill_at_step(procs, step: int, victim: int) -> tuple[str, float]:
    """Kills procs[victim] (kill -9) once process 0 logs `step`; the survivor's stderr and the seconds it took to
    end after the kill (a hang fails in communicate's timeout)."""
    survivor = procs[1 - victim]
    try:
        for line in procs[0].stdout:
            if line.startswith(f"step {step}/"):
                break
        procs[victim].kill()
        killed_at = time.monotonic()
        _, err = survivor.communicate(timeout=120)
        return err, time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()


@pytest.mark.slow
def test_a_dead_peer_ends_the_other_process_at_once_and_a_restart_resumes_exactly(tiny_corpus, tmp_path):
    """Process 1 is killed (kill -9) at step 30 of 40, with the default timeouts: process 0 must end within seconds
    with one line naming process 1 and status 69 (not hang in JAX's shutdown barrier for minutes); both restarted,
    the run resumes from its step-20 checkpoint, recomputing steps 21-30 to the losses logged before the kill."""
    cfg = tiny_config(
        tiny_corpus, tmp_path / "cache", steps=40, log_every=1, batch_size=8, eval_every=40, checkpoint_every=20
    )
    prepare(cfg, progress=False)  # both processes then reuse it
    experiment = _experiment(cfg, tmp_path / "tiny_dead_peer.py")

    procs = _two_processes(experiment, tmp_path / "run")
    err, ended_s = _kill_at_step(procs, 30, victim=1)  # both stepping together, past the checkpoint
    print(f"process 0 ended {ended_s:.1f}s after its peer was killed")
    assert procs[0].returncode == EXIT_PEER_LOST, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: process 0 lost contact with process 1 after step ")
    assert ended_s < 30
    before = _losses(tmp_path / "run")
    assert len(before) >= 30

    procs = _two_processes(experiment, tmp_path / "run")
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    after = _losses(tmp_path / "run")[len(before) :]
    assert len(after) == 20  # steps 21-40, from the step-20 checkpoint
    assert after[:10] == before[20:30]


@pytest.mark.slow
def test_a_dead_coordinator_ends_the_other_process_at_once_with_one_line(tiny_corpus, tmp_path):
    """Process 0 (the coordinator: JAX's coordination service lives in it) is killed (kill -9) at step 2: JAX's
    client in process 1 aborts at once, and its supervising parent must end within 5 s with status 69 and one line
    naming process 0, holding back the native stack dump (or process 1 ends itself so, when a failed collective
    shows the loss first: the line then adds that error)."""
    cfg = tiny_config(
        tiny_corpus, tmp_path / "cache", steps=1000, log_every=1, batch_size=8, eval_every=1000, checkpoint_every=1000
    )
    prepare(cfg, progress=False)
    procs = _two_processes(_experiment(cfg, tmp_path / "tiny_dead_coordinator.py"), tmp_path / "run")
    err, ended_s = _kill_at_step(procs, 2, victim=0)
    print(f"process 1 ended {ended_s:.2f}s after the coordinator was killed")
    assert procs[1].returncode == EXIT_PEER_LOST, err[-3000:]
    assert "stack trace" not in err and "client.h" not in err, err[-3000:]
    assert re.fullmatch(
        r"error: process 1 lost contact with the coordinator, process 0, after step \d+( \(.+\))?; restart every "
        r"process with the same command to resume from the latest checkpoint",
        err.strip().splitlines()[-1],
    ), err[-3000:]
    assert ended_s < 5


# What JAX's client printed when it aborted (jaxlib 0.10.2), after the coordinator died and after process 1 stopped
# sending heartbeats (the service in process 0 reports it).
SERVICE_GONE = b"""E1207 17:01:34.509974   18468 coordination_service_agent.cc:289] Polled an error from coordination
F1207 17:01:34.510021   18468 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was preempted
*** Check failure stack trace: ***
"""
NO_HEARTBEATS = b"""F1207 17:05:45.304125   22097 client.h:80] Terminating process because the JAX distributed service \
detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. \
absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error
"""


def test_the_lost_process_is_read_from_jax_abort():
    assert lost_processes(SERVICE_GONE) == [0]
    assert lost_processes(NO_HEARTBEATS) == [1]
    assert lost_processes(NO_HEARTBEATS.replace(b"\n1\n", b"\n3, 1\n")) == [1, 3]
    assert lost_processes(b"F1207 17:05:45.304125   22097 pjrt.cc:12] Check failed: x == y\n") is None
    assert lost_line(0, [1, 3], 12) == (
        "error: process 0 lost contact with processes 1, 3 after step 12; restart every process with the same command "
        "to resume from the latest checkpoint"
    )
    assert lost_line(1, [0], None, "Gloo all-reduce failed") == (
        "error: process 1 lost contact with the coordinator, process 0, before its first step (Gloo all-reduce "
        "failed); restart every process with the same command to resume from the latest checkpoint"
    )


def test_native_records_are_held_briefly_and_an_abort_for_good():
    """The parent forwards the child's stderr as it comes; a native record (and what follows it) only once HOLD_S
    passed without a fatal record; from a fatal record on, nothing: it is returned, for the parent to judge, once the
    child is gone, even while the pipe stays open (a process the child started holds it)."""
    read, write = os.pipe()
    record = b"E1207 17:01:34.509974   18468 coordination_service_agent.cc:289] Polled an error\n"
    fatal = b"F1207 17:01:34.510021   18468 client.h:80] Terminating process\n*** Check failure stack trace: ***\n"

    def child():
        os.write(write, b"step 1\rstep 2\n" + record + b"detail\n")
        time.sleep(HOLD_S + 0.2)
        os.write(write, record + fatal + b"    @     0x7fb3  (unknown)")

    out, writer = io.BytesIO(), threading.Thread(target=child)
    writer.start()
    held = forward(read, out, writer.is_alive)
    writer.join()
    os.close(read)
    os.close(write)
    assert out.getvalue() == b"step 1\rstep 2\n" + record + b"detail\n"
    assert held == record + fatal + b"    @     0x7fb3  (unknown)"
