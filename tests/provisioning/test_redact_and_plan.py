"""Redaction of secrets and the plan summary, without running Terraform."""

from __future__ import annotations

import base64

from provisioning.redact import Redactor, redact
from provisioning.terraform import OutputValue, summarize_plan


def test_known_secret_is_masked_in_all_its_forms():
    secret = 'pa"ss\\word-0123456789'
    r = Redactor([secret])
    assert r(f"value={secret}!") == "value=***!"
    assert secret not in r(f'{{"k": "{secret}"}}')
    escaped = 'pa\\"ss\\\\word-0123456789'  # as the secret appears inside a JSON document
    assert r(f'"x": "{escaped}"') == '"x": "***"'
    encoded = base64.b64encode(secret.encode()).decode()
    assert r(f"token {encoded}") == "token ***"


def test_secrets_learned_later_are_masked():
    r = Redactor()
    assert r("hello sa-token-value-42") == "hello sa-token-value-42"
    r.add("sa-token-value-42")
    assert r("hello sa-token-value-42") == "hello ***"


def test_short_and_empty_values_are_not_treated_as_secrets():
    r = Redactor(["", None, "1", "ab"])
    assert r("node 1 of ab") == "node 1 of ab"


def test_multiline_secret_masked_line_by_line():
    pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUd2Vq\nZm9vYmFyYmF6cXV4\n-----END CERTIFICATE-----"
    r = Redactor([pem])
    assert "MIIBszCCAVmgAwIBAgIUd2Vq" not in r("line: MIIBszCCAVmgAwIBAgIUd2Vq")


def test_patterns_catch_unknown_secrets():
    assert redact("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE") == "AWS_ACCESS_KEY_ID=***"
    assert redact("postgresql://svc:hunter2@db:5432/x") == "postgresql://svc:***@db:5432/x"
    assert redact('client_secret = "abc.def~ghi"') == 'client_secret = "***"'
    assert redact("Authorization: Bearer abcdefghijkl").endswith("***")
    assert "eyJhbGciOi" not in redact("token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl")
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    assert redact(f"key: {pem}") == "key: ***"
    # Ordinary Terraform lines pass through untouched.
    line = 'aws_eks_node_group.gpu["a10g"]: Still creating... [10s elapsed]'
    assert redact(line) == line


def test_plan_summary_counts_like_terraform():
    plan = {
        "resource_changes": [
            {"address": "a.new", "mode": "managed", "change": {"actions": ["create"]}},
            {"address": "a.changed", "mode": "managed", "change": {"actions": ["update"]}},
            {"address": "a.gone", "mode": "managed", "change": {"actions": ["delete"]}},
            {"address": "a.replaced", "mode": "managed", "change": {"actions": ["delete", "create"]}},
            {"address": "a.same", "mode": "managed", "change": {"actions": ["no-op"]}},
            {"address": "data.x.y", "mode": "data", "change": {"actions": ["read"]}},
        ]
    }
    summary = summarize_plan(plan)
    assert (summary.add, summary.change, summary.destroy) == (2, 1, 2)
    assert summary.operations == 5
    assert summary.as_dict()["resources"] == [
        {"address": "a.new", "action": "create"},
        {"address": "a.changed", "action": "update"},
        {"address": "a.gone", "action": "delete"},
        {"address": "a.replaced", "action": "replace"},
    ]
    assert not summarize_plan({"resource_changes": []}).has_changes


def test_sensitive_output_value_hidden_from_repr():
    out = OutputValue(value="apiVersion: v1\nusers: token: xyz-secret", sensitive=True, type="string")
    assert "xyz-secret" not in repr(out) and "xyz-secret" not in str(out)
    assert "kept" in repr(OutputValue(value="kept", sensitive=False))
