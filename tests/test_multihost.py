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
from tests.conftest import tiny_config
from tests.multidevice import REPO, env

MESH = ["--mesh.data=2", "--mesh.fsdp=2", "--mesh.tensor=2"]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, tmp_path / "cache", steps=4, log_every=1, batch_size=8)
    experiment = tmp_path / "tiny_multihost.py"
    experiment.write_text(
        "import json\nfrom jaxllm.config import config_from_dict\n\n"
        f"def config():\n    return config_from_dict(json.loads({cfg.to_json()!r}))\n"
    )
    command = [sys.executable, "-m", "jaxllm.train", f"--experiment={experiment}", *MESH]

    # One process, 8 devices; it also prepares the data both later processes then reuse.
    single = subprocess.run(
        [*command, f"--run_dir={tmp_path / 'one'}"], env=env(8), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                *command,
                f"--run_dir={tmp_path / 'two'}",
                f"--distributed.coordinator=127.0.0.1:{port}",
                "--distributed.num_processes=2",
                f"--distributed.process_id={i}",
                "--distributed.timeout_s=60",
            ],
            env=env(4),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
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
def test_a_dead_peer_ends_the_other_process_with_an_error(tiny_corpus, tmp_path):
    """Process 1 is killed mid-training; process 0 must stop with an error within the timeout, not hang."""
    cfg = tiny_config(
        tiny_corpus,
        tmp_path / "cache",
        steps=100_000,
        log_every=1,
        batch_size=8,
        eval_every=100_000,
        checkpoint_every=100_000,
    )
    prepare(cfg, progress=False)  # both processes then reuse it
    experiment = tmp_path / "tiny_dead_peer.py"
    experiment.write_text(
        "import json\nfrom jaxllm.config import config_from_dict\n\n"
        f"def config():\n    return config_from_dict(json.loads({cfg.to_json()!r}))\n"
    )
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jaxllm.train",
                f"--experiment={experiment}",
                *MESH,
                f"--run_dir={tmp_path / 'run'}",
                f"--distributed.coordinator=127.0.0.1:{port}",
                "--distributed.num_processes=2",
                f"--distributed.process_id={i}",
                "--distributed.timeout_s=20",
            ],
            env=env(4),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for line in procs[0].stdout:  # wait until both processes are stepping together
            if line.startswith("step 3/"):
                break
        procs[1].kill()
        procs[0].stdout.close()
        killed_at = time.monotonic()
        returncode = procs[0].wait(timeout=120)  # a hang fails here
        print(f"process 0 ended {time.monotonic() - killed_at:.1f}s after its peer was killed")
    finally:
        for p in procs:
            p.kill()
    assert returncode != 0
