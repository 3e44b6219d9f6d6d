"""Chat with a post-trained run: `python -m jaxllm.chat --run_dir=runs/base_rl [--system="..."] [--prompt="..."]`.

Without --prompt: a REPL that keeps the conversation's history, streams each reply as it is sampled, and takes
/reset (forget the history; the system prompt stays) and /quit (or end of input). With --prompt: one reply, then
exit. --system opens every conversation with a system turn. Sampling settings
come from flags (--temperature, --top_k, --top_p, --max_new_tokens, --seed); prompts and replies go through the
same chat template as training (jaxllm.posttrain.chat_template), and a reply ends where its turn does (<|end|>, or
<|im_end|> for an imported ChatML model). A history longer than the context loses its oldest tokens.
"""

from __future__ import annotations

import sys

from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import ConfigError
from jaxllm.inference.generate import SamplingConfig, add_sampling_flags, sampling_from_args, stream
from jaxllm.posttrain.chat_template import reply_prompt, stop_ids
from jaxllm.train.checkpoint import load_run


def reply(run, history: list[dict], sampling: SamplingConfig, out=sys.stdout) -> str:
    """Streams the assistant's reply to the history to `out` and returns it."""
    pieces = []
    for piece in stream(
        run.graphdef,
        run.params,
        run.cfg.model,
        run.tokenizer,
        reply_prompt(history, run.tokenizer),
        sampling,
        stop_ids(run.tokenizer),
    ):
        pieces.append(piece)
        print(piece, end="", flush=True, file=out)
    print(file=out)
    return "".join(pieces)


def repl(run, sampling: SamplingConfig, system: str = "", lines=sys.stdin, out=sys.stdout) -> None:
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)
    print("chat: /reset forgets the conversation, /quit ends it", file=out)
    while True:
        print("> ", end="", flush=True, file=out)
        line = lines.readline()
        if not line or line.strip() == "/quit":
            return
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            history = list(opening)
            print("(conversation reset)", file=out)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": reply(run, history, sampling, out)})


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--prompt", default=None, help="answer this one message and exit")
    parser.add_argument("--system", default="", help="a system turn that opens every conversation")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    add_sampling_flags(parser, SamplingConfig(max_new_tokens=120, temperature=0.7, top_p=0.9))
    args = parser.parse_args(argv)
    sampling = sampling_from_args(args)
    run = load_run(args.run_dir, args.step)  # local or gs://
    if run.cfg.posttrain.stage not in ("sft", "dpo", "rl"):
        raise ConfigError(
            f"--run_dir={args.run_dir} holds a pretrained model, not a chat-trained one (it has never "
            "seen the chat template): fine-tune it first, e.g. python -m jaxllm.sft "
            "--experiment=base_sft, then chat with runs/base_sft"
        )
    opening = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        reply(run, [*opening, {"role": "user", "content": args.prompt}], sampling)
    else:
        repl(run, sampling, args.system)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
