"""The resources the server serves right now: the builtins, plus the versions of registered CRDs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .catalog import ResourceType, types_from_crd
from .errors import ApiError

JsonDict = dict[str, Any]


def crd_resource(crd: JsonDict) -> tuple[str, str]:
    """The (group, plural) a CustomResourceDefinition defines."""
    spec = crd.get("spec") or {}
    return spec.get("group", ""), (spec.get("names") or {}).get("plural", "")


class TypeRegistry:
    """Served resource types by (group, version, plural), in the order discovery lists them."""

    def __init__(self, types: Iterable[ResourceType]) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rtype in types:
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type a URL names exactly, or None."""
        return self._types.get((group, version, plural))

    def find(self, group: str, version: str | None, plural_or_kind: str) -> ResourceType:
        """The type with this plural, kind or singular (at any version if None); 404 otherwise."""
        for rtype in self._types.values():
            same_version = version is None or rtype.version == version
            if (
                rtype.group == group
                and same_version
                and plural_or_kind in (rtype.plural, rtype.kind, rtype.singular)
            ):
                return rtype
        raise ApiError(
            404, "NotFound", f"the server could not find the requested resource ({group}/{plural_or_kind})"
        )

    def of_body(self, body: JsonDict) -> ResourceType:
        """The type an object's ``apiVersion`` and ``kind`` name."""
        group, _, version = str(body.get("apiVersion", "")).rpartition("/")
        return self.find(group, version, str(body.get("kind", "")))

    def storage_type(self, store_key: tuple[str, str]) -> ResourceType | None:
        """The type at the storage version of a (group, plural), or None if it is not served."""
        for rtype in self._types.values():
            if rtype.store_key == store_key and rtype.version == rtype.storage_version:
                return rtype
        return None

    def serve_crd(self, crd: JsonDict) -> None:
        """Serve a CRD's versions: discovery, OpenAPI, validation and storage follow from here."""
        self.withdraw_crd(crd)
        for rtype in types_from_crd(crd):
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def withdraw_crd(self, crd: JsonDict) -> None:
        """Stop serving a CRD's versions."""
        resource = crd_resource(crd)
        for key in [k for k, t in self._types.items() if t.custom and (t.group, t.plural) == resource]:
            del self._types[key]
