"""Two local processes (4 CPU devices each, coordinator on 127.0.0.1) train the tiny model to the same losses as
one process with 8 devices, through the real entry point: `python -m jaxllm.train --distributed.*`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from jaxllm.data.prepare import prepare
from jaxllm.train.distributed import EXIT_PEER_LOST
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
    try:
        for line in procs[0].stdout:  # wait until both processes are stepping together, past the checkpoint
            if line.startswith("step 30/"):
                break
        procs[1].kill()
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=120)  # a hang fails here
        ended_s = time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()
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
