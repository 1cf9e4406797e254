"""The one reader of HCL in the service: Terraform sources parsed with python-hcl2.

Everything that looks inside a ``.tf`` file goes through here: the runner refusing a module that declares its
own backend (:func:`declared_backends`), provisioning choosing which variables a module takes and which are
sensitive (:func:`load_module`), and the static checks of the modules where ``terraform validate`` cannot run
(no provider downloads): required variables, sensitive outputs, pinned providers, no backend in source.

A real parser rather than regular expressions: comments, heredocs and nested blocks cannot fool it, and a
``backend`` block counts only inside a ``terraform`` block, where Terraform reads it.

python-hcl2 keeps HCL's quoting in its output (``'"name"'`` keys, ``'"text"'`` strings, ``'${expr}'``
expressions); this module strips string quotes so callers compare plain values. It is imported on first use
(its grammar takes a tenth of a second to load), so processes that never read HCL do not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class HclError(ValueError):
    """A Terraform source python-hcl2 cannot parse; the message names the source and the position."""


def parse(text: str, *, name: str = "<source>") -> dict[str, Any]:
    """One HCL document as python-hcl2's dict (blocks are lists of dicts; markers start with ``__``)."""
    import hcl2
    from lark.exceptions import LarkError

    try:
        return hcl2.loads(text)
    except LarkError as exc:
        raise HclError(f"{name}: {exc}") from None


def unquote(value: Any) -> Any:
    """``'"text"'`` -> ``'text'``; anything else unchanged."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _blocks(items: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Labelled blocks (``variable "x" {}``) as {label: body} with the hcl2 markers removed."""
    result: dict[str, dict[str, Any]] = {}
    for item in items or []:
        for label, body in item.items():
            result[unquote(label)] = {k: v for k, v in body.items() if not k.startswith("__")}
    return result


def declared_backends(doc: dict[str, Any]) -> list[str]:
    """Backend types a parsed document declares (``terraform { backend "s3" { ... } }`` gives ``["s3"]``)."""
    found: list[str] = []
    for block in doc.get("terraform") or []:
        for backend in block.get("backend") or []:
            found.extend(unquote(k) for k in backend if not k.startswith("__"))
    return found


@dataclass
class ModuleSpec:
    path: Path
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    required_providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    required_version: str | None = None
    backends: list[str] = field(default_factory=list)
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type -> name -> body
    providers: list[str] = field(default_factory=list)
    locals: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # file name -> raw text

    @property
    def required_variables(self) -> set[str]:
        return {name for name, body in self.variables.items() if "default" not in body}

    @property
    def sensitive_outputs(self) -> set[str]:
        return {name for name, body in self.outputs.items() if body.get("sensitive") is True}


def load_module(path: str | Path) -> ModuleSpec:
    """Parse every ``*.tf`` file of one module directory (not recursive). Raises :class:`HclError`."""
    spec = ModuleSpec(path=Path(path))
    for tf_file in sorted(spec.path.glob("*.tf")):
        text = tf_file.read_text()
        spec.sources[tf_file.name] = text
        doc = parse(text, name=tf_file.name)
        spec.variables.update(_blocks(doc.get("variable")))
        spec.outputs.update(_blocks(doc.get("output")))
        for block in doc.get("terraform") or []:
            if "required_version" in block:
                spec.required_version = unquote(block["required_version"])
            for providers in block.get("required_providers") or []:
                for name, req in providers.items():
                    if not name.startswith("__"):
                        spec.required_providers[name] = {k: unquote(v) for k, v in req.items()}
        spec.backends.extend(declared_backends(doc))
        for block in doc.get("resource") or []:
            for rtype, named in block.items():
                for name, body in named.items():
                    if not name.startswith("__"):
                        spec.resources.setdefault(unquote(rtype), {})[unquote(name)] = body
        for block in doc.get("locals") or []:
            spec.locals.update({k: v for k, v in block.items() if not k.startswith("__")})
        for block in doc.get("provider") or []:
            spec.providers.extend(unquote(k) for k in block if not k.startswith("__"))
    return spec
