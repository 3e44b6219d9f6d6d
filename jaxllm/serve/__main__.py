"""Serve a run over HTTP: `python -m jaxllm.serve --run_dir=runs/base_rl [--port=8000] [--slots=16]`.

The OpenAI API (POST /v1/chat/completions, POST /v1/completions, GET /v1/models), GET /health, and a chat page at
http://127.0.0.1:PORT/. It listens on 127.0.0.1 unless --host says otherwise; with --api_key (or JAXLLM_API_KEY)
every /v1 request must send 'Authorization: Bearer <key>'. --slots requests decode together (continuous
batching); up to --max_queue more wait for a slot, and more than that are refused with 429.
"""

from __future__ import annotations

import os
import sys

from jaxllm import storage
from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import ConfigError
from jaxllm.serve.api import Server, app
from jaxllm.serve.engine import Engine
from jaxllm.train.checkpoint import load_run


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--slots", type=int, default=16, help="requests decoded together")
    parser.add_argument("--max_queue", type=int, default=256, help="requests that may wait for a slot")
    parser.add_argument("--model_name", default=None, help="the model id clients send (default: the run's name)")
    parser.add_argument("--api_key", default=os.environ.get("JAXLLM_API_KEY"), help="default: $JAXLLM_API_KEY")
    args = parser.parse_args(argv)
    if args.slots < 1 or args.max_queue < 0 or not 0 <= args.port < 65536:
        raise ConfigError(
            f"--slots={args.slots}, --max_queue={args.max_queue}, --port={args.port}: need slots >= 1, "
            "max_queue >= 0 and a port from 0 to 65535"
        )
    try:
        import uvicorn  # noqa: PLC0415 (the serve extra, needed by this command only)
    except ImportError:
        raise ConfigError("jaxllm.serve needs the serve extra: pip install -e '.[serve]'") from None
    run_dir = storage.path(args.run_dir)  # local or gs://
    run = load_run(run_dir, args.step)
    engine = Engine(run.graphdef, run.params, run.cfg.model, args.slots, args.max_queue)
    print(
        f"serve: {run_dir} step {run.step}, {run.choice.why}; compiling {args.slots} slots, "
        f"prompt buckets {', '.join(map(str, engine.buckets))}",
        flush=True,
    )
    engine.start()
    server = Server(engine, run.tokenizer, args.model_name or storage.name(run_dir), args.api_key)
    config = uvicorn.Config(app(server), host=args.host, port=args.port, log_level="warning")
    web = uvicorn.Server(config)
    original_startup = web.startup

    async def startup(sockets=None):
        await original_startup(sockets)
        port = web.servers[0].sockets[0].getsockname()[1] if web.servers else args.port
        print(f"serve: model {server.model_id!r} at http://{args.host}:{port}/ (Ctrl-C stops)", flush=True)

    web.startup = startup
    try:
        web.run()
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
