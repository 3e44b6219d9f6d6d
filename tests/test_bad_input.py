"""Bad input, every command: one line on stderr naming the problem and its fix, exit status 2, no traceback, and
nothing written. BAD_INPUTS is the table of what was tried and what each prints (the part that must appear)."""

import os
import pathlib
import subprocess
import sys

import pytest

from jaxllm import chat, evaluate, generate, hf, plan
from jaxllm import inspect as inspect_command
from jaxllm.bench import __main__ as bench
from jaxllm.cli import run_main
from jaxllm.data import __main__ as data
from jaxllm.scaling import sweep
from jaxllm.train import command as train

REPO = pathlib.Path(__file__).resolve().parent.parent


def sft(argv):
    return train.main(argv, "sft", lambda cfg: (cfg, None))


def files(tmp: pathlib.Path) -> pathlib.Path:
    """The inputs the table refers to, made in tmp: broken experiment files, a file, a corrupt checkpoint."""
    (tmp / "syntax.py").write_text("def config(:\n")
    (tmp / "imports.py").write_text("import no_such_module\n")
    (tmp / "noconfig.py").write_text("x = 1\n")
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "empty_run").mkdir()
    corrupt = tmp / "corrupt_run" / "checkpoints" / "5"
    for item in ("meta", "state"):
        (corrupt / item).mkdir(parents=True)
        (corrupt / item / "metadata").write_text("{not json")
    (tmp / "hf_empty").mkdir()
    return tmp


# (command, argv with {tmp} for the temporary folder, what the one line must contain)
BAD_INPUTS = [
    (train.main, ["--experiment={tmp}/syntax.py"], "syntax error in the experiment file"),
    (train.main, ["--experiment={tmp}/imports.py"], "failed to load: ModuleNotFoundError: No module named 'no_such"),
    (train.main, ["--experiment={tmp}/noconfig.py"], "defines no config() function"),
    (train.main, ["--experiment=nonexistent"], "unknown experiment 'nonexistent': use one of base"),
    (train.main, ["--mesh.data=3", "--run_dir={tmp}/run"], "uses 3 devices but 1 are available"),
    (train.main, ["--run_dir={tmp}/a_file"], "is a file, not a directory"),
    (train.main, ["--run_dir=/proc/jaxllm/run"], "/proc is not writable"),
    (train.main, ["--run_dir=s3://bucket/run"], "s3://bucket/run: only local paths and gs://bucket/... are supported"),
    (train.main, ["--train.steps=many", "--run_dir={tmp}/run"], "--train.steps='many': expected an integer"),
    (train.main, ["--train.steps=2.5", "--run_dir={tmp}/run"], "--train.steps='2.5': expected an integer"),
    (train.main, ["--model.scan_layers=maybe"], "--model.scan_layers='maybe': expected true or false"),
    (train.main, ['--data.sources={{"a": 1}}'], "unknown data source '{\"a\": 1}'"),
    (train.main, ["--model.nope=1"], "unknown config key --model.nope: ModelConfig has family"),
    (train.main, ["--model.kernels=fast"], "model.kernels='fast': use auto, reference or xla_cpu"),
    (train.main, ["--model.compute_dtype=float16"], "model.compute_dtype='float16': use auto, float32 or bfloat16"),
    (train.main, ["--model.n_head=5"], "model.n_embd=128 is not divisible by model.n_head=5"),
    (train.main, ["--train.budget=soon"], "--train.budget='soon': write a duration such as 10m"),
    (train.main, ["--train.budget_flops=1e14"], "give one budget, not both"),
    (train.main, ["--train.law={tmp}/a_file", "--run_dir={tmp}/run"], "not a fitted law"),
    (train.main, ["--run_dir"], "--run_dir needs a value"),
    (train.main, ["steps=3"], "unexpected argument 'steps=3'"),
    (train.main, ["--experiment=base_sft"], "run it with python -m jaxllm.sft"),
    (sft, ["--experiment=base"], "run it with python -m jaxllm.train"),
    (generate.main, ["--run_dir={tmp}/empty_run", "--prompt=x"], "holds no checkpoints: train first"),
    (generate.main, ["--run_dir={tmp}/corrupt_run", "--prompt=x"], "cannot be read"),
    (generate.main, ["--run_dir={tmp}/corrupt_run", "--step=7"], "--step=7: "),
    (generate.main, ["--run_dir=r", "--top_k=many"], "argument --top_k: invalid int value: 'many'"),
    (generate.main, ["--prompt=x"], "the following arguments are required: --run_dir"),
    (chat.main, ["--run_dir={tmp}/empty_run"], "holds no checkpoints"),
    (evaluate.main, ["--run_dir={tmp}/empty_run"], "holds no checkpoints: train it first"),
    (evaluate.main, ["--run_dir={tmp}/empty_run", "--per_task=0"], "score at least 1 problem a task"),
    (
        hf.main,
        ["import", "--hf_dir={tmp}/hf_empty", "--run_dir={tmp}/run"],
        "has no tokenizer (none of tokenizer.json, tokenizer.model",
    ),
    (hf.main, ["export", "--run_dir={tmp}/corrupt_run", "--out={tmp}/out"], "cannot be read"),
    (hf.main, ["convert"], "invalid choice: 'convert'"),
    (inspect_command.main, ["--run_dir={tmp}/empty_run"], "empty_run holds no checkpoints: pass a run directory"),
    (inspect_command.main, ["--run_dir={tmp}/corrupt_run"], "cannot be read"),
    (inspect_command.main, [], "the following arguments are required: --run_dir"),
    (plan.main, ["--flops=lots"], "--flops='lots': expected a positive number"),
    (plan.main, ["--budget=soon"], "--budget='soon': write a duration"),
    (plan.main, ["--budget=10m", "--flops=1e3"], "drop --flops"),
    (sweep.main, ["--part=3/2"], "--part='3/2': write i/n"),
    (sweep.main, ["--budgets=x", "--dry_run"], "--budgets"),
    (data.main, ["--data.sources=[]"], "data.sources is empty"),
    (data.main, ['--data.sources=["nothing:here"]'], "unknown data source 'nothing:here'"),
    (train.main, ['--data.sources=["jsonl:x.jsonl"]'], "expected jsonl:GLOB:FIELD"),
    (data.main, ['--data.sources=["warc:crawl/*.warc.gz"]'], "data source warc:crawl/*.warc.gz: no file matches"),
    (
        data.main,
        ["--experiment=fineweb_edu"],  # its Parquet files not downloaded (the experiment's docstring says how)
        "data source parquet:data/fineweb-edu/sample/10BT/*.parquet: no file matches",
    ),
    (data.main, ['--data.sources=["site-packages:lots"]'], "'lots' is not a size in megabytes"),
    (data.main, ["--data.engine=spark"], "data.engine='spark': use local or ray"),
    (data.main, ["--data.ray_address=auto"], "data.ray_address='auto' is for --data.engine=ray"),
    (
        bench.main,
        ["nonsense"],
        "usage: python -m jaxllm.bench {train,generate,speedrun,budget,serve,dedup,data,resilience,storage}",
    ),
    (bench.main, ["data", "--rounds=0"], "--rounds='0': expected a whole number >= 1"),
    (bench.main, ["data", "--source=site-packages:lots"], "'lots' is not a size in megabytes"),
    (bench.main, ["data", "--datatrove=/nonexistent"], "--datatrove=/nonexistent: no bin/python there"),
    (bench.main, ["storage", "--checkpoint_every=0"], "--checkpoint_every='0': expected a whole number >= 1"),
    (bench.main, ["resilience", "--trials_term=many"], "--trials_term='many': expected a whole number >= 0"),
    (bench.main, ["serve"], "python -m jaxllm.bench serve needs --run_dir=DIR"),
    (bench.main, ["serve", "--run_dir=r", "--concurrency=1,x"], "a flag is not a number"),
    (bench.main, ["budget", "--fixed=nope"], "unknown experiment 'nope'"),
    (bench.main, ["budget", "--budget=soon"], "--budget='soon'"),
    (bench.main, ["train", "--compare=tf"], "--compare='tf': use --compare=hf"),
]


@pytest.mark.parametrize(
    "main, argv, message", BAD_INPUTS, ids=[f"{m.__module__.split('.')[-1]}:{' '.join(a)}" for m, a, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_with_status_2_and_writes_nothing(main, argv, message, tmp_path, capsys):
    tmp = files(tmp_path)
    before = sorted(p.relative_to(tmp) for p in tmp.rglob("*"))
    cwd = os.getcwd()
    os.chdir(tmp)  # a default run directory (runs/<experiment>) would land here
    try:
        status = run_main(main, [a.format(tmp=tmp) for a in argv])
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert out == ""  # validation comes before anything is printed
    assert sorted(p.relative_to(tmp) for p in tmp.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-m", "jaxllm.train", "--mesh.data=3"], "uses 3 devices but 1 are available"),
        (["-m", "jaxllm.generate", "--run_dir=/nonexistent/run"], "holds no checkpoints"),
        (["-m", "jaxllm.inspect", "--run_dir=/nonexistent/run"], "holds no checkpoints"),
    ],
)
def test_commands_exit_2_without_a_traceback(argv, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_leaves_ends_a_command_quietly():
    script = "import sys; from jaxllm.cli import run_main; sys.exit(run_main(lambda argv: print('line\\n' * 10**6)))"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline() == b"line\n"
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


def test_a_broken_pipe_elsewhere_is_not_taken_for_the_reader_leaving():
    def main(argv):
        raise BrokenPipeError("a worker's pipe")

    with pytest.raises(BrokenPipeError, match="a worker's pipe"):
        run_main(main, [])
