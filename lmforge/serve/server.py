"""`lmforge serve`: the OpenAI-compatible API for one or more run folders, on uvicorn.

Binds to 127.0.0.1 unless told otherwise. On SIGTERM or Ctrl-C the server stops accepting
connections, lets running requests finish (up to a few seconds), stops the engines and returns.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.serve.models import DEFAULT_MAX_BATCH

GRACEFUL_S = 5  # how long running requests may take to finish once a shutdown is asked for


def model_names(runs: list[Path], names: list[str] | None) -> dict[str, Path]:
    names = list(names or [])
    if names and len(names) != len(runs):
        raise ConfigError(f"--model-name was given {len(names)} times for {len(runs)} runs; give one per run")
    out: dict[str, Path] = {}
    for i, run in enumerate(runs):
        name = names[i] if names else Path(run).resolve().name
        if name in out:
            raise ConfigError(f"two runs would both be served as '{name}'; name them with --model-name")
        out[name] = Path(run)
    return out


def run_uvicorn(app, host: str, port: int, log_level: str = "warning", banner: str | None = None) -> str | None:
    """Serve `app` until SIGTERM/SIGINT; returns the name of the signal that stopped it (None if none)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="on")
    server = uvicorn.Server(config)
    received: list[int] = []

    def remember(sig, _frame):
        received.append(sig)

    # uvicorn handles the signals while it runs and re-raises the one it got once it has shut down;
    # these handlers receive it then, so the command returns normally (exit status 0).
    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if banner:
            from lmforge.console import console

            console.print(banner, markup=False, highlight=False)
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; answered below
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise ConfigError(f"could not listen on {host}:{port} (in use, or not an address of this machine); "
                          "choose another --port or --host")
    return signal.Signals(received[-1]).name if received else None


def serve(runs: list[str | Path], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          names: list[str] | None = None, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH) -> int:
    from lmforge.serve.api import create_app
    from lmforge.serve.models import Registry

    api_key = api_key or os.environ.get("LMFORGE_API_KEY") or None
    registry = Registry(model_names([Path(r) for r in runs], names), device=device, max_batch=max_batch)
    app = create_app(registry, api_key)
    listed = ", ".join(f"{n} ({s.task})" for n, s in registry.loaded.items())
    stopped_by = run_uvicorn(app, host, port, banner=f"lmforge: serving {listed} at http://{host}:{port}/v1"
                             + (" (API key required)" if api_key else ""))
    registry.close()
    from lmforge.console import console

    console.print(f"lmforge: server stopped{f' ({stopped_by})' if stopped_by else ''}", markup=False)
    return 0
