"""`baize serve` / `baize ui`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) and its web UI.

    GET  /health                 liveness, no key needed
    GET  /v1/models              the served names
    POST /v1/chat/completions    stream (SSE) or not; n, temperature, top_p, max_tokens, stop, seed
    POST /v1/completions         prompt (text or token ids) in, text out; echo, logprobs (local models)
    /ui                          the web UI (--ui, or `baize ui`; baize/serve/ui.py)

Split as vLLM's OpenAI server is (routes, protocol, serving logic), lowest first:

    config.py    ServeConfig: the flags of `baize serve` and `baize ui`
    loading.py   specs -> served models; runs on one base share its weights and engine
    jobs.py      start generations and merge their events: what the API and the UI share
    protocol.py  the wire format: pydantic request models, response bodies, APIError
    completions.py  /v1/completions: prompt in, text and log-probabilities out (lm-evaluation-harness)
    app.py       create_app: the routes, the chat-completion logic, the API-key guard
    cli.py       the `serve` and `ui` subcommands

Nothing is imported here, so importing a submodule never imports the others.
"""
