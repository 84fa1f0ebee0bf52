"""xllm-serve: an OpenAI-compatible server (front end + engine process).

    xllm-serve --weight model.gguf --port 8000 --threads 2
    xllm-serve --weight model.gguf --api-key KEY --chat-template template.jinja --stats-log stats.log
"""
from __future__ import annotations

import os
import signal
import socket
import sys

from ..cli_errors import ArgumentParser, cli_entry, positive_int
from ..kv_types import add_kv_type_option


def port_number(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {text!r}")
    return value


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="xllm-serve", description="Serve a model over an OpenAI-compatible HTTP API.")
    p.add_argument("--weight", help="GGUF file, llama2.c .bin or Hugging Face directory "
                                    "(default: the small model shipped in the package)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--threads", type=positive_int, default=None, help="engine OpenMP threads (default: usable cores)")
    p.add_argument("--max-seqs", type=positive_int, default=16, help="sequences in the running batch (default 16)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=256,
                   help="tokens per decoder step: decode tokens plus prompt chunks (default 256)")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="compute every prompt in full (default: reuse the KV blocks of prompt prefixes "
                        "computed before; usage.prompt_tokens_details.cached_tokens counts them)")
    p.add_argument("--max-waiting", type=positive_int, default=None,
                   help="sequences allowed to wait for a place in the batch; beyond, 503 (default: no limit)")
    add_kv_type_option(p)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on the API")
    p.add_argument("--chat-template", default=None, help="Jinja2 chat template file (default: the model's own)")
    p.add_argument("--stats-log", default=None,
                   help="write the engine process's /proc/<pid>/stat fields to this file once a second")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the file name)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    return p


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@cli_entry("xllm-serve")
def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..parallel import launched_rank, launched_world_size
    from ..engine import DEFAULT_MODEL
    weight = DEFAULT_MODEL if args.weight is None else args.weight
    world = launched_world_size()
    options = {"weight": weight, "threads": args.threads, "max_seqs": args.max_seqs,
               "max_batch_tokens": args.max_batch_tokens, "prefix_cache": args.prefix_cache,
               "kv_type": args.kv_type, "tensor_parallel": world}
    if world > 1 and launched_rank() != 0:
        return _follow(options)
    from .engine_process import EngineClient
    client = EngineClient(options)
    if world > 1:
        # rank 0: the others wait in the start-up collective, so the model loads first (every
        # failure is then one message here and ends every rank); the engine is a thread, MPI
        # is started here, in the thread that also ends it (at exit)
        from ..parallel.mpi import import_mpi
        import_mpi()
        try:
            client.start()
            return _serve(args, weight, client)
        finally:
            client.shutdown()
    if not os.path.exists(weight):
        raise FileNotFoundError(f"{weight}: no such model file or directory")
    return _serve(args, weight, client)


def _follow(options: dict) -> int:
    """A rank > 0 of a tensor-parallel server: load its slices and run rank 0's steps until
    rank 0 stops (parallel.load exits the process).  Ctrl-C and SIGTERM, which the launcher
    passes to every rank, are rank 0's to handle: it shuts the server down, then stops us."""
    from ..engine import Engine
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Engine.load(options["weight"], threads=options["threads"], max_seqs=options["max_seqs"],
                max_batch_tokens=options["max_batch_tokens"], prefix_cache=options["prefix_cache"],
                kv_type=options["kv_type"], tensor_parallel=options["tensor_parallel"])
    return 0                                       # not reached: the followers exit in parallel.load


def _serve(args, weight, client) -> int:
    """Load the vocabulary and template, start the engine (unless started), serve until a
    signal; the engine is shut down on the way out."""
    from ..chat import end_of_turn_ids, load_chat_template
    from ..engine import load_tokenizer_for, open_model_checkpoint
    from .app import ServerState, create_app

    ckpt = open_model_checkpoint(weight)          # the vocabulary and template; pages shared with the engine
    tokenizer = load_tokenizer_for(ckpt)
    template = load_chat_template(weight, args.chat_template, tokenizer)
    end_of_turn = end_of_turn_ids(template, tokenizer) if template is not None else []
    name = args.model_name or os.path.basename(os.path.normpath(weight))
    sock = _listen(args.host, args.port)
    stats_logger = None
    try:
        if client.process is None:
            client.start()
        if args.stats_log is not None:
            from ..procstats import StatsLogger
            stats_logger = StatsLogger(client.pid, args.stats_log)
            stats_logger.start()
        state = ServerState(client, tokenizer, name, template, end_of_turn, args.api_key, args.max_waiting)
        app = create_app(state)
        import uvicorn
        host, port = sock.getsockname()[:2]
        engine = (f"engine pid {client.pid}" if client.kind == "process" else
                  f"engine thread, tensor-parallel over {client.options['tensor_parallel']} MPI ranks")
        print(f"xllm-serve: serving {name!r} on http://{host}:{port} (front end pid {os.getpid()}, "
              f"{engine})", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=3,
                                access_log=False)
        server = _server_class()(config)
        server.run(sockets=[sock])
    finally:
        if stats_logger is not None:
            stats_logger.stop()
        client.shutdown()
        sock.close()
    if signal.SIGINT in server.captured:
        raise KeyboardInterrupt           # reported as "interrupted", exit 130, like every xllm CLI
    return 0                              # SIGTERM: a requested shutdown, done


def _server_class():
    """uvicorn.Server that keeps the signal which stopped it instead of raising it again on
    the way out (uvicorn re-raises it, which would kill this process before the engine, and
    under mpirun the other ranks, are stopped)."""
    import contextlib
    import threading
    import uvicorn

    class Server(uvicorn.Server):
        captured: list = []

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            self.captured = []

            def handle(sig, frame):
                self.captured.append(sig)
                self.handle_exit(sig, frame)
            original = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)
    return Server


def main(argv=None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
