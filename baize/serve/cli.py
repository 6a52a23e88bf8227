"""`baize serve [NAME=]SPEC ...` (the API, + the web UI with --ui) and `baize ui` (the same with the
UI on, on port 7860). Imported by `baize --help`: the server's modules load only when a command runs."""
from __future__ import annotations

from ..config import BaizeError, add_dataclass_args, dataclass_from_args
from .config import ServeConfig

__all__ = ["ServeConfig", "serve", "add_serve_args", "add_cli"]


def serve(specs: dict[str, str], cfg: ServeConfig) -> None:
    """Load the models and serve them until interrupted."""
    import os

    import uvicorn

    from .app import create_app
    from .loading import load_models
    cfg.api_key = cfg.api_key or os.environ.get("BAIZE_API_KEY") or None
    if cfg.max_tokens < 1 or cfg.max_batch < 1:
        raise BaizeError("--max-tokens and --max-batch must be positive")
    loaded = load_models(specs, cfg)
    app = create_app(loaded, cfg)
    where = f"http://{cfg.host}:{cfg.port}"
    print(f"serving {', '.join(loaded)} at {where}/v1" + (f"  (web UI: {where}/ui)" if cfg.ui else "")
          + ("  (API key required)" if cfg.api_key else ""), flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"warning: listening on {cfg.host} without --api-key: anyone who can reach it can use it", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=3)


def add_serve_args(p) -> None:
    p.add_argument("models", nargs="*", default=["default"], metavar="[NAME=]SPEC",
                   help="models to serve (default: the embedded default); NAME=SPEC sets the served name, "
                        "e.g. base=default v1=runs/v1 v2=runs/v2 share one base in memory")
    add_dataclass_args(p, ServeConfig)


def add_cli(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible API server (+ web UI with --ui)")
    add_serve_args(p)
    p.set_defaults(func=_main)
    p = sub.add_parser("ui", help="the web chat UI (and the API) for one or more models",
                       description="Same as `baize serve --ui --port 7860`: the UI at /ui, the API at /v1.")
    add_serve_args(p)
    p.set_defaults(func=_main_ui, port=7860, ui=True)


def _main(args) -> int:
    from .loading import parse_model_args
    serve(parse_model_args(args.models or ["default"]), dataclass_from_args(ServeConfig, args))
    return 0


def _main_ui(args) -> int:
    args.ui = True  # `baize ui --no-ui` would be a server without its UI: the command is the UI
    return _main(args)
