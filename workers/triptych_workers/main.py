"""``triptych-worker <role> --config PATH``: one process of a Triptych deployment.

Roles: ``frontend`` (the OpenAI API), ``encode``, ``prefill``, ``decode`` and the aggregated ``pd`` and
``epd``. Every process serves ``/livez``, ``/readyz`` and ``/metrics`` on the metrics port and shuts down
gracefully on SIGTERM. The settings are built here, once, and passed down; nothing reads configuration at
import time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop
from triptych_contract import CONFIG_PATH, ENV_CONFIG

from triptych_workers.config import ROLE_NAMES, ConfigError, RoleName, Settings, load_config
from triptych_workers.engines.base import Engine
from triptych_workers.engines.registry import lookup_backend
from triptych_workers.roles import aggregated, decode, encode, prefill
from triptych_workers.roles.frontend import run_frontend
from triptych_workers.roles.server import HandlerFactory, StartupError, run_worker

log = logging.getLogger("triptych_workers")


def handler_factory(settings: Settings) -> HandlerFactory:
    """The verbs a worker serves follow from its stages (the operator folds absent roles into the next)."""
    stages = set(settings.stages)
    if stages == {"encode"}:
        return encode.handlers
    if "decode" in stages and "prefill" in stages:
        return aggregated.handlers
    if "prefill" in stages:
        return prefill.handlers
    if stages == {"decode"}:
        return decode.handlers
    raise ConfigError(f"no worker serves the stages {sorted(stages)}")


async def load_engine(settings: Settings) -> Engine:
    """The configured backend's engine, from its registry entry (which imports torch only now, so the
    frontend process never does)."""
    return await lookup_backend(settings.config.backend).load_engine(settings.config)


async def serve(settings: Settings) -> None:
    if settings.role == "frontend":
        await run_frontend(settings)
        return
    await run_worker(settings, lambda: load_engine(settings), handler_factory(settings))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="triptych-worker", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("role", choices=ROLE_NAMES)
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get(ENV_CONFIG, CONFIG_PATH)),
        help=f"worker config file (default: ${ENV_CONFIG} or {CONFIG_PATH})",
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - pods serve on their interfaces; tests pass 127.0.0.1
        help="address the HTTP and metrics servers bind (default 0.0.0.0)",
    )
    parser.add_argument("--worker-id", default=None, help="this worker's id on the request plane")
    parser.add_argument("--log-level", default=os.environ.get("TRIPTYCH_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: a sidecar reads its engine's /metrics at every scrape of its own.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    role: RoleName = args.role
    try:
        settings = Settings.build(role, load_config(args.config), host=args.host, worker_id=args.worker_id)
        # uvloop: the loop every role's NATS, HTTP and token streams run on (see pyproject's note).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except (ConfigError, StartupError) as exc:
        log.error("%s", exc)  # noqa: TRY400 - reported without a traceback: not a bug
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
