"""A secret the redactor knows is masked in the encodings it travels in: URL-encoded, hex, and base64 of a
larger document at any byte offset (a kubeconfig base64-encoded into a Secret, a provider payload)."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, quote_plus

import pytest

from provisioning.redact import MASK, Redactor

SECRET = "s3cr3t/tok+en=&value?42"


def _recoverable(text: str, secret: str) -> bool:
    """Whether 6 consecutive bytes of the secret can be read back from any base64 run in ``text``, whatever
    the run's alignment: what someone decoding the line would get."""
    needles = {secret.encode()[i : i + 6] for i in range(len(secret) - 5)}
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        for shift in range(4):
            chunk = run[shift:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for alphabet in (None, b"-_"):
                try:
                    raw = base64.b64decode(chunk, altchars=alphabet, validate=False)
                except ValueError:
                    continue
                if any(needle in raw for needle in needles):
                    return True
    return False


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(quote(SECRET, safe=""), id="url-encoded"),
        pytest.param(quote_plus(SECRET), id="form-encoded"),
        pytest.param(SECRET.encode().hex(), id="hex"),
        pytest.param(SECRET.encode().hex().upper(), id="HEX"),
        pytest.param(base64.urlsafe_b64encode(SECRET.encode()).decode(), id="urlsafe-base64"),
    ],
)
def test_encoded_forms_are_masked(form):
    assert form != SECRET
    line = f"GET /callback?token={form}&next=1 payload {form}"
    redacted = Redactor([SECRET])(line)
    assert form not in redacted
    assert redacted.count(MASK) == 2


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 5])
def test_base64_of_a_document_embedding_the_secret_is_masked_at_every_offset(offset):
    document = ("x" * offset + f"apiVersion: v1\nusers:\n- user:\n    token: {SECRET}\n# end").encode()
    encoded = base64.b64encode(document).decode()
    assert _recoverable(encoded, SECRET)  # the check can see a leak
    redacted = Redactor([SECRET])(f"data: {encoded}")
    assert MASK in redacted
    assert not _recoverable(redacted, SECRET)
    # Only the part carrying the secret is masked: the start of the document still decodes.
    assert redacted.startswith("data: " + encoded[:8])


def test_embedded_base64_matching_does_not_mask_unrelated_text():
    r = Redactor([SECRET])
    line = (
        'aws_eks_node_group.gpu["a10g"]: Still creating... [10s elapsed] '
        + base64.b64encode(b"nothing secret in here at all").decode()
    )
    assert r(line) == line
