"""``l8 wasm deploy|list|rm``: the CLI of the FaaS fleet (runtime/fleet.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runtime.config import Config
from runtime.function_config import FunctionConfig


def add_wasm_parser(sub: Any) -> None:
    wasm = sub.add_parser("wasm", help="deploy, list and remove WebAssembly functions of the fleet")
    verbs = wasm.add_subparsers(dest="verb", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bus", required=True, help="NATS URLs, comma separated (bus.url)")
        p.add_argument("--namespace", help="the namespace on the bus (namespace)")
        p.add_argument("--config", help="config file (default: the packaged configs/default.yaml)")
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    deploy = verbs.add_parser("deploy", help="check a module and deploy it as function NAME")
    deploy.add_argument("name")
    deploy.add_argument("file", type=Path)
    deploy.add_argument("--subscribe", action="append", default=[], metavar="PUBSUB/TOPIC")
    deploy.add_argument("--invoke", action="store_true", help="answer InvokeService(id=NAME)")
    deploy.add_argument("--memory-mb", type=int)
    deploy.add_argument("--timeout-ms", type=int)
    deploy.add_argument("--fuel", type=int)
    deploy.add_argument("--max-output-kb", type=int)
    deploy.add_argument("--concurrency", type=int, help="calls at once per worker")
    deploy.add_argument("--allow-state", action="append", default=[], metavar="STORE")
    deploy.add_argument("--allow-publish", action="append", default=[], metavar="PUBSUB/TOPIC")
    deploy.add_argument("--allow-invoke", action="append", default=[], metavar="APP")
    deploy.add_argument("--allow-sequencer", action="append", default=[], metavar="SEQUENCER")
    deploy.add_argument("--allow-configuration", action="append", default=[], metavar="STORE")
    common(deploy)
    common(verbs.add_parser("list", help="list the deployed functions"))
    rm = verbs.add_parser("rm", help="remove function NAME; its workers stop serving it")
    rm.add_argument("name")
    common(rm)


def _function_config(args: argparse.Namespace) -> FunctionConfig:
    subscribe = []
    for entry in args.subscribe:
        pubsub, sep, topic = entry.partition("/")
        if not sep or not pubsub or not topic:
            raise ValueError(f"--subscribe {entry[:60]!r} is not PUBSUB/TOPIC")
        subscribe.append({"pubsub": pubsub, "topic": topic})
    limits = {
        key: value
        for key, value in {
            "memoryMb": args.memory_mb,
            "timeoutMs": args.timeout_ms,
            "fuel": args.fuel,
            "maxOutputKb": args.max_output_kb,
            "concurrency": args.concurrency,
        }.items()
        if value is not None
    }
    allow = {
        "state": args.allow_state,
        "publish": args.allow_publish,
        "invoke": args.allow_invoke,
        "sequencer": args.allow_sequencer,
        "configuration": args.allow_configuration,
    }
    try:
        return FunctionConfig.model_validate(
            {"name": args.name, "subscribe": subscribe, "invoke": args.invoke, "limits": limits, "allow": allow}
        )
    except ValidationError as exc:
        raise ValueError(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'function'}: {e['msg']}" for e in exc.errors())
        ) from None


async def run_wasm(args: argparse.Namespace, config: Config) -> int:
    from bus import Bus
    from runtime import fleet

    if args.verb == "deploy":
        try:
            function = _function_config(args)
        except ValueError as exc:
            print(f"l8: wasm deploy: {str(exc).replace('Value error, ', '')}", file=sys.stderr)
            return 2
        try:
            wasm = args.file.read_bytes()
        except OSError as exc:
            print(f"l8: wasm deploy: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    from runtime import bus_identity

    # Deploying code is an operator's act: `l8 wasm` is a worker of the namespace on the bus.
    identity = bus_identity.of(config, bus_identity.WORKER)
    try:
        auth = await bus_identity.auth_for(config, identity, config.bus.servers)
        bus = Bus(config.bus.servers, name="l8-wasm", auth=auth, inbox_prefix=identity.inbox)
        await bus.start()
    except Exception as exc:
        print(f"l8: wasm {args.verb}: cannot reach the bus at {config.bus.url}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.verb == "deploy":
            from handlers.functions import ModuleError

            try:
                spec = await fleet.deploy(bus, config.namespace, function, wasm, fleet.cache_dir(config))
            except ModuleError as exc:
                print(f"l8: wasm deploy: module {args.file} is refused: {exc}", file=sys.stderr)
                return 1
            print(
                f"deployed {function.name}: sha256 {spec['sha256']}, {spec['size']} bytes, revision {spec['revision']}"
            )
        elif args.verb == "list":
            for spec in await fleet.listing(bus, config.namespace):
                cfg = spec["config"]
                triggers = (["invoke"] if cfg.get("invoke") else []) + [
                    f"{s['pubsub']}/{s['topic']}" for s in cfg.get("subscribe", [])
                ]
                print(
                    f"{cfg['name']}\tsha256 {spec['sha256'][:12]}\t{spec['size']} bytes\t"
                    f"triggers {','.join(triggers) or '-'}\tlimits {json.dumps(cfg['limits'], separators=(',', ':'))}"
                )
        else:
            try:
                await fleet.remove(bus, config.namespace, args.name)
            except fleet.DeployError as exc:
                print(f"l8: wasm rm: {exc}", file=sys.stderr)
                return 1
            print(f"removed {args.name}")
        return 0
    finally:
        await bus.stop()
