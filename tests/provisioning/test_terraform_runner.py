"""The Terraform runner end to end: real Terraform binary, real pg backend, the local stand-in module.

The local module (terraform/testing/local-cluster) creates null resources that each take
``resource_delay_seconds`` and returns the same outputs contract as the cloud modules, so everything
except the cloud API calls runs for real here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from provisioning.terraform import (
    PlanSummary,
    ResourceEvent,
    TerraformCancelled,
    TerraformError,
    TerraformRunner,
    TerraformTimeout,
)
from tests.provisioning.conftest import LOCAL_MODULE, read_state

# The pg backend keeps its state in this session's test database (tests/provisioning/conftest.py: pg_url), which
# pytest-django creates only for a session holding tests that ask for it.
pytestmark = pytest.mark.django_db

ADDRESSES = {
    "null_resource.network",
    "null_resource.control_plane",
    "null_resource.node[0]",
    "null_resource.node[1]",
}


def runner(cli_config: Path, schema: str, **kwargs) -> TerraformRunner:
    from tests.worker import test_database_url

    variables = {"cluster_name": "demo", "node_count": 2, "resource_delay_seconds": 0}
    variables.update(kwargs.pop("variables", {}))
    return TerraformRunner(
        LOCAL_MODULE,
        schema_name=schema,
        pg_conn_str=test_database_url(),
        variables=variables,
        cli_config_file=cli_config,
        **kwargs,
    )


def test_init_plan_apply_output_destroy_on_pg_backend(tf_cli_config, pg_schema):
    events: list[ResourceEvent] = []
    progress: list[float] = []
    with runner(
        tf_cli_config,
        pg_schema,
        variables={"api_server": "https://10.1.2.3:6443"},
        secret_variables={"token": "kube-token-abcdef-123456"},
    ) as tf:
        tf.init()
        plan = tf.plan()
        assert (plan.add, plan.change, plan.destroy) == (4, 0, 0)
        assert {r.address for r in plan.resources} == ADDRESSES
        assert {r.action for r in plan.resources} == {"create"}
        assert plan.as_dict()["resources"][0].keys() == {"address", "action"}

        result = tf.apply(plan, on_event=events.append, on_progress=progress.append)
        assert (result.add, result.change, result.destroy) == (4, 0, 0)
        assert result.completed == 4

        # Every resource starts before it completes, and dependencies complete before dependents start.
        order = [(e.address, e.status) for e in events if e.status in ("started", "complete")]
        for address in ADDRESSES:
            assert order.index((address, "started")) < order.index((address, "complete"))
        assert order.index(("null_resource.network", "complete")) < order.index(
            ("null_resource.control_plane", "started")
        )
        assert order.index(("null_resource.control_plane", "complete")) < order.index(
            ("null_resource.node[0]", "started")
        )
        assert all(e.action == "create" for e in events)
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert progress[0] == pytest.approx(0.25)

        # State lives in PostgreSQL, in the cluster's own schema.
        [(workspace, data)] = read_state(pg_schema)
        assert workspace == "default"
        state = json.loads(data)
        assert {r["type"] for r in state["resources"]} == {"null_resource"}
        assert len(state["resources"]) == 3  # network, control_plane, node (with 2 instances)

        outputs = tf.output()
        assert outputs["cluster_name"].value == "demo"
        kubeconfig = outputs["kubeconfig"]
        assert kubeconfig.sensitive
        assert "kube-token-abcdef-123456" not in repr(outputs)
        parsed = yaml.safe_load(kubeconfig.value)
        # The token never enters the state: the output names the user, BudCluster adds the token.
        assert parsed["users"][0]["user"] == {}
        assert "kube-token-abcdef-123456" not in read_state(pg_schema)[0][1]
        assert parsed["clusters"][0]["cluster"]["server"] == "https://10.1.2.3:6443"
        assert "exec" not in parsed["users"][0]["user"]

        destroy_events: list[ResourceEvent] = []
        destroyed = tf.destroy(on_event=destroy_events.append)
        assert destroyed.destroy == 4
        assert {e.address for e in destroy_events if e.status == "complete"} == ADDRESSES
        assert {e.action for e in destroy_events} == {"delete"}
        workdir = tf.workdir

    [(_, data)] = read_state(pg_schema)
    assert json.loads(data)["resources"] == []
    assert not workdir.exists()


def test_saved_plan_bytes_apply_in_a_new_work_directory(tf_cli_config, pg_schema):
    """Plan and apply may run in different worker tasks: the plan travels as bytes."""
    with runner(tf_cli_config, pg_schema, variables={"node_count": 1}) as tf:
        tf.init()
        plan = tf.plan()
        saved = tf.plan_bytes()
    assert plan.add == 3
    progress: list[float] = []
    with runner(tf_cli_config, pg_schema, variables={"node_count": 1}) as tf:
        tf.init()
        result = tf.apply(saved, on_progress=progress.append)
        assert result.planned == 3 and result.completed == 3
        assert progress[-1] == 1.0
        # Nothing left to do: the saved plan was the whole change.
        assert not tf.plan().has_changes


def test_cancel_mid_apply_leaves_no_lock_on_pg_backend(tf_cli_config, pg_schema):
    started = threading.Event()

    def on_event(event: ResourceEvent) -> None:
        if event.status == "started":
            started.set()

    with runner(tf_cli_config, pg_schema, variables={"resource_delay_seconds": 60}, cancel_grace=60) as tf:
        tf.init()
        plan = tf.plan()
        canceller = threading.Thread(target=lambda: started.wait(60) and tf.cancel())
        canceller.start()
        with pytest.raises(TerraformCancelled):
            tf.apply(plan, on_event=on_event)
        canceller.join(timeout=90)
        assert started.is_set()

    # A new run on the same state, with no lock waiting allowed, plans fine: the lock was released.
    with runner(tf_cli_config, pg_schema, variables={"resource_delay_seconds": 60}, lock_timeout="0s") as tf:
        tf.init()
        again = tf.plan()
    # The apply really stopped midway: the nodes were never created.
    assert "null_resource.node[0]" in {r.address for r in again.resources}
    assert again.add >= 3


def test_should_cancel_on_local_backend_removes_lock_file(tf_cli_config, tmp_path):
    state = tmp_path / "state" / "terraform.tfstate"
    state.parent.mkdir()
    started = threading.Event()

    def make() -> TerraformRunner:
        return TerraformRunner(
            LOCAL_MODULE,
            backend="local",
            state_path=state,
            variables={"cluster_name": "demo", "resource_delay_seconds": 60},
            cli_config_file=tf_cli_config,
            cancel_grace=60,
            lock_timeout="0s",
        )

    with make() as tf:
        tf.init()
        plan = tf.plan()
        with pytest.raises(TerraformCancelled):
            tf.apply(
                plan,
                on_event=lambda e: e.status == "started" and started.set(),
                should_cancel=started.is_set,
            )
    assert not list(state.parent.glob("*.lock.info"))
    with make() as tf:
        tf.init()
        assert tf.plan().add >= 3


def test_timeout_interrupts_cleanly(tf_cli_config, pg_schema):
    with runner(tf_cli_config, pg_schema, variables={"resource_delay_seconds": 60}, cancel_grace=60) as tf:
        tf.init()
        plan = tf.plan()
        with pytest.raises(TerraformTimeout):
            tf.apply(plan, timeout=3)
    with runner(tf_cli_config, pg_schema, lock_timeout="0s") as tf:
        tf.init()
        assert isinstance(tf.plan(), PlanSummary)


def test_secrets_never_reach_callbacks(tf_cli_config, pg_schema):
    aws_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    token = "sa-token-0123456789abcdef"
    lines: list[str] = []
    events: list[ResourceEvent] = []
    with runner(
        tf_cli_config,
        pg_schema,
        variables={"echo_env_var": "AWS_SECRET_ACCESS_KEY", "node_count": 1},
        secret_variables={"token": token},
        env={"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": aws_secret},
    ) as tf:
        tf.init(on_log=lines.append)
        plan = tf.plan(on_log=lines.append)
        tf.apply(plan, on_event=events.append, on_log=lines.append)
        tf.destroy(on_event=events.append, on_log=lines.append)
    everything = "\n".join(lines + [e.message for e in events])
    assert aws_secret not in everything
    assert token not in everything
    # The provisioner did print the secret (it is the line Terraform reports for local-exec output),
    # and what reached us is the masked form.
    assert any(line.endswith("(local-exec): ***") for line in lines)


def test_errors_carry_redacted_diagnostics(tf_cli_config, pg_schema):
    secret = "very-secret-password-value"
    with runner(
        tf_cli_config,
        pg_schema,
        variables={"node_count": "not-a-number"},
        env={"ARM_CLIENT_SECRET": secret},
    ) as tf:
        tf.init()
        with pytest.raises(TerraformError) as excinfo:
            tf.plan()
    assert "Invalid value for input variable" in str(excinfo.value)
    assert excinfo.value.returncode != 0
    assert secret not in str(excinfo.value)


def test_pg_password_goes_to_the_environment_not_argv(tf_cli_config):
    tf = TerraformRunner(
        LOCAL_MODULE,
        schema_name="unused",
        pg_conn_str="postgresql://svc:p%40ss-w0rd@db.internal:5432/budcluster",
        variables={"cluster_name": "x"},
        cli_config_file=tf_cli_config,
    )
    try:
        assert "p%40ss-w0rd" not in tf._pg_conn_str and "p@ss-w0rd" not in tf._pg_conn_str
        assert tf._env["PGPASSWORD"] == "p@ss-w0rd"
        assert tf._env["PGSSLMODE"] == "require"
        assert tf.redactor("conn p@ss-w0rd") == "conn ***"
        assert (tf.workdir.stat().st_mode & 0o777) == 0o700
    finally:
        tf.close()


def test_module_declaring_its_own_backend_is_refused(tmp_path, tf_cli_config):
    (tmp_path / "main.tf").write_text('terraform {\n  backend "s3" {\n    bucket = "x"\n  }\n}\n')
    with pytest.raises(TerraformError, match="declares a backend"):
        TerraformRunner(tmp_path, backend="local", state_path=tmp_path / "s", cli_config_file=tf_cli_config)


def test_backend_check_reads_hcl_not_text(tmp_path, tf_cli_config):
    """Only a backend block Terraform would read counts: not one in a comment or a heredoc's text."""
    (tmp_path / "main.tf").write_text(
        '# backend "s3" {}\n'
        '/* terraform {\n  backend "gcs" {}\n} */\n'
        'resource "null_resource" "x" {\n'
        '  triggers = {\n    doc = <<-EOT\n      backend "s3" {\n    EOT\n  }\n}\n'
    )
    TerraformRunner(
        tmp_path, backend="local", state_path=tmp_path / "s", cli_config_file=tf_cli_config
    ).close()
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "main.tf").write_text('terraform {\n  required_version = ">= 1.0"\n  backend "s3" {}\n}\n')
    with pytest.raises(TerraformError, match=r"main\.tf declares a backend"):
        TerraformRunner(nested, backend="local", state_path=tmp_path / "s", cli_config_file=tf_cli_config)


def test_binary_is_selectable(tmp_path, monkeypatch):
    from provisioning.toolchain import ToolchainError

    with pytest.raises(ToolchainError, match="tofu"):
        TerraformRunner(LOCAL_MODULE, backend="local", state_path=tmp_path / "s", binary="/nonexistent/tofu")
    monkeypatch.setenv("TERRAFORM_BINARY", "no-such-terraform")
    with pytest.raises(ToolchainError, match="no-such-terraform"):
        TerraformRunner(LOCAL_MODULE, backend="local", state_path=tmp_path / "s")
