"""Validation of uploaded kubeconfigs, which are hostile until checked.

:func:`validate_kubeconfig` is the one static check used by the API, the admin and ``manage.py
check_kubeconfig``; :func:`check_host_at_connect` is the dynamic check the cluster gateway runs before every
connection. Both raise :class:`KubeconfigError` whose message names the problem and is safe to return to the
client (it may name clusters, users, contexts and hosts, never tokens, keys or certificates).

What is refused, and why
------------------------
* Size over ``KUBECONFIG_MAX_BYTES`` (1 MiB), text that is not UTF-8, YAML that is not one mapping, duplicate
  keys (parsers disagree on which copy wins).
* YAML anchors and aliases, all of them: a few nested aliases expand exponentially ("billion laughs"), and
  real kubeconfigs (written by kubectl and cloud CLIs) never use them, so refusing outright is simpler and
  safer than bounding the expansion.
* In ANY user (not only the selected one): ``exec`` and ``auth-provider`` (they run commands or reach token
  endpoints on this server), and file references ``tokenFile``, ``client-certificate``, ``client-key``; in ANY
  cluster ``certificate-authority`` (a path on this server). Only the inline ``*-data`` forms are accepted.
  ``token`` and ``username``/``password`` are accepted: they are static credentials sent to the API server
  over TLS, nothing runs or is read locally (basic auth is rejected by modern API servers, which verification
  will report as "unauthorized"). Impersonation fields (``as``, ``as-groups``...) are accepted; the server
  decides.
* Every cluster's ``server`` must be ``https://host[:port][/path]`` without user info, query or fragment;
  ``proxy-url`` is refused (after its host is judged by the same rules, so a proxy at a metadata address is
  named as such): the gateway connects directly, pinned to the server's checked address.
* Hosts that are unspecified (0.0.0.0/8, ::), link-local (169.254.0.0/16, fe80::/10), cloud metadata
  (169.254.169.254, fd00:ec2::254, 100.100.100.200, 168.63.129.16, 192.0.0.192, metadata.google.internal,
  metadata, ...), multicast/broadcast/reserved, and loopback (127.0.0.0/8, ::1, localhost, *.localhost) unless
  loopback clusters are allowed (``BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS``; the devcluster needs it). IPv4
  embedded in IPv6 (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, ``::a.b.c.d``) is judged by its IPv4
  address.
* Host spellings are normalised the way the HTTP client stack would before judging them: case, one trailing
  dot, IPv6 zone ids (``%25eth0``), IDNA (full-width characters), and the ``inet_aton`` numeric forms
  (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) which ``getaddrinfo`` resolves to addresses. A
  host whose last label is numeric but is no valid address is refused rather than guessed at.
* ``insecure-skip-tls-verify: true``: without verification anyone on the path can impersonate the API server
  and receive the credentials; refused unless the server is loopback and loopback is allowed.
* No resolvable context: no contexts; ``current-context`` missing while there are several contexts (unless the
  caller names one); a named or current context that does not exist; a context whose cluster or user is
  missing.

The result, :class:`ValidatedKubeconfig`, carries a ``normalized`` kubeconfig holding only the selected
context, cluster and user, with only known fields copied. Store and use that, never the upload: whatever the
parser of another client would make of odd input, it only ever sees what was checked here.

Connect-time checks (DNS rebinding)
-----------------------------------
The host rules live in :mod:`core.netguard` (the gateway and the endpoint probes use them too); this module
applies them to kubeconfigs and re-raises their refusals as :class:`KubeconfigError`.
A name that passed the static check may resolve to a forbidden address later. Before each connection the
gateway calls :func:`check_host_at_connect` (host, port), which resolves the name once, refuses if ANY
resolved address is forbidden, and returns one address to pin. The gateway then connects to that IP and keeps
the name for TLS: with the ``kubernetes`` client set ``configuration.host = "https://<ip>:<port>"`` (IPv6 in
brackets) and ``configuration.tls_server_name = <name>`` (SNI and certificate verification against the name);
with httpx use the IP in the URL, ``headers={"Host": name}`` and ``extensions={"sni_hostname": name}``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from core import netguard
from core.conf import setting

__all__ = [
    "KubeconfigError",
    "ValidatedKubeconfig",
    "check_host_at_connect",
    "max_bytes",
    "server_identity",
    "validate_kubeconfig",
]


class KubeconfigError(ValueError):
    """The kubeconfig (or a host) is refused; the message names the problem and carries no secret."""


def max_bytes() -> int:
    return int(setting("KUBECONFIG_MAX_BYTES", 1024 * 1024))


# --- YAML ---------------------------------------------------------------------------------------------------

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


MAX_DEPTH = 32  # real kubeconfigs nest about 6 levels deep


def _prescan(text: str) -> None:
    """Walk the YAML events (iterative, nothing constructed) before loading.

    Refuses any anchor or alias (billion laughs; see the module docstring) and nesting deeper than
    ``MAX_DEPTH``: composing a deeply nested document recurses, and a few kilobytes of brackets are enough to
    overflow the C stack of the YAML library and crash the process.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise KubeconfigError(
                f"kubeconfig uses YAML anchors/aliases (line {mark.line + 1}), which are refused: nested "
                "aliases can expand exponentially (a 'billion laughs' YAML bomb)"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise KubeconfigError(
                    f"kubeconfig nests deeper than {MAX_DEPTH} levels (line {event.start_mark.line + 1})"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


class _StrictLoader(_Loader):  # type: ignore[misc, valid-type]
    """Safe loader that refuses duplicate mapping keys (YAML parsers disagree on which one wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise KubeconfigError(
                    f"kubeconfig has a mapping key that is not a scalar (line {key_node.start_mark.line + 1})"
                ) from None
            if duplicate:
                raise KubeconfigError(
                    f"kubeconfig has a duplicate key {str(key)[:64]!r} (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    try:
        _prescan(text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # str(exc) quotes the offending line, which may hold a token: keep only the problem and the position.
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise KubeconfigError(f"kubeconfig is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError:
        raise KubeconfigError("kubeconfig is not valid YAML") from None
    except RecursionError:  # belt and braces: _prescan bounds the depth far below the recursion limit
        raise KubeconfigError("kubeconfig nests too deeply") from None


def _check_url(url: Any, what: str, schemes: tuple[str, ...], allow_loopback: bool) -> netguard.CheckedUrl:
    try:
        return netguard.check_url(url, what, schemes=schemes, allow_loopback=allow_loopback)
    except netguard.AddressRefused as exc:
        raise KubeconfigError(str(exc)) from None


# --- structure ----------------------------------------------------------------------------------------------

USER_FILE_KEYS = ("tokenFile", "client-certificate", "client-key")
USER_KEEP_KEYS = (
    "client-certificate-data",
    "client-key-data",
    "token",
    "username",
    "password",
    "as",
    "as-uid",
    "as-groups",
    "as-user-extra",
)
CLUSTER_KEEP_KEYS = (
    "server",
    "certificate-authority-data",
    "tls-server-name",
    "proxy-url",
    "disable-compression",
)


def _named_list(config: dict[str, Any], section: str, inner: str) -> dict[str, dict[str, Any]]:
    """``clusters``/``users``/``contexts`` as name -> body, refusing malformed and duplicate entries."""
    items = config.get(section)
    if items is None:
        return {}
    if not isinstance(items, list):
        raise KubeconfigError(f"{section} must be a list")
    out: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise KubeconfigError(f"{section}[{i}] must be a mapping")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise KubeconfigError(f"{section}[{i}] has no name (a non-empty string)")
        if name in out:
            raise KubeconfigError(f"{section} has two entries named {name!r}")
        body = item.get(inner)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise KubeconfigError(f"{section[:-1]} {name!r}: {inner} must be a mapping")
        out[name] = body
    return out


def _check_pem_data(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise KubeconfigError(f"{what} must be a non-empty base64 string")
    try:
        decoded = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{what} is not valid base64") from None
    if b"-----BEGIN " not in decoded:
        raise KubeconfigError(f"{what} does not hold a PEM block (base64 of '-----BEGIN ...')")


def _check_user(name: str, user: dict[str, Any]) -> None:
    what = f"user {name!r}"
    if "exec" in user:
        raise KubeconfigError(f"{what} uses exec (runs a command on this server), which is refused")
    if "auth-provider" in user:
        raise KubeconfigError(
            f"{what} uses auth-provider, which is refused; use a token or client certificate"
        )
    for key in USER_FILE_KEYS:
        if key in user:
            raise KubeconfigError(
                f"{what} references a file ({key}); only inline data is accepted (token, client-*-data)"
            )
    for key in ("client-certificate-data", "client-key-data"):
        if key in user:
            _check_pem_data(user[key], f"{what} {key}")
    if ("client-certificate-data" in user) != ("client-key-data" in user):
        raise KubeconfigError(f"{what} needs both client-certificate-data and client-key-data")
    for key in ("token", "username", "password"):
        if key in user and not isinstance(user[key], str):
            raise KubeconfigError(f"{what} {key} must be a string")


@dataclass(frozen=True)
class _ClusterCheck:
    server: str
    url: netguard.CheckedUrl
    insecure: bool


def _check_cluster(name: str, cluster: dict[str, Any], allow_loopback: bool) -> _ClusterCheck:
    what = f"cluster {name!r}"
    if "certificate-authority" in cluster:
        raise KubeconfigError(
            f"{what} references a file (certificate-authority); use certificate-authority-data instead"
        )
    url = _check_url(cluster.get("server"), f"{what} server", ("https",), allow_loopback)
    if "proxy-url" in cluster:
        # Judged first, so a proxy at a forbidden address is named as such; then refused in any case: the
        # gateway connects to the server's own (pinned) address, so a proxy would be silently ignored, and
        # honouring it would send the credentials to a host the address guard cannot pin.
        _check_url(cluster["proxy-url"], f"{what} proxy-url", ("http", "https", "socks5"), allow_loopback)
        raise KubeconfigError(
            f"{what} sets proxy-url, which is not supported: BudCluster connects to the API server directly "
            "(pinned to the address it checked). Remove proxy-url and make the server reachable from BudCluster"
        )
    if "certificate-authority-data" in cluster:
        _check_pem_data(cluster["certificate-authority-data"], f"{what} certificate-authority-data")
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeconfigError(f"{what} insecure-skip-tls-verify must be true or false")
    if insecure and not (allow_loopback and url.verdict.kind == "loopback"):
        raise KubeconfigError(
            f"{what} sets insecure-skip-tls-verify, which is refused: without certificate verification "
            "anyone on the network path can impersonate the API server; provide certificate-authority-data"
        )
    return _ClusterCheck(cluster["server"], url, insecure)


# --- entry points -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidatedKubeconfig:
    """A kubeconfig that passed every static check.

    ``config`` is the whole parsed upload (for reference only); ``normalized`` is the minimal kubeconfig with
    only the selected context, which is what should be stored and used.
    """

    config: dict[str, Any] = field(repr=False)
    context_name: str
    cluster_name: str
    user_name: str
    server: str
    host: str
    port: int
    namespace: str | None
    is_loopback: bool
    normalized: dict[str, Any] = field(repr=False)

    def normalized_yaml(self) -> str:
        return yaml.safe_dump(self.normalized, sort_keys=False, default_flow_style=False)


def validate_kubeconfig(
    raw: bytes | str, context: str | None = None, *, allow_loopback: bool | None = None
) -> ValidatedKubeconfig:
    """Check an uploaded kubeconfig; raise :class:`KubeconfigError` naming the first problem found.

    ``context`` selects a context (otherwise ``current-context``, or the only context). ``allow_loopback``
    defaults to ``settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS``.
    """
    loopback_ok = netguard.loopback_allowed(allow_loopback)
    limit = max_bytes()
    size = len(raw) if isinstance(raw, bytes | bytearray) else len(raw.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise KubeconfigError(f"kubeconfig is {size} bytes, more than the {limit} bytes allowed")
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise KubeconfigError("kubeconfig is not valid UTF-8 text") from None
    elif isinstance(raw, str):
        text = raw
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise KubeconfigError("kubeconfig is not valid UTF-8 text") from None
    else:
        raise KubeconfigError("kubeconfig must be text or bytes")
    if not text.strip():
        raise KubeconfigError("kubeconfig is empty")

    config = _parse_yaml(text)
    if not isinstance(config, dict):
        raise KubeconfigError(f"kubeconfig must be a YAML mapping, got {type(config).__name__}")
    kind = config.get("kind")
    if kind is not None and kind != "Config":
        raise KubeconfigError(f"kubeconfig kind must be Config, got {str(kind)[:64]!r}")

    clusters = _named_list(config, "clusters", "cluster")
    users = _named_list(config, "users", "user")
    contexts = _named_list(config, "contexts", "context")

    # Every user and cluster, selected or not: the whole file is hostile until checked.
    for name, user in users.items():
        _check_user(name, user)
    cluster_checks = {name: _check_cluster(name, body, loopback_ok) for name, body in clusters.items()}

    ctx_name = _select_context(config, contexts, context)
    ctx = contexts[ctx_name]
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise KubeconfigError(f"context {ctx_name!r} names no cluster")
    if cluster_name not in clusters:
        raise KubeconfigError(
            f"context {ctx_name!r} names cluster {cluster_name!r}, which is not in the kubeconfig"
        )
    if not isinstance(user_name, str) or not user_name:
        raise KubeconfigError(f"context {ctx_name!r} names no user (credentials are required)")
    if user_name not in users:
        raise KubeconfigError(
            f"context {ctx_name!r} names user {user_name!r}, which is not in the kubeconfig"
        )
    namespace = ctx.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise KubeconfigError(f"context {ctx_name!r} namespace must be a string")

    chosen = cluster_checks[cluster_name]
    cluster_body = {k: clusters[cluster_name][k] for k in CLUSTER_KEEP_KEYS if k in clusters[cluster_name]}
    if chosen.insecure:
        cluster_body["insecure-skip-tls-verify"] = True
    user_body = {k: users[user_name][k] for k in USER_KEEP_KEYS if k in users[user_name]}
    ctx_body: dict[str, Any] = {"cluster": cluster_name, "user": user_name}
    if namespace:
        ctx_body["namespace"] = namespace
    normalized = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": ctx_name,
        "clusters": [{"name": cluster_name, "cluster": cluster_body}],
        "users": [{"name": user_name, "user": user_body}],
        "contexts": [{"name": ctx_name, "context": ctx_body}],
        "preferences": {},
    }
    return ValidatedKubeconfig(
        config=config,
        context_name=ctx_name,
        cluster_name=cluster_name,
        user_name=user_name,
        server=chosen.server,
        host=chosen.url.host,
        port=chosen.url.port,
        namespace=namespace or None,
        is_loopback=chosen.url.verdict.kind == "loopback",
        normalized=normalized,
    )


def _select_context(
    config: dict[str, Any], contexts: dict[str, dict[str, Any]], requested: str | None
) -> str:
    if not contexts:
        raise KubeconfigError("kubeconfig has no contexts")
    available = ", ".join(sorted(contexts)[:20])
    if requested:
        if requested not in contexts:
            raise KubeconfigError(f"context {requested!r} not found in kubeconfig (available: {available})")
        return requested
    current = config.get("current-context")
    if current not in (None, ""):
        if not isinstance(current, str) or current not in contexts:
            raise KubeconfigError(
                f"current-context {str(current)[:64]!r} does not exist in kubeconfig (available: {available})"
            )
        return current
    if len(contexts) == 1:
        return next(iter(contexts))
    raise KubeconfigError(
        f"kubeconfig has {len(contexts)} contexts and no current-context: name the context to use "
        f"(available: {available})"
    )


def check_host_at_connect(
    host: str, port: int, *, allow_loopback: bool | None = None, timeout: float = 10.0
) -> str:
    """:func:`core.netguard.check_host_at_connect`, raising :class:`KubeconfigError`."""
    try:
        return netguard.check_host_at_connect(host, port, allow_loopback=allow_loopback, timeout=timeout)
    except netguard.AddressRefused as exc:
        raise KubeconfigError(str(exc)) from None


# --- the same server, spelled differently -------------------------------------------------------------------

# Loopback names and the two loopback addresses a name resolves to: one host on the machine's loopback
# interface. Other 127.0.0.0/8 addresses stay themselves (a server may bind 127.0.0.2 alone).
_LOOPBACK_IDENTITY = "localhost"
_LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})


def server_identity(server: str) -> str:
    """The API server a kubeconfig ``server`` URL points at, as one comparable string (duplicate detection).

    Two URLs are the same server when they agree after normalising what the client stack normalises anyway:
    scheme and host case, a trailing dot, IDNA, IPv4 spellings (``2130706433``, ``0x7f.1``) and IPv4-mapped IPv6,
    IPv6 compression, the default port (443 for https) and trailing slashes of the path. The path itself stays
    (case-sensitive): one proxy may front several clusters under different paths (Rancher's
    ``/k8s/clusters/<id>``). Host names are not resolved: DNS answers change, and one address may serve several
    API servers by name (SNI), so ``api.example.com`` and its IP address are different servers. Loopback is the
    exception: ``localhost`` (and the other loopback names) is the same host as ``127.0.0.1`` and ``::1``, since
    a loopback name only ever means this machine; other 127.0.0.0/8 addresses stay distinct.
    A URL that cannot be parsed is compared as written (lower-cased).
    """
    try:
        parts = urlsplit(server.strip())
        port = parts.port
        hostport = parts.netloc.rpartition("@")[2]
        if hostport.startswith("["):
            host = hostport[1 : hostport.find("]")]
        else:
            host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
        verdict = netguard.classify_host(host)
    except (ValueError, netguard.AddressRefused):
        return server.strip().lower()
    scheme = parts.scheme.lower()
    address = verdict.address
    if address is not None and address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is None:
        name = verdict.host
        host_key = _LOOPBACK_IDENTITY if verdict.kind == "loopback" else name
    elif str(address) in _LOOPBACK_ADDRESSES:
        host_key = _LOOPBACK_IDENTITY
    else:
        host_key = f"[{address.compressed}]" if address.version == 6 else str(address)
    port = port or netguard.DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{host_key}:{port}{parts.path.rstrip('/')}"
