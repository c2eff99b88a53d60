"""The `l8` command: `run` (the sidecar), `worker` (handlers only, deployed functions), `wasm`,
`subscriptions`, `asyncapi`, `config from-layotto` and `version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bus.subjects import TOKEN
from runtime import __version__
from runtime.config import API_NAMES, DEFAULT_CONFIG, Config, ConfigError, load_config

log = logging.getLogger("l8")
T = TypeVar("T")


def _port(flag: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or not 0 <= int(value) <= 65535:
            raise argparse.ArgumentTypeError(f"{flag}: {value!r} is not a port number from 0 to 65535")
        return int(value)

    return parse


def _positive(flag: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{flag}: {value[:32]!r} is not a whole number of at least 1")
        return int(value)

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l8", description="l8: an application runtime on a message bus")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the sidecar: gRPC and HTTP servers plus in-process handler workers")
    run.add_argument("--config", help="config file (default: the packaged configs/default.yaml)")
    run.add_argument("--app-id", help="the app's id (app.id)")
    run.add_argument("--app-port", type=_port("--app-port"), help="the app's port on 127.0.0.1 (gRPC or HTTP)")
    run.add_argument(
        "--app-protocol",
        choices=["grpc", "layotto", "http"],
        help="how l8 calls the app (app.protocol); unset: l8 learns it",
    )
    run.add_argument("--enable-app-health-check", action="store_true", help="probe the app (app.health_check.enabled)")
    run.add_argument("--app-health-check-path", help="an HTTP app's probe path (app.health_check.path)")
    run.add_argument(
        "--app-health-probe-interval", type=_positive("--app-health-probe-interval"), help="seconds between probes"
    )
    run.add_argument(
        "--app-health-probe-timeout", type=_positive("--app-health-probe-timeout"), help="milliseconds a probe may take"
    )
    run.add_argument("--app-health-threshold", type=_positive("--app-health-threshold"), help="failures to unhealthy")
    run.add_argument("--grpc-port", type=_port("--grpc-port"), help="gRPC port (server.grpc)")
    run.add_argument("--http-port", type=_port("--http-port"), help="HTTP port (server.http)")
    run.add_argument("--bus", help="NATS URLs, comma separated, or 'embedded' (bus.url)")
    run.add_argument("--data-dir", help="where the embedded server keeps its data (data_dir)")
    run.add_argument("--workers", help="handlers run here: all, none, or apis comma separated (workers)")
    run.add_argument("--namespace", help="the namespace on the bus (namespace)")
    run.add_argument("--concurrency", type=_positive("--concurrency"), help="requests handled at once (concurrency)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    worker = sub.add_parser("worker", help="run handler workers only, on an existing bus")
    worker.add_argument("--config", help="config file (default: the packaged configs/default.yaml)")
    worker.add_argument("--bus", help="NATS URLs, comma separated (bus.url)")
    worker.add_argument("--handlers", help=f"apis to serve, comma separated: {', '.join(API_NAMES)} (workers)")
    worker.add_argument("--namespace", help="the namespace on the bus (namespace)")
    worker.add_argument("--concurrency", type=_positive("--concurrency"), help="requests handled at once (concurrency)")
    worker.add_argument(
        "--http-port", type=_port("--http-port"), help="serve the health probes on this port (server.worker_http)"
    )
    worker.add_argument("--wasm", action="store_true", help="serve the functions deployed with `l8 wasm deploy`")
    worker.add_argument("--data-dir", help="where compiled modules are cached, in wasm-cache/ (data_dir)")
    worker.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    from runtime.fleet_cli import add_wasm_parser

    add_wasm_parser(sub)

    from runtime.dump_cli import add_dump_parser

    add_dump_parser(sub)

    spec = sub.add_parser("asyncapi", help="print an AsyncAPI document of the configured topics and subscriptions")
    spec.add_argument("--config", help="config file (default: the packaged configs/default.yaml)")
    spec.add_argument("--app-id", help="the app's id (app.id)")
    spec.add_argument("--app-port", type=_port("--app-port"), help="also list the subscriptions this app declares")
    spec.add_argument("--namespace", help="the namespace on the bus (namespace)")
    spec.add_argument("--bus", help="NATS URLs, comma separated, or 'embedded' (bus.url)")
    spec.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    subs = sub.add_parser(
        "subscriptions", help="list the subscriptions announced on the bus and how they are delivered"
    )
    subs.add_argument("--config", help="config file (default: the packaged configs/default.yaml)")
    subs.add_argument("--bus", help="NATS URLs, comma separated (default: the running embedded bus of data_dir)")
    subs.add_argument("--namespace", help="the namespace on the bus (namespace)")
    subs.add_argument("--data-dir", help="where a running `l8 run` keeps its embedded bus (data_dir)")
    subs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    subs.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    users = sub.add_parser(
        "nats-users", help="print the nats-server users and permissions of an external bus (docs/security.md)"
    )
    users.add_argument("--config", help="config file (default: the packaged configs/default.yaml)")
    users.add_argument("--namespace", help="the namespace on the bus (namespace)")
    users.add_argument("--sidecar", action="append", default=[], help="an app whose sidecars run no handlers")
    users.add_argument("--sidecar-with-workers", action="append", default=[], help="an app whose sidecars run handlers")
    users.add_argument("--worker", action="append", default=[], help="a user for `l8 worker` and `l8 wasm`")
    users.add_argument("--reader", action="append", default=[], help="a user for `l8 subscriptions`")

    conf = sub.add_parser("config", help="convert configs")
    conf_sub = conf.add_subparsers(dest="config_command", required=True)
    layotto = conf_sub.add_parser("from-layotto", help="print an l8 config made from a Layotto JSON config")
    layotto.add_argument("path", help="Layotto's config.json")

    sub.add_parser("version", help="print the version")
    return parser


def _with_port(address: str, port: int) -> str:
    host, _, _ = address.rpartition(":")
    return f"{host or '127.0.0.1'}:{port}"


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if getattr(args, "app_id", None):
        overrides.setdefault("app", {})["id"] = args.app_id
    if getattr(args, "app_port", None) is not None:
        overrides.setdefault("app", {})["callback"] = f"127.0.0.1:{args.app_port}"
    if getattr(args, "app_protocol", None):
        overrides.setdefault("app", {})["protocol"] = args.app_protocol
    health = {
        key: value
        for key, value in (
            ("enabled", True if getattr(args, "enable_app_health_check", False) else None),
            ("path", getattr(args, "app_health_check_path", None)),
            ("interval", getattr(args, "app_health_probe_interval", None)),
            ("timeout", (lambda ms: ms / 1000 if ms else None)(getattr(args, "app_health_probe_timeout", None))),
            ("threshold", getattr(args, "app_health_threshold", None)),
        )
        if value is not None
    }
    if health:
        overrides.setdefault("app", {})["health_check"] = health
    if getattr(args, "bus", None):
        overrides.setdefault("bus", {})["url"] = args.bus
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "workers", None):
        overrides["workers"] = args.workers
    if getattr(args, "handlers", None):
        overrides["workers"] = args.handlers
    if args.namespace:
        overrides["namespace"] = args.namespace
    if getattr(args, "concurrency", None):
        overrides["concurrency"] = args.concurrency
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    if args.command == "worker" and args.http_port is not None:
        overrides.setdefault("server", {})["worker_http"] = f"127.0.0.1:{args.http_port}"
        args.http_port = None
    config = load_config(args.config, overrides)
    ports = {"grpc": getattr(args, "grpc_port", None), "http": getattr(args, "http_port", None)}
    if any(p is not None for p in ports.values()):
        server = config.server.model_copy(
            update={k: _with_port(getattr(config.server, k), p) for k, p in ports.items() if p is not None}
        )
        config = config.model_copy(update={"server": server})
    return config


async def _serve(
    config: Config, *, serve: bool, wasm: bool = False, reload_from: tuple[Path, Callable[[], Config]] | None = None
) -> int:
    from bus import BusError
    from runtime.components import ComponentError
    from runtime.plugins import PluginError
    from runtime.sidecar import Sidecar

    sidecar = Sidecar(config, serve=serve, reload_from=reload_from)
    fleet: Any = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A signal at any moment of start-up ends it: the start is cancelled and stops what it began.
    starting = asyncio.create_task(sidecar.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stopping while starting")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return 0
    stopping_error = starting.exception()
    if stopping_error is not None:
        stopping.cancel()
        if isinstance(stopping_error, (ComponentError, OSError, BusError, ConfigError, PluginError)):
            log.error("%s", stopping_error)
            return 1
        raise stopping_error
    try:
        if wasm:
            from runtime.fleet import FleetWorker

            assert sidecar.workers is not None
            fleet = FleetWorker(config, sidecar.workers)
            await fleet.start()
            log.info("l8 worker serves deployed functions of namespace %s", config.namespace)
        # A signal, or Dapr's Shutdown call (gRPC or POST /v1.0/shutdown).
        shutdown = asyncio.create_task(sidecar.shutdown_requested.wait())
        await asyncio.wait({stopping, shutdown}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopping, shutdown):
            waiter.cancel()
        log.info("stopping: finishing calls in flight")
    finally:
        if fleet is not None:
            await fleet.stop()
        await sidecar.stop()
    return 0


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        return runner.run(coro)


def _subscriptions(config: Config, as_json: bool) -> int:
    from bus import BusError
    from runtime.registry_view import collect, render

    try:
        rows = _run_loop(collect(config))
    except LookupError as exc:
        print(f"l8: {exc}", file=sys.stderr)
        return 2
    except (BusError, OSError, TimeoutError) as exc:
        print(f"l8: cannot read the subscriptions from the bus: {exc}", file=sys.stderr)
        return 1
    print(render(rows, as_json))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"l8 {__version__}")
        return 0
    if args.command == "dump":
        from runtime.dump_cli import run_dump

        return run_dump(args)
    if args.command == "config":
        from runtime.layotto_config import convert_file

        try:
            conversion = convert_file(args.path)
        except ConfigError as exc:
            print(f"l8: config error: {exc}", file=sys.stderr)
            return 2
        for note in conversion.notes:
            print(f"l8: {note}", file=sys.stderr)
        print(conversion.render(), end="")
        return 0
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"l8: config error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "subscriptions":
        return _subscriptions(config, args.json)
    if args.command == "nats-users":
        from runtime.bus_identity import render_users

        for app in (*args.sidecar, *args.sidecar_with_workers):
            if not TOKEN.match(app):
                print(f"l8: {app[:64]!r} is not an app id (letters, digits, '_' and '-')", file=sys.stderr)
                return 2
        print(
            render_users(
                config,
                sidecars=args.sidecar,
                sidecars_with_workers=args.sidecar_with_workers,
                workers=args.worker,
                readers=args.reader,
            ),
            end="",
        )
        return 0
    if args.command == "asyncapi":
        from runtime.asyncapi import render

        print(render(config, ask_app=args.app_port is not None))
        return 0
    if args.command == "wasm":
        from runtime.fleet_cli import run_wasm

        return _run_loop(run_wasm(args, config))
    if args.command == "worker":
        if config.bus.embedded:
            print(
                "l8: config error: bus.url: a worker joins an existing bus; pass --bus nats://host:port",
                file=sys.stderr,
            )
            return 2
        if args.handlers is None and args.wasm:
            config = config.model_copy(update={"workers": "none"})
        if not config.apis() and not args.wasm:
            print("l8: config error: workers: a worker needs at least one api in --handlers", file=sys.stderr)
            return 2
        return _run_loop(_serve(config, serve=False, wasm=args.wasm, reload_from=_reload_from(args)))
    return _run_loop(_serve(config, serve=True, reload_from=_reload_from(args)))


def _reload_from(args: argparse.Namespace) -> tuple[Path, Callable[[], Config]]:
    """The config file, and how to read it again with the same flags (``reload.watch``)."""
    return Path(args.config) if args.config else DEFAULT_CONFIG, lambda: config_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
