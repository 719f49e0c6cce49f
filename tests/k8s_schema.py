"""Offline validation of KubeRay manifests against the CRD's OpenAPI v3 schema, strict on unknown fields.

A CustomResourceDefinition's ``openAPIV3Schema`` lists ``properties`` but, unlike the API server (which
prunes or rejects unknown fields), JSON Schema accepts any extra key unless ``additionalProperties: false``
is said. :func:`strict` adds it wherever an object lists ``properties`` and neither
``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` is given, so a typo such as
``rayVersoin`` or ``resoures`` deep inside a pod template is an error, as ``kubectl apply
--validate=strict`` would make it.
"""

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

# Keywords whose value is one sub-schema / a list of sub-schemas / a map of name → sub-schema.
_ONE = ("items", "additionalProperties", "not")
_MANY = ("anyOf", "allOf", "oneOf")
_MAP = ("properties", "patternProperties")


def strict(schema: Any) -> Any:
    """A deep copy of ``schema`` with ``additionalProperties: false`` on every object that lists
    ``properties`` without ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``.

    Recurses into ``properties``, ``patternProperties``, ``items``, ``additionalProperties`` (when it is a
    schema), ``not``, ``anyOf``, ``allOf`` and ``oneOf``. Objects with no ``properties`` (free-form maps
    such as ``metadata`` or ``nodeSelector``) are left open.
    """
    out = copy.deepcopy(schema)
    _tighten(out)
    return out


def _tighten(node: Any) -> None:
    if not isinstance(node, dict):
        return
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    for key in _MAP:
        for sub in (node.get(key) or {}).values():
            _tighten(sub)
    for key in _ONE:
        if isinstance(node.get(key), dict):
            _tighten(node[key])
    for key in _MANY:
        for sub in node.get(key) or []:
            _tighten(sub)


@functools.lru_cache(maxsize=4)
def _load_crd(crd_path: Path) -> dict:
    # The CRDs are 1-1.4 MB of YAML: libyaml's loader reads them ~10x faster than the pure-Python one.
    return yaml.load(Path(crd_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_schema(crd_path: Path, version: str = "v1") -> dict:
    """``spec.versions[name=version].schema.openAPIV3Schema`` of a CRD YAML file (a fresh copy each call).

    Raises:
        KeyError: the CRD has no such version.
    """
    crd = _load_crd(Path(crd_path))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return copy.deepcopy(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"{crd_path} has no version {version!r}; it has {[v['name'] for v in crd['spec']['versions']]}")


def validation_errors(manifest: dict, schema: dict) -> list[str]:
    """Every violation of ``schema`` (already :func:`strict` where wanted) as ``"path: message"`` lines,
    sorted by path; empty when the manifest is valid."""
    from jsonschema import Draft7Validator

    validator = Draft7Validator(schema)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(manifest))
