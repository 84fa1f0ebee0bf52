"""xllm-serve: an OpenAI-compatible HTTP server in two processes.

app.py             the front end: FastAPI routes, SSE streaming, tokenization, chat templates
engine_process.py  the engine in its own process (model, KV cache, step loop) and the pipe to it
protocol.py        request and response bodies (pydantic)
metrics.py         Prometheus metrics
cli.py             the xllm-serve command
"""
