"""Command line: `python -m devcluster serve --port 6443 --nodes gpu-mixed --kubeconfig OUT.yaml [--clusters N]`
(or `--names A,B` instead of `--clusters`), and `python -m devcluster real serve --nodes gpu-mixed --kubeconfig
OUT.yaml` for the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK;
`make k8s` builds them).

Kubeconfig files (0600): OUT.yaml is the first cluster's; with N > 1 every cluster also gets
OUT.d/<name>.yaml (names c0001, c0002, ..., or those given with `--names`: `make run` serves "default" and,
for local provisioning, a spare "provisioned" that the local Terraform module hands back as the cluster it
"created").  The admin token for `/_devcluster/...` is written to OUT.admin-token.  The process serves until
interrupted (SIGINT/SIGTERM).

`--state-dir DIR` keeps the CA, tokens and every object in DIR (devcluster.persist): started again with the
same DIR and port, the server is the same one to its clients (old kubeconfigs verify and authenticate,
objects and resourceVersions are where they were), after Ctrl-C as after a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import re
import signal
import sys

import yaml

from devcluster.harness import DevCluster
from devcluster.persist import StateDirError

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _cluster_names(raw: str) -> list[str]:
    # A name is a URL path segment (/clusters/<name>) and a file name (OUT.d/<name>.yaml): DNS-label syntax.
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{raw!r}: give distinct lowercase names (letters, digits, '-'), comma-separated"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devcluster", description="Local Kubernetes API emulator")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve virtual clusters over HTTPS")
    s.add_argument("--port", type=int, default=6443, help="TCP port (0 = any free port)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (keep it on loopback)")
    s.add_argument("--nodes", default="cpu-small", help="node preset name or YAML file of Node objects")
    s.add_argument("--kubeconfig", required=True, help="kubeconfig file to write for the first cluster")
    s.add_argument("--clusters", type=int, default=1, help="number of virtual clusters")
    s.add_argument(
        "--names",
        type=_cluster_names,
        help="comma-separated virtual cluster names, the first one's kubeconfig in --kubeconfig "
        "(instead of --clusters)",
    )
    s.add_argument("--openshift", action="store_true", help="add OpenShift API groups and a ClusterVersion")
    s.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the CA, tokens and all objects in DIR (created 0700) so a restart on the same port "
        "serves the same clusters; default: in memory only",
    )
    s.add_argument("--pod-start-delay", type=float, help="seconds from a pod's binding to Running")
    s.add_argument("--pod-ready-delay", type=float, help="seconds from Running to Ready")
    s.add_argument("--job-duration", type=float, help="seconds a Job's pod runs")
    s.add_argument("--ttft-ms", type=float, help="inference simulator time to first token, all pods")
    s.add_argument("--itl-ms", type=float, help="inference simulator inter-token latency, all pods")
    s.add_argument("--fail-rate", type=float, help="inference simulator error rate 0..1, all pods")
    s.add_argument("--stall-after-tokens", type=int, help="inference streams stop after this many tokens")
    s.add_argument(
        "--sim-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any simulation option (SimConfig field), repeatable",
    )
    s.add_argument("--log-level", default="INFO")
    real = sub.add_parser(
        "real", help="a real Kubernetes control plane with KWOK nodes (see devcluster.real)"
    )
    real_sub = real.add_subparsers(dest="real_command", required=True)
    r = real_sub.add_parser("serve", help="start it, write an admin kubeconfig, serve until Ctrl-C")
    r.add_argument("--nodes", default="gpu-mixed", help="node preset name or YAML file of Node objects")
    r.add_argument("--kubeconfig", required=True, help="admin kubeconfig file to write (0600)")
    r.add_argument("--workdir", help="keep PKI, etcd data and component logs here (default: a temp dir)")
    r.add_argument("--log-level", default="INFO")
    return p


def _serve_real(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from devcluster.real import ControlPlane, ControlPlaneError

    stop = {"signal": None}

    def _on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    cp = ControlPlane(nodes=args.nodes, workdir=Path(args.workdir) if args.workdir else None)
    try:
        cp.start()
    except ControlPlaneError as exc:
        print(f"control plane did not start: {exc}", file=sys.stderr)
        return 1
    try:
        path = cp.write_kubeconfig(args.kubeconfig)
        print(
            f"real control plane at {cp.url} ready in {cp.started_in:.1f} s; "
            f"{len(cp.hardware)} KWOK nodes; admin kubeconfig {path}\n"
            f"component logs in {cp.workdir}/logs; Ctrl-C stops it",
            flush=True,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)
        while stop["signal"] is None:
            for name, comp in cp.components.items():
                if not comp.alive():
                    print(f"{name} exited:\n{comp.tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    finally:
        cp.stop()
    print("stopped", flush=True)
    return 0


_SIM_FLAGS = (
    "pod_start_delay",
    "pod_ready_delay",
    "job_duration",
    "ttft_ms",
    "itl_ms",
    "fail_rate",
    "stall_after_tokens",
)


def sim_config(args: argparse.Namespace) -> object | None:
    """SimConfig from the flags, or None (simulation defaults) when no flag is given or no simulation exists."""
    try:
        from devcluster.sim import SimConfig
    except ImportError:
        return None
    values: dict[str, object] = {
        k: getattr(args, k) for k in _SIM_FLAGS if getattr(args, k, None) is not None
    }
    known = {f.name for f in dataclasses.fields(SimConfig)}
    for item in args.sim_set:
        key, _, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in known:
            raise SystemExit(f"unknown simulation option {key!r}; known: {', '.join(sorted(known))}")
        values[key] = yaml.safe_load(raw)  # numbers, booleans and strings as YAML reads them
    return SimConfig(**{k: v for k, v in values.items() if k in known}) if values else None


async def _serve(args: argparse.Namespace) -> int:
    try:
        dc = DevCluster(
            nodes=args.nodes,
            clusters=args.clusters,
            names=args.names,
            port=args.port,
            host=args.host,
            openshift=args.openshift,
            sim_config=sim_config(args),
            state_dir=args.state_dir,
        )
        dc.loop = asyncio.get_running_loop()
        await dc.setup()
    except (StateDirError, OSError) as exc:
        print(f"devcluster cannot start: {exc}", file=sys.stderr)
        return 1
    # Signals are caught from here on: a stop always goes through shutdown(), which saves the state.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        paths = dc.write_kubeconfigs(args.kubeconfig)
        logging.getLogger("devcluster").info(
            "serving %d virtual cluster(s) at %s/clusters/<name>; kubeconfig %s%s%s",
            len(dc.names),
            dc.url,
            paths[0],
            f" (+{len(paths) - 1} in {paths[1].parent})" if len(paths) > 1 else "",
            f"; state in {dc.state_dir}" if dc.state_dir else "",
        )
        await stop.wait()
    finally:
        await dc.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return asyncio.run(_serve(args))
    if args.command == "real" and args.real_command == "serve":
        return _serve_real(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
