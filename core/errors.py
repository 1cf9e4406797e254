"""Refusals: requests a service will not carry out, each with a stable machine-readable code.

Every service refuses by raising a subclass of :class:`Refused`, one per app, each with its own ``Code`` enum
(Saleor's per-domain error codes). A refusal carries

* ``code``: a stable identifier from the subclass's ``Code`` enum; clients and tests match it, never the words;
* the message: what is wrong and what to do, in words, for people;
* ``status``: the HTTP status the API answers with (400 bad input, 404 missing, 409 conflicting state, 422 valid
  but impossible);
* ``data``: extra fields of the answer (e.g. the placement report of a deployment that fits nowhere).

The API's exception handler (``core.api.errors``) answers ``{"detail": message, "code": code, **data}``, so views
never catch refusals; the admin and management commands print the message. ``core.api.responses.refusal`` documents
a subclass's codes in the OpenAPI schema. A code that is not in the enum is a programming error, caught when the
refusal is built.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db.models import TextChoices


class Refused(Exception):
    """Base of every app's refusal; subclasses set ``Code`` (a ``TextChoices``) and may set ``default_status``."""

    Code: ClassVar[type[TextChoices]]
    default_status: ClassVar[int] = 400

    def __init__(
        self, message: str, *, code: str, status: int | None = None, data: dict | None = None
    ) -> None:
        valid = {choice.value for choice in self.Code}
        if code not in valid:
            raise ValueError(f"{type(self).__name__} has no code {code!r} (one of {sorted(valid)})")
        super().__init__(message)
        self.code = str(code)
        self.status = status if status is not None else self.default_status
        self.data = data or {}

    def as_dict(self) -> dict[str, Any]:
        """The API's answer body."""
        return {"detail": str(self), "code": self.code, **self.data}
