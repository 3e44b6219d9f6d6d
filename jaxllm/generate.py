"""`python -m jaxllm.generate --run_dir=runs/base --prompt="def fibonacci(n):" [--max_new_tokens=200]
[--temperature=0.8] [--top_k=0] [--top_p=0.95] [--seed=0] [--step=N]`: one prompt streams its continuation as it
is sampled; several (`--prompt` repeated) are decoded as one left-padded batch and printed when done."""

from __future__ import annotations

import sys

from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import ConfigError
from jaxllm.inference.generate import add_sampling_flags, complete, sampling_from_args, stream
from jaxllm.train.checkpoint import load_run


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--prompt", action="append", help="repeat for a batch of prompts")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    add_sampling_flags(parser)
    args = parser.parse_args(argv)
    sampling = sampling_from_args(args)
    run = load_run(args.run_dir, args.step)  # local or gs://
    prompts = args.prompt or [""]
    try:
        for prompt in prompts:
            run.tokenizer.encode(prompt)
    except ValueError as e:
        raise ConfigError(f"--prompt: {e}") from None
    if len(prompts) == 1:
        print(prompts[0], end="", flush=True)
        for piece in stream(run.graphdef, run.params, run.cfg.model, run.tokenizer, prompts[0], sampling):
            print(piece, end="", flush=True)
        print()
        return 0
    completions = complete(run.graphdef, run.params, run.cfg.model, run.tokenizer, prompts, sampling)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        print(f"--- {i}\n{prompt}{completion}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
