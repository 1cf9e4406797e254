"""Hostile kubeconfigs are refused with a reason naming the problem; ordinary ones are accepted."""

from __future__ import annotations

import base64
import copy
import socket
from typing import Any

import pytest
import yaml

from clusters.kubeconfig import KubeconfigError, check_host_at_connect, validate_kubeconfig

PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n").decode()
KEY_PEM = base64.b64encode(
    b"-----BEGIN EC PRIVATE KEY-----\nMHcfake\n-----END EC PRIVATE KEY-----\n"
).decode()
TOKEN = "sha256~very-secret-token-value"
# "127.0.0.1" in full-width digits and ideographic full stops; IDNA maps it to the ASCII address.
FULLWIDTH_LOOPBACK = "\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11"


def base_config(**cluster_overrides: Any) -> dict[str, Any]:
    cluster = {"server": "https://k8s.example.com:6443", "certificate-authority-data": PEM}
    cluster.update(cluster_overrides)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "prod",
        "clusters": [{"name": "prod-cluster", "cluster": cluster}],
        "users": [{"name": "admin", "user": {"token": TOKEN}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod-cluster", "user": "admin"}}],
    }


def dump(config: Any) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def with_server(server: str, **extra: Any) -> str:
    return dump(base_config(server=server, **extra))


def with_user(user: dict[str, Any], *, extra_user: bool = False) -> str:
    config = base_config()
    if extra_user:  # the dangerous user is NOT the one the current context uses
        config["users"].append({"name": "other", "user": user})
    else:
        config["users"][0]["user"] = user
    return dump(config)


def mutate(fn) -> str:
    config = copy.deepcopy(base_config())
    fn(config)
    return dump(config)


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]
"""

HOSTILE: list[tuple[str, bytes | str, str]] = [
    ("too large", b"a: " + b"x" * (1024 * 1024 + 10), "more than the 1048576 bytes"),
    ("not utf-8", b"clusters: [\xff\xfe]\n", "not valid UTF-8"),
    ("yaml list", "- a\n- b\n", "must be a YAML mapping, got list"),
    ("yaml scalar", "just a string\n", "must be a YAML mapping, got str"),
    ("broken yaml", "clusters: [\n  - {name: x\n", "not valid YAML"),
    ("billion laughs", BILLION_LAUGHS, "anchors/aliases"),
    ("single alias", dump(base_config()) + "x: &anchor 1\ny: *anchor\n", "billion laughs"),
    # Deep nesting overflows the YAML library's C stack (a crash, not an exception) unless refused first.
    ("deep nesting", "a: " + "[" * 50_000 + "]" * 50_000, "nests deeper than 32 levels"),
    ("python tag", "a: !!python/object/apply:os.system ['id']\n", "not valid YAML"),
    ("duplicate key", "kind: Config\nkind: Config\n", "duplicate key 'kind'"),
    ("exec user", with_user({"exec": {"command": "aws", "apiVersion": "v1"}}), "uses exec"),
    (
        "exec in another user",
        with_user({"exec": {"command": "sh"}}, extra_user=True),
        "user 'other' uses exec",
    ),
    ("auth-provider", with_user({"auth-provider": {"name": "gcp"}}, extra_user=True), "uses auth-provider"),
    ("tokenFile", with_user({"tokenFile": "/var/run/secrets/token"}), "references a file (tokenFile)"),
    ("client-certificate path", with_user({"client-certificate": "/etc/x.crt"}), "(client-certificate)"),
    ("client-key path", with_user({"client-key": "/etc/x.key"}), "references a file (client-key)"),
    (
        "certificate-authority path",
        with_server("https://k8s.example.com", **{"certificate-authority": "/ca"}),
        "(certificate-authority)",
    ),
    ("http server", with_server("http://k8s.example.com:8080"), "must use https"),
    ("no scheme", with_server("k8s.example.com:6443"), "must use https:// (got no scheme)"),
    ("missing server", mutate(lambda c: c["clusters"][0]["cluster"].pop("server")), "server is missing"),
    ("loopback", with_server("https://127.0.0.1:6443"), "loopback"),
    ("loopback ::1", with_server("https://[::1]:6443"), "loopback"),
    ("localhost uppercase trailing dot", with_server("https://LOCALHOST.:6443"), "loopback"),
    ("sub.localhost", with_server("https://api.localhost"), "loopback"),
    ("decimal loopback", with_server("https://2130706433:6443"), "2130706433 (= 127.0.0.1) is a loopback"),
    ("hex loopback", with_server("https://0x7f000001"), "(= 127.0.0.1) is a loopback"),
    ("octal loopback", with_server("https://0177.0.0.1"), "(= 127.0.0.1) is a loopback"),
    ("short loopback", with_server("https://127.1"), "(= 127.0.0.1) is a loopback"),
    ("ipv4-mapped loopback", with_server("https://[::ffff:127.0.0.1]"), "loopback"),
    ("full-width loopback", with_server("https://" + FULLWIDTH_LOOPBACK), "loopback"),
    ("unspecified v4", with_server("https://0.0.0.0:6443"), "unspecified"),
    ("unspecified v6", with_server("https://[::]:6443"), "unspecified"),
    ("zero shorthand", with_server("https://0:6443"), "unspecified"),
    ("link-local v4", with_server("https://169.254.10.20"), "link-local"),
    ("link-local v6 with zone", with_server("https://[fe80::1%25eth0]:6443"), "link-local"),
    ("aws metadata", with_server("https://169.254.169.254"), "cloud metadata"),
    ("aws metadata ipv6", with_server("https://[fd00:ec2::254]"), "cloud metadata"),
    ("gcp metadata name", with_server("https://metadata.google.internal."), "cloud metadata"),
    ("bare metadata name", with_server("https://Metadata"), "cloud metadata"),
    ("alibaba metadata", with_server("https://100.100.100.200"), "cloud metadata"),
    ("metadata via nat64", with_server("https://[64:ff9b::a9fe:a9fe]"), "cloud metadata"),
    ("userinfo hides loopback", with_server("https://k8s.example.com@127.0.0.1"), "loopback"),
    ("userinfo", with_server("https://user@k8s.example.com"), "user info"),
    ("backslash trick", with_server("https://k8s.example.com\\@127.0.0.1"), "backslashes"),
    ("invalid numeric host", with_server("https://256.0.0.1"), "server host '256.0.0.1' looks numeric"),
    ("bad port", with_server("https://k8s.example.com:99999"), "not a valid URL"),
    ("percent-encoded host", with_server("https://%31%32%37.0.0.1"), "percent-encoding"),
    (
        "proxy to metadata",
        with_server("https://k8s.example.com", **{"proxy-url": "http://169.254.169.254"}),
        "proxy-url host 169.254.169.254 is a cloud metadata",
    ),
    (
        "proxy bad scheme",
        with_server("https://k8s.example.com", **{"proxy-url": "ftp://proxy.example.com"}),
        "proxy-url must use http:// or https:// or socks5:// (got ftp://)",
    ),
    (
        "insecure-skip-tls-verify",
        with_server("https://k8s.example.com", **{"insecure-skip-tls-verify": True}),
        "insecure-skip-tls-verify",
    ),
    (
        "bad ca data",
        with_server("https://k8s.example.com", **{"certificate-authority-data": "not base64!"}),
        "certificate-authority-data is not valid base64",
    ),
    ("cert without key", with_user({"client-certificate-data": PEM}), "needs both"),
    ("no contexts", mutate(lambda c: c.update(contexts=[])), "has no contexts"),
    (
        "missing current-context",
        mutate(
            lambda c: (
                c.pop("current-context"),
                c["contexts"].append({"name": "b", "context": {"cluster": "prod-cluster", "user": "admin"}}),
            )
        ),
        "2 contexts and no current-context",
    ),
    (
        "current-context missing",
        mutate(lambda c: c.update({"current-context": "staging"})),
        "current-context 'staging' does not exist",
    ),
    (
        "context names missing cluster",
        mutate(lambda c: c["contexts"][0]["context"].update(cluster="gone")),
        "names cluster 'gone', which is not in the kubeconfig",
    ),
    (
        "context names missing user",
        mutate(lambda c: c["contexts"][0]["context"].update(user="ghost")),
        "names user 'ghost'",
    ),
    (
        "duplicate cluster names",
        mutate(lambda c: c["clusters"].append(copy.deepcopy(c["clusters"][0]))),
        "two entries named 'prod-cluster'",
    ),
    (
        "dangerous unselected cluster",
        mutate(
            lambda c: c["clusters"].append({"name": "evil", "cluster": {"server": "https://169.254.169.254"}})
        ),
        "cluster 'evil' server host 169.254.169.254 is a cloud metadata",
    ),
    ("wrong kind", mutate(lambda c: c.update(kind="Pod")), "kind must be Config"),
]


@pytest.mark.parametrize(("raw", "reason"), [(r, m) for _, r, m in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_hostile_kubeconfig_is_refused_with_its_reason(raw, reason):
    with pytest.raises(KubeconfigError) as info:
        validate_kubeconfig(raw, allow_loopback=False)
    message = str(info.value)
    assert reason in message
    # The reason never echoes credentials.
    assert TOKEN not in message
    assert PEM not in message


def test_requested_context_that_does_not_exist():
    with pytest.raises(KubeconfigError, match=r"context 'nope' not found in kubeconfig \(available: prod\)"):
        validate_kubeconfig(dump(base_config()), "nope")


def test_yaml_error_message_does_not_quote_the_line():
    # PyYAML's own message quotes the offending line; that line may be a token.
    raw = f"users:\n- name: a\n  user: {{token: {TOKEN}\n"
    with pytest.raises(KubeconfigError) as info:
        validate_kubeconfig(raw)
    assert "not valid YAML" in str(info.value)
    assert TOKEN not in str(info.value)


def test_token_user_is_accepted_and_normalized_to_the_selected_context():
    config = base_config()
    config["clusters"][0]["cluster"]["extensions"] = [{"name": "x", "extension": {"a": 1}}]
    result = validate_kubeconfig(dump(config))
    assert (result.context_name, result.cluster_name, result.user_name) == ("prod", "prod-cluster", "admin")
    assert result.server == "https://k8s.example.com:6443"
    assert (result.host, result.port, result.is_loopback) == ("k8s.example.com", 6443, False)
    normalized = yaml.safe_load(result.normalized_yaml())
    assert normalized["current-context"] == "prod"
    assert normalized["users"] == [{"name": "admin", "user": {"token": TOKEN}}]
    assert normalized["clusters"][0]["cluster"] == {
        "server": "https://k8s.example.com:6443",
        "certificate-authority-data": PEM,
    }


def test_inline_client_certificate_user_is_accepted():
    user = {"client-certificate-data": PEM, "client-key-data": KEY_PEM}
    result = validate_kubeconfig(with_user(user).encode())
    assert result.normalized["users"][0]["user"] == user


def test_several_contexts_with_an_explicit_context():
    config = base_config()
    config.pop("current-context")
    config["clusters"].append(
        {"name": "dev-cluster", "cluster": {"server": "https://10.0.0.7", "certificate-authority-data": PEM}}
    )
    config["users"].append({"name": "dev", "user": {"username": "ops", "password": "pw"}})
    config["contexts"].append(
        {"name": "dev", "context": {"cluster": "dev-cluster", "user": "dev", "namespace": "ml"}}
    )
    result = validate_kubeconfig(dump(config), "dev")
    assert (result.cluster_name, result.user_name, result.namespace) == ("dev-cluster", "dev", "ml")
    assert (result.host, result.port) == ("10.0.0.7", 443)
    names = [c["name"] for c in result.normalized["clusters"]]
    assert names == ["dev-cluster"]  # only the selected context survives normalisation
    assert [u["name"] for u in result.normalized["users"]] == ["dev"]


def test_single_context_without_current_context_is_used():
    config = base_config()
    config.pop("current-context")
    assert validate_kubeconfig(dump(config)).context_name == "prod"


def test_utf8_bom_is_accepted():
    assert validate_kubeconfig(b"\xef\xbb\xbf" + dump(base_config()).encode()).context_name == "prod"


@pytest.mark.parametrize("server", ["https://127.0.0.1:6443", "https://localhost:8443", "https://[::1]"])
def test_loopback_is_accepted_only_when_allowed(server):
    raw = with_server(server)
    with pytest.raises(KubeconfigError, match="BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"):
        validate_kubeconfig(raw, allow_loopback=False)
    assert validate_kubeconfig(raw, allow_loopback=True).is_loopback


def test_loopback_follows_the_setting(settings):
    raw = with_server("https://127.0.0.1:6443")
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = False
    with pytest.raises(KubeconfigError, match="loopback"):
        validate_kubeconfig(raw)
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    assert validate_kubeconfig(raw).host == "127.0.0.1"


def test_size_limit_follows_the_setting(settings):
    settings.KUBECONFIG_MAX_BYTES = 200
    with pytest.raises(KubeconfigError, match="more than the 200 bytes"):
        validate_kubeconfig(dump(base_config()))


def test_insecure_skip_tls_verify_allowed_for_allowed_loopback_only():
    raw = with_server("https://127.0.0.1:6443", **{"insecure-skip-tls-verify": True})
    result = validate_kubeconfig(raw, allow_loopback=True)
    assert result.normalized["clusters"][0]["cluster"]["insecure-skip-tls-verify"] is True
    with pytest.raises(KubeconfigError, match="loopback"):
        validate_kubeconfig(raw, allow_loopback=False)


def test_private_network_addresses_are_accepted():
    # Real clusters live on private networks; only loopback/link-local/metadata/unspecified are special.
    for server in ("https://10.1.2.3:6443", "https://192.168.1.10", "https://[fd12:3456::1]:6443"):
        assert validate_kubeconfig(with_server(server)).server == server


# --- connect-time checks ------------------------------------------------------------------------------------


def test_connect_check_pins_literal_addresses():
    assert check_host_at_connect("10.0.0.9", 6443) == "10.0.0.9"
    assert check_host_at_connect("127.0.0.1", 6443, allow_loopback=True) == "127.0.0.1"
    with pytest.raises(KubeconfigError, match="cloud metadata"):
        check_host_at_connect("169.254.169.254", 443)


def test_connect_check_refuses_a_name_resolving_to_a_forbidden_address(monkeypatch):
    answers = {
        "rebind.example.com": ["93.184.216.34", "169.254.169.254"],
        "good.example.com": ["93.184.216.34"],
    }

    def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        # Stands in for DNS, which the test machine cannot reach.
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert check_host_at_connect("good.example.com", 443) == "93.184.216.34"
    with pytest.raises(KubeconfigError, match=r"resolves to 169\.254\.169\.254, a cloud metadata endpoint"):
        check_host_at_connect("rebind.example.com", 443)
    with pytest.raises(KubeconfigError, match="does not resolve"):
        check_host_at_connect("missing.example.com", 443)


def test_connect_check_resolves_localhost_as_loopback():
    # Real resolver (the hosts file): the name is judged by what it resolves to.
    assert check_host_at_connect("localhost", 443, allow_loopback=True) in {"127.0.0.1", "::1"}
    with pytest.raises(KubeconfigError, match="loopback"):
        check_host_at_connect("localhost", 443, allow_loopback=False)
