"""Redaction of secrets from lines that are shown, stored or logged.

Terraform, its providers and provisioner scripts print whatever they like: a provider debug line may
echo an access key, a `local-exec` may print an environment variable, a connection string may carry a
password. Every line the provisioning runners hand to a callback, store in an event row or log passes
through a :class:`Redactor` first.

Two layers, because neither alone is enough:

* the exact secret values the caller knows about (credential environment variables, sensitive
  variables, sensitive outputs once Terraform reports them). Each value is also matched in the forms it
  takes inside other text: JSON-escaped, URL-encoded (``%2F`` and ``+`` for spaces), hex (both cases), and
  base64 (standard and URL-safe alphabets) — not only of the value alone but of any larger document
  carrying it (a kubeconfig base64-encoded into a Secret). The base64 of a document spells the secret
  differently depending on where the secret starts modulo 3 bytes, so each of the three alignments is
  matched, on the characters that depend on the secret's bytes only.
* patterns for secrets nobody told us about: AWS access key ids, JWTs and bearer tokens, PEM private
  keys, passwords in URLs, and ``key=value`` / ``key: value`` pairs whose key names a secret.

Everything matched becomes ``***``. Over-redaction is accepted; a leak is not.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# Values shorter than this are not replaced literally: masking "1" or "true" everywhere would make
# logs unreadable and protects nothing (such values are not secrets anyone can be hurt by).
DEFAULT_MIN_LENGTH = 4

# A pattern of key names, not a password.
_SECRET_KEY_NAMES = "".join(
    (
        r"[\w.-]*(?:secret|password|passwd|pwd|token|api[_-]?key|access[_-]?key|private[_-]?key|",
        r"key[_-]data|client[_-]?key|credential|authorization)[\w.-]*",
    )
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys first: they span many characters and would otherwise be cut in pieces.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
            re.DOTALL,
        ),
        MASK,
    ),
    # user:password@ in any URL (postgres://, https://).
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/\s@]*:)[^@\s/]+(?=@)"), r"\g<keep>" + MASK),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    # JSON Web Tokens (Kubernetes service-account tokens are JWTs).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # Authorization headers.
    (re.compile(r"(?P<keep>(?i:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\g<keep>" + MASK),
    # key=value, key: value, "key": "value" where the key names a secret.
    (
        re.compile(
            r"(?P<keep>(?i:" + _SECRET_KEY_NAMES + r")[\"']?\s*[:=]\s*[\"']?)"
            r"(?P<value>(?!\*\*\*)[^\s\"',;}\]]{3,})"
        ),
        r"\g<keep>" + MASK,
    ),
)


# An embedded base64 fragment shorter than this is not matched: 8 characters are 6 bytes of the secret,
# long enough not to turn up by chance in unrelated base64.
_MIN_FRAGMENT = 8


def _base64_fragments(raw: bytes) -> set[str]:
    """The base64 characters that spell ``raw`` wherever it sits inside a larger encoded document.

    With ``k`` bytes of the document before the secret (``k`` = 0, 1, 2 modulo 3), the first group of four
    characters mixes the document's bytes with the secret's and the last group the secret's with what
    follows: both are dropped, the whole groups in between depend on the secret alone.
    """
    fragments: set[str] = set()
    for k in range(3):
        total = k + len(raw)
        whole = total - total % 3
        encoded = base64.b64encode(bytes(k) + raw)[: whole // 3 * 4].decode()
        fragment = encoded[4:] if k else encoded
        if len(fragment) >= _MIN_FRAGMENT:
            fragments.add(fragment)
            fragments.add(fragment.replace("+", "-").replace("/", "_"))
    return fragments


def _variants(value: str) -> set[str]:
    """The forms a secret takes inside other text: as is, JSON-escaped, URL-encoded, hex, base64."""
    raw = value.encode()
    forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote(value), quote_plus(value)}
    forms |= {raw.hex(), raw.hex().upper()}
    if len(value) >= 8:
        whole = base64.b64encode(raw).decode()
        forms |= {whole, whole.replace("+", "-").replace("/", "_")}
        forms |= _base64_fragments(raw)
    return forms


class Redactor:
    """Replaces known secret values and secret-looking patterns with ``***``.

    Thread-safe: the runner's reader thread redacts while the caller may :meth:`add` values that
    Terraform has just revealed (sensitive outputs).
    """

    def __init__(self, secrets: Iterable[str | None] = (), *, min_length: int = DEFAULT_MIN_LENGTH) -> None:
        self._min_length = min_length
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._regex: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Learn more secret values (None, empty and too-short values are ignored)."""
        new: set[str] = set()
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < self._min_length:
                continue
            new |= {form for form in _variants(secret) if len(form) >= self._min_length}
            # Multi-line secrets (PEM, kubeconfigs) also leak line by line.
            new |= {line.strip() for line in secret.splitlines() if len(line.strip()) >= 8}
        if not new - self._values:
            return
        with self._lock:
            self._values |= new
            # Longest first so that a secret containing another one is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._regex = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        if not text:
            return text
        regex = self._regex
        if regex is not None:
            text = regex.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    __call__ = redact


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """One-off redaction; build a :class:`Redactor` when redacting many lines."""
    return Redactor(secrets).redact(text)
