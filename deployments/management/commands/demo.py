"""Drive a model deployment's whole lifecycle through the REST API, with live progress, and print a summary.

register or reuse the cluster → inventory → plan → deploy → benchmark → health → delete.

Everything goes through the HTTP API of a running service (``make run``), exactly as a client would; when no token
is given, the command makes one for the first superuser in the database (valid 12 hours; keys are stored hashed, so
an existing one cannot be read back).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Deploy a model on the devcluster through the REST API, follow it live, check health, delete it."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--url",
            default=os.environ.get("BUDCLUSTER_URL", f"http://127.0.0.1:{os.environ.get('PORT', '9082')}"),
        )
        parser.add_argument("--token", default=os.environ.get("BUDCLUSTER_TOKEN", ""), help="API token")
        parser.add_argument("--cluster", default="devcluster", help="cluster name to reuse or register")
        parser.add_argument(
            "--kubeconfig", default="var/devcluster.yaml", help="registered when the cluster is missing"
        )
        parser.add_argument("--model", default="llama-3.1-8b-instruct")
        parser.add_argument("--name", default="demo-llama")
        parser.add_argument("--replicas", type=int, default=1)
        parser.add_argument("--keep", action="store_true", help="leave the deployment running (skip delete)")
        parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _token(self, given: str) -> str:
        if given:
            return given
        from django.contrib.auth import get_user_model

        from core.tokens import create_token

        user = get_user_model().objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
        if user is None:
            raise CommandError("no superuser: run `manage.py ensure_admin` (make run does) or pass --token")
        return create_token(user, days=0.5)[1]  # short-lived: it lives in this process only

    def _call(self, method: str, path: str, *, ok=(200,), **kwargs) -> dict:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandError(
                f"{method} {path}: {exc} (is `make run` running at {self.client.base_url}?)"
            ) from None
        body = response.json() if response.content else {}
        if response.status_code not in ok:
            raise CommandError(f"{method} {path} answered {response.status_code}: {body}")
        return body

    def _follow(self, run_id: str, timeout: float) -> dict:
        """Print the run's events and progress as they come, until it ends."""
        seen: set[int] = set()
        last_message = ""
        deadline = time.monotonic() + timeout
        while True:
            run = self._call("GET", f"/runs/{run_id}")
            for event in run.get("events", []):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    self.stdout.write(
                        f"    [{event['created_at'][11:19]}] {run['progress']:5.1f}%  {event['message']}"
                    )
            # A waiting step's message (bytes copied, replicas ready, why not) changes between events.
            waiting = next((s for s in run.get("steps", []) if s["status"] == "waiting"), None)
            if waiting and waiting["message"] and waiting["message"] != last_message:
                last_message = waiting["message"]
                self.stdout.write(f"               {run['progress']:5.1f}%    … {last_message}")
            if run["status"] in ("succeeded", "failed", "cancelled"):
                return run
            if time.monotonic() > deadline:
                raise CommandError(f"run {run_id} still {run['status']} after {timeout:.0f}s")
            time.sleep(0.5)

    def _phase(self, title: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n== {title}"))

    # --- the lifecycle -----------------------------------------------------------------------------------------

    def handle(self, *args, **opts) -> None:
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll would drown the progress
        self.client = httpx.Client(
            base_url=opts["url"], headers={"Authorization": f"Token {self._token(opts['token'])}"}, timeout=30
        )
        timings: dict[str, float] = {}
        started = time.monotonic()

        self._phase("1. Cluster")
        t = time.monotonic()
        found = self._call("GET", "/clusters", params={"search": opts["cluster"]})["results"]
        cluster = next((c for c in found if c["name"] == opts["cluster"]), None)
        if cluster is None or cluster["status"] == "registering":
            if cluster is None:
                path = Path(opts["kubeconfig"])
                if not path.is_file():
                    raise CommandError(f"no cluster {opts['cluster']!r} and no kubeconfig at {path}")
                body = self._call(
                    "POST",
                    "/clusters/register",
                    ok=(202,),
                    json={"name": opts["cluster"], "kubeconfig": path.read_text()},
                )
                self.stdout.write(f"  registering {opts['cluster']} (run {body['run_id']})")
                run = self._follow(body["run_id"], opts["timeout"])
            else:
                self.stdout.write(f"  {opts['cluster']} is registering; following its run")
                runs = self._call(
                    "GET", "/runs", params={"subject_id": cluster["id"], "kind": "cluster.register"}
                )
                run = self._follow(runs["results"][0]["id"], opts["timeout"])
            if run["status"] != "succeeded":
                raise CommandError(f"registration {run['status']}: {run['error']}")
            cluster = self._call("GET", f"/clusters/{run['subject_id']}")
        else:
            self.stdout.write(
                f"  reusing cluster {cluster['name']} (id {cluster['id']}, {cluster['status']})"
            )
        if cluster["status"] != "available":
            raise CommandError(f"cluster {cluster['name']} is {cluster['status']}: {cluster.get('reason')}")
        timings["cluster"] = time.monotonic() - t

        self._phase("2. Inventory")
        t = time.monotonic()
        info = self._call("GET", f"/clusters/{cluster['id']}/device-info")
        for node in info["nodes"]:
            devices = (
                ", ".join(f"{d['total']}x {d['model']} ({d['free']} free)" for d in node["devices"])
                or "CPU only"
            )
            self.stdout.write(
                f"  {node['node']:<32} {'ready' if node['ready'] else 'NOT READY':<9} {devices}"
            )
        timings["inventory"] = time.monotonic() - t

        self._phase("3. Plan (dry run)")
        t = time.monotonic()
        request = {
            "cluster": cluster["id"], "name": opts["name"], "model": opts["model"], "replicas": opts["replicas"],
            "context_len": 4096, "concurrency": 16,
        }  # fmt: skip
        plan = self._call("POST", "/deployments/plan", ok=(200, 422), json=request)
        if not plan["feasible"]:
            self.stdout.write(self.style.ERROR(f"  {plan['detail']}"))
            for reason in plan["refusals"]:
                self.stdout.write(f"    {reason}")
            raise CommandError("the model fits nowhere on this cluster")
        memory = plan["memory"]
        self.stdout.write(f"  placement: {plan['placement']['summary']}")
        self.stdout.write(
            f"  memory: weights {memory['weights_gib']} GiB + KV cache {memory['kv_cache_gib']} GiB + overhead "
            f"{memory['overhead_gib']} GiB; estimated {plan['estimated_total_seconds']:.0f}s on real hardware"
        )
        timings["plan"] = time.monotonic() - t

        self._phase("4. Deploy")
        t = time.monotonic()
        body = self._call(
            "POST",
            "/deployments/deploy",
            ok=(202,),
            json={**request, "benchmark": {"requests": 40, "concurrency": 8}},
        )
        deployment_id = body["deployment_id"]
        self.stdout.write(
            f"  deployment {deployment_id} in namespace {body['namespace']} (run {body['run_id']})"
        )
        run = self._follow(body["run_id"], opts["timeout"])
        timings["deploy"] = time.monotonic() - t
        if run["status"] != "succeeded":
            raise CommandError(f"deploy {run['status']}: {run['error']}")
        out = next(s for s in run["steps"] if s["name"] == "benchmark")["output"]
        if "mean_ttft_ms" in out:
            self.stdout.write(
                f"  benchmark {out.get('benchmark_id')}: {out['successful_requests']} ok, "
                f"{out['failed_requests']} failed; TTFT mean {out['mean_ttft_ms']:.0f} ms, "
                f"ITL mean {out['mean_itl_ms']:.1f} ms, output {out['output_throughput']:.0f} tok/s"
            )
        else:
            self.stdout.write(f"  benchmark: {out}")

        self._phase("5. Health")
        t = time.monotonic()
        detail = self._call("GET", f"/deployments/{deployment_id}")
        self.stdout.write(f"  status {detail['status']}, {detail['ready_replicas']}/{detail['replicas']} ready, "
                          f"revision {detail['revision']}, endpoint {detail['endpoint_url']}")  # fmt: skip
        for worker in detail["workers"]:
            self.stdout.write(
                f"    worker {worker['name']} on {worker['node']}: {worker['phase']}, ready {worker['ready']}"
            )
        answer = httpx.post(
            f"{detail['endpoint_url']}/v1/completions",
            json={"model": opts["model"], "prompt": "BudCluster says", "max_tokens": 8},
            timeout=30,
            trust_env=False,
        )
        text = answer.json()["choices"][0]["text"] if answer.status_code == 200 else answer.text[:200]
        self.stdout.write(f"  POST /v1/completions → {answer.status_code}: {text!r}")
        timings["health"] = time.monotonic() - t

        if not opts["keep"]:
            self._phase("6. Delete")
            t = time.monotonic()
            body = self._call("DELETE", f"/deployments/{deployment_id}", ok=(202,))
            run = self._follow(body["run_id"], opts["timeout"])
            if run["status"] != "succeeded":
                raise CommandError(f"delete {run['status']}: {run['error']}")
            timings["delete"] = time.monotonic() - t

        self._phase("Summary")
        final = self._call("GET", f"/deployments/{deployment_id}")
        self.stdout.write(
            f"  deployment {final['name']} ({opts['model']}) on {cluster['name']}: {final['status']}"
        )
        for phase, seconds in timings.items():
            self.stdout.write(f"  {phase:<10} {seconds:6.1f}s")
        self.stdout.write(self.style.SUCCESS(f"  total      {time.monotonic() - started:6.1f}s"))
