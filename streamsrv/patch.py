"""PATCH of a pod, as the apiserver takes it: the patch logic alone (no I/O, no aiohttp).

Three patch types, by content type (kubectl sends each):

- ``application/merge-patch+json``: RFC 7386 (``kubectl label``, ``kubectl annotate``,
  ``kubectl patch --type merge``).
- ``application/json-patch+json``: RFC 6902, JSON pointers of RFC 6901
  (``kubectl patch --type json``).
- ``application/strategic-merge-patch+json``: Kubernetes' strategic merge patch for the v1
  ``Pod`` (``kubectl edit``, client-side ``kubectl apply``, ``kubectl patch``). Lists tagged
  with a patch merge key in k8s.io/api core/v1 (``containers`` by ``name``, ``ports`` by
  ``containerPort``, ``volumeMounts`` by ``mountPath``, ...) are merged item by item; other
  lists (``tolerations``, ``args``, ...) are replaced. The directives ``$patch``
  (``replace``, ``delete``, ``merge``), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>``
  and ``$setElementOrder/<field>`` are applied, and ``null`` deletes a field.

Server-side apply (``application/apply-patch+yaml``) is not served: :class:`UnsupportedPatch`.

:func:`apply_patch` is the entry point; :func:`pod_update_causes` then says what the apiserver
would refuse in the patched pod for a gateway that can change only the labels and annotations
of a pod, and :func:`patched_metadata` gives the labels and annotations to store.

Bounds: the caller reads at most 3 MiB of body; a document nested deeper than
:data:`MAX_DEPTH`, a JSON patch of more than :data:`MAX_OPERATIONS` operations and copies of
more than :data:`MAX_COPY_BYTES` in all are refused. Messages are the apiserver's where it has
one (its strategic merge patch, evanphx/json-patch, ValidatePodUpdate, ValidateObjectMetaUpdate,
the label and annotation checks); the field of a strategic merge patch error is put in front.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from streamsrv.errors import RequestError

JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
#: The patch types served, in the order the apiserver lists them.
PATCH_TYPES: Final = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

#: The apiserver's bound on the operations of one JSON patch (maxJSONPatchOperations).
MAX_OPERATIONS: Final = 10_000
#: Objects and arrays nested deeper than this, in a patch or in what it makes, are refused.
MAX_DEPTH: Final = 100
#: What the ``copy`` operations of one JSON patch may add in all, in bytes of JSON: the
#: apiserver's default JSONPatchMaxCopyBytes.
MAX_COPY_BYTES: Final = 3 * 1024 * 1024

#: Labels of a pod at most: the bound streamsrv.pods puts on a created pod (kept equal there).
MAX_LABELS: Final = 64
#: All annotations of an object together, keys and values, in bytes (TotalAnnotationSizeLimitB).
MAX_ANNOTATIONS_SIZE: Final = 256 * 1024
SHOWN: Final = 80  # characters of a refused value a message repeats

UNSUPPORTED_MESSAGE: Final = (
    "the body of the request was in an unknown format - accepted media types include: "
    + ", ".join(PATCH_TYPES)
)
#: The apiserver's 400 for a body that is not JSON at all, whatever the patch type.
NOT_JSON: Final = "invalid JSON patch"
TOO_DEEP: Final = f"the patch is nested more than {MAX_DEPTH} levels deep"


class UnsupportedPatch(RequestError):
    """A content type that is not one of :data:`PATCH_TYPES`: the apiserver answers 415 with
    ``str(error)``, which lists the accepted types."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        super().__init__(UNSUPPORTED_MESSAGE)


class InvalidPatch(RequestError, ValueError):
    """A patch that cannot be applied; ``str(error)`` is the message for the client.

    ``status`` is the apiserver's code for it: 400 for a body it cannot decode or a malformed
    directive, 413 for too many operations, 422 for a patch that does not apply (a failed
    ``test``, a path that is not there, an item without its merge key).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Entry point


def apply_patch(obj: dict[str, Any], patch_bytes: bytes, content_type: str) -> dict[str, Any]:
    """``obj`` (a v1 Pod as JSON) with the patch applied; ``obj`` itself is not changed.

    Args:
        obj: the current object, as the gateway renders it.
        patch_bytes: the request's body (at most 3 MiB, the caller's bound).
        content_type: the request's content type; parameters (``; charset=utf-8``) are ignored.

    Raises:
        UnsupportedPatch: for any other content type (answer 415).
        InvalidPatch: for a patch that cannot be decoded or applied (``status`` says which).
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in PATCH_TYPES:
        raise UnsupportedPatch(content_type)
    if kind == JSON_PATCH:
        result = json_patch(obj, _decode(patch_bytes, duplicates=False))
        if not isinstance(result, dict):
            raise InvalidPatch(
                f"the patched object is a JSON {_go_kind(result)}, not a JSON object", 422
            )
        return result
    patch = _decode(patch_bytes)
    if kind == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise InvalidPatch("Invalid JSON Patch")
        result = _merge(_copy(obj), patch)  # the patch was checked and is ours to use up
        assert isinstance(result, dict)  # an object patch always makes an object
        return result
    if not isinstance(patch, dict):
        raise InvalidPatch(
            f"json: cannot unmarshal {_go_kind(patch)} into Go value of type "
            "map[string]interface {}"
        )
    return _strategic(obj, patch)


# --------------------------------------------------------------------------------------------
# Decoding and the helpers every patch type shares


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: Go's decoder refuses what float64 cannot hold
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's extension, not JSON


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abAB]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode(raw: bytes, *, duplicates: bool = True) -> Any:
    """The JSON in ``raw``; InvalidPatch if it is not JSON or is nested too deeply.

    As Go's decoder: bytes that are not UTF-8 and escaped lone surrogates become U+FFFD. A
    JSON patch (``duplicates=False``) may not repeat a member name (RFC 6902 A.13).
    """
    text = raw.decode("utf-8", errors="replace")
    try:
        value = json.loads(
            text,
            parse_float=_finite,
            parse_constant=_no_constant,
            object_pairs_hook=None if duplicates else _no_duplicates,
        )
    except RecursionError:
        raise InvalidPatch(TOO_DEEP) from None
    except _Duplicate as exc:
        raise InvalidPatch(f"json patch duplicate field {_quoted(exc.key)}") from None
    except ValueError:
        raise InvalidPatch(NOT_JSON) from None
    if _depth(value) > MAX_DEPTH:
        raise InvalidPatch(TOO_DEEP)
    if _ESCAPED_SURROGATE.search(text):
        value = _without_surrogates(value)
    return value


def _fix(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


def _without_surrogates(value: Any) -> Any:
    """``value`` with lone surrogates (``"\\ud800"``) replaced by U+FFFD, as Go decodes them:
    a string that cannot be encoded as UTF-8 must not reach the engine's labels."""
    if isinstance(value, str):
        return _fix(value)
    if isinstance(value, dict):
        return {_fix(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar is 0, ``{}`` is 1); stops
    counting past :data:`MAX_DEPTH`. Iterative: safe on any depth."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                return deepest
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value (iterative; faster than copy.deepcopy)."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        src, dst = stack.pop()
        pairs = src.items() if isinstance(src, dict) else enumerate(src)
        for key, item in pairs:
            if isinstance(item, dict | list):
                new: Any = {} if isinstance(item, dict) else []
                stack.append((item, new))
                item = new
            if isinstance(dst, dict):
                dst[key] = item
            else:
                dst.append(item)
    return root


def _same(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 4.6): numbers by value, ``true`` is not ``1``, members in any
    order, items in order. Iterative."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, dict):
            if not isinstance(y, dict) or len(x) != len(y):
                return False
            for key, value in x.items():
                if key not in y:
                    return False
                stack.append((value, y[key]))
        elif isinstance(x, list):
            if not isinstance(y, list) or len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, bool) or isinstance(y, bool):
            if not (isinstance(x, bool) and isinstance(y, bool) and x == y):
                return False
        elif isinstance(x, int | float):
            if not isinstance(y, int | float) or x != y:
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _hkey(value: Any) -> Hashable:
    """A hashable stand-in for a JSON value, equal exactly when :func:`_same` is (a string
    stands for itself: no other kind's stand-in is a string)."""
    if type(value) is str:
        return value
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return str(value)
    return ("json", json.dumps(value, sort_keys=True))


def _json_size(value: Any, budget: int) -> int:
    """The size of ``value`` as compact JSON in bytes (Python's encoding of it; Go's also
    escapes ``<>&``), or ``budget + 1`` once past it."""
    size = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            size += 2 * len(node) + 1 if node else 2  # braces, colons, commas
            for key, item in node.items():
                size += len(json.dumps(key, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                stack.append(item)
        elif isinstance(node, list):
            size += len(node) + 1 if node else 2  # brackets, commas
            stack.extend(node)
        elif isinstance(node, str):
            size += len(json.dumps(node, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        elif node is None or node is True:
            size += 4
        elif node is False:
            size += 5
        elif isinstance(node, int):
            size += len(str(node))
        else:
            size += len(repr(node))  # a float: Python's shortest repr, as Go's
        if size > budget:
            return budget + 1
    return size


def _go_kind(value: Any) -> str:
    """The name Go's decoder gives a JSON value's kind ("cannot unmarshal array into ...")."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return "number"


def _go(value: Any, limit: int = 200) -> str:
    """``value`` as Go's ``%v`` prints it (``map[name:a ports:[map[containerPort:80]]]``), cut
    to ``limit`` characters: an error never repeats a huge patch."""
    out: list[str] = []
    length = 0

    def put(text: str) -> bool:
        nonlocal length
        out.append(text)
        length += len(text)
        return length <= limit

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            if not put("map["):
                return False
            for i, key in enumerate(sorted(node)):
                if not put((" " if i else "") + f"{key}:") or not walk(node[key]):
                    return False
            return put("]")
        if isinstance(node, list):
            if not put("["):
                return False
            for i, item in enumerate(node):
                if (i and not put(" ")) or not walk(item):
                    return False
            return put("]")
        if node is None:
            return put("<nil>")
        if isinstance(node, bool):
            return put("true" if node else "false")
        if isinstance(node, float):
            return put(_go_float(node))
        return put(str(node))

    walk(value)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _go_float(value: float) -> str:
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def _cut(text: str, limit: int = SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quoted(value: Any) -> str:
    """A value as the apiserver shows a bad one: a string double-quoted, else as JSON; cut."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _cut(text)


# --------------------------------------------------------------------------------------------
# RFC 7386: JSON merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``target`` with ``patch`` merged in (neither argument is changed).

    A member set to ``null`` is removed; an object merges into an object (a non-object target
    becomes ``{}`` first); anything else replaces the target.
    """
    if _depth(patch) > MAX_DEPTH:
        raise InvalidPatch(TOO_DEEP)
    return _merge(_copy(target), _copy(patch))


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


# --------------------------------------------------------------------------------------------
# RFC 6902: JSON patch


_OPS: Final = ("add", "remove", "replace", "move", "copy", "test")
_MISSING: Any = object()


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902: ``doc`` with the ``operations`` applied in order (``doc`` is not changed).

    Pointers are RFC 6901 (``~1`` is ``/``, ``~0`` is ``~``, ``-`` is past an array's end for
    ``add``); array indexes are decimal without leading zeros (no negative indexes, which
    evanphx/json-patch takes). Members an operation does not use are ignored (A.11).

    Raises:
        InvalidPatch: 400 if ``operations`` is not an array of objects, 413 past
            :data:`MAX_OPERATIONS`, 422 for an operation that does not apply.
    """
    if not isinstance(operations, list):
        raise InvalidPatch(
            f"json: cannot unmarshal {_go_kind(operations)} into Go value of type jsonpatch.Patch"
        )
    for op in operations:
        if not isinstance(op, dict):
            raise InvalidPatch(
                f"json: cannot unmarshal {_go_kind(op)} into Go value of type jsonpatch.Operation"
            )
    if len(operations) > MAX_OPERATIONS:
        raise InvalidPatch(
            f"The allowed maximum operations in a JSON patch is {MAX_OPERATIONS}, "
            f"got {len(operations)}",
            413,
        )
    patcher = _JSONPatcher(_copy(doc))
    for op in operations:
        patcher.apply(op)
    if _depth(patcher.root) > MAX_DEPTH:
        raise InvalidPatch(f"the patched object is nested more than {MAX_DEPTH} levels deep", 422)
    return patcher.root


def _unapplied(message: str) -> InvalidPatch:
    return InvalidPatch(message, 422)


_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")


def _index(token: str, size: int) -> int | None:
    """The array index ``token`` names if it is one below ``size``, else None."""
    if not _INDEX.fullmatch(token):
        return None
    index = int(token)
    return index if index < size else None


def _bad_index(op: str, path: str, token: str) -> InvalidPatch:
    if _INDEX.fullmatch(token) or token == "-":
        reason = f"Unable to access invalid index: {_cut(token)}: invalid index referenced"
    else:
        reason = f"value was not a proper array index: '{_cut(token)}'"
    return _unapplied(f"error in {op} for path: '{_cut(path)}': {reason}")


class _JSONPatcher:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.copied = 0

    def apply(self, op: dict[str, Any]) -> None:
        kind = op.get("op")
        if not isinstance(kind, str) or kind not in _OPS:
            shown = kind if isinstance(kind, str) else "unknown"
            raise _unapplied(f"Unexpected kind: {_cut(shown)}")
        path = self._member(op, kind, "path")
        tokens = self._pointer(kind, path)
        if kind in ("move", "copy"):
            source = self._member(op, kind, "from")
            self._move_or_copy(kind, source, self._pointer(kind, source), path, tokens)
            return
        if kind == "remove":
            self._remove(path, tokens)
            return
        if "value" not in op:
            raise _unapplied(f"{kind} operation, missing value field: missing value")
        value = op["value"]
        if kind == "add":
            self._add(kind, path, tokens, value)
        elif kind == "replace":
            self._replace(path, tokens, value)
        else:
            self._test(path, tokens, value)

    @staticmethod
    def _member(op: dict[str, Any], kind: str, name: str) -> str:
        value = op.get(name)
        if isinstance(value, str):
            return value
        if value is None:
            if name == "from":
                reason = "operation, missing from field: missing value"
            else:
                reason = "operation missing path field: missing value"
        else:
            reason = f"json: cannot unmarshal {_go_kind(value)} into Go value of type string"
        raise _unapplied(f"{kind} operation failed to decode {name}: {reason}")

    @staticmethod
    def _pointer(kind: str, path: str) -> list[str]:
        if path == "":
            return []
        if not path.startswith("/"):
            raise _unapplied(
                f"{kind} operation: invalid JSON pointer {_quoted(path)}: "
                'it must be empty or start with "/"'
            )
        tokens = path[1:].split("/")
        if "~" in path:
            for i, token in enumerate(tokens):
                if "~" in token:
                    if re.search("~(?![01])", token):
                        raise _unapplied(
                            f"{kind} operation: invalid JSON pointer {_quoted(path)}: "
                            '"~" must be followed by "0" or "1"'
                        )
                    tokens[i] = token.replace("~1", "/").replace("~0", "~")
        return tokens

    def _container(self, tokens: list[str]) -> Any:
        """The object or array the last token is in, or _MISSING."""
        node = self.root
        for token in tokens[:-1]:
            if isinstance(node, dict):
                node = node.get(token, _MISSING)
            elif isinstance(node, list):
                index = _index(token, len(node))
                node = _MISSING if index is None else node[index]
            else:
                return _MISSING
            if node is _MISSING:
                return _MISSING
        return node if isinstance(node, dict | list) else _MISSING

    def _get(self, tokens: list[str]) -> Any:
        if not tokens:
            return self.root
        parent = self._container(tokens)
        if isinstance(parent, dict):
            return parent.get(tokens[-1], _MISSING)
        if isinstance(parent, list):
            index = _index(tokens[-1], len(parent))
            return _MISSING if index is None else parent[index]
        return _MISSING

    def _add(self, kind: str, path: str, tokens: list[str], value: Any) -> None:
        if not tokens:
            self.root = value
            return
        parent = self._container(tokens)
        if parent is _MISSING:
            if kind == "add":
                raise _unapplied(
                    f'add operation does not apply: doc is missing path: "{_cut(path)}": '
                    "missing value"
                )
            raise _unapplied(
                f"{kind} operation does not apply: doc is missing destination path: "
                f"{_cut(path)}: missing value"
            )
        key = tokens[-1]
        if isinstance(parent, dict):
            parent[key] = value
        elif key == "-":
            parent.append(value)
        else:
            index = _index(key, len(parent) + 1)
            if index is None:
                raise _bad_index(kind, path, key)
            parent.insert(index, value)

    def _remove(self, path: str, tokens: list[str]) -> Any:
        parent = self._container(tokens) if tokens else _MISSING
        if parent is _MISSING:
            raise _unapplied(
                f'remove operation does not apply: doc is missing path: "{_cut(path)}": '
                "missing value"
            )
        key = tokens[-1]
        if isinstance(parent, dict):
            if key not in parent:
                raise _unapplied(
                    f"error in remove for path: '{_cut(path)}': Unable to remove nonexistent "
                    f"key: {_cut(key)}: missing value"
                )
            return parent.pop(key)
        index = _index(key, len(parent))
        if index is None:
            raise _bad_index("remove", path, key)
        return parent.pop(index)

    def _replace(self, path: str, tokens: list[str], value: Any) -> None:
        if not tokens:
            self.root = value
            return
        parent = self._container(tokens)
        if parent is _MISSING:
            raise _unapplied(
                f"replace operation does not apply: doc is missing path: {_cut(path)}: "
                "missing value"
            )
        key = tokens[-1]
        if isinstance(parent, dict):
            if key not in parent:
                raise _unapplied(
                    f"replace operation does not apply: doc is missing key: {_cut(path)}: "
                    "missing value"
                )
            parent[key] = value
            return
        index = _index(key, len(parent))
        if index is None:
            raise _unapplied(
                f"replace operation does not apply: doc is missing key: {_cut(path)}: missing value"
            )
        parent[index] = value

    def _move_or_copy(
        self, kind: str, source: str, from_tokens: list[str], path: str, tokens: list[str]
    ) -> None:
        value = self._get(from_tokens)
        if value is _MISSING:
            raise _unapplied(
                f"{kind} operation does not apply: doc is missing from path: {_cut(source)}: "
                "missing value"
            )
        if kind == "move":
            if from_tokens == tokens:
                return
            if tokens[: len(from_tokens)] == from_tokens:
                raise _unapplied(
                    f"move operation does not apply: from path {_cut(source)} is a prefix "
                    f"of path {_cut(path)}"
                )
            self._remove(source, from_tokens)
        else:
            size = _json_size(value, MAX_COPY_BYTES - self.copied)
            if self.copied + size > MAX_COPY_BYTES:
                total = self.copied + _json_size(value, 1 << 62)  # once, to say how much
                raise _unapplied(
                    "Unable to complete the copy, the accumulated size increase of copy is "
                    f"{total}, exceeding the limit {MAX_COPY_BYTES}"
                )
            self.copied += size
            value = _copy(value)
        self._add(kind, path, tokens, value)

    def _test(self, path: str, tokens: list[str], value: Any) -> None:
        current = self._get(tokens)
        if current is _MISSING:
            raise _unapplied(
                f"test operation does not apply: is missing path: {_cut(path)}: missing value"
            )
        if not _same(current, value):
            raise _unapplied(f"testing value {_cut(path)} failed: test failed")


# --------------------------------------------------------------------------------------------
# Strategic merge patch


@dataclass(frozen=True, slots=True)
class _Field:
    """A field's tags in k8s.io/api: the struct type of its value (of its items, for a list),
    its ``patchMergeKey`` and whether its ``patchStrategy`` is ``merge``."""

    struct: str | None = None
    merge_key: str | None = None
    merge: bool = False


def _merged(key: str | None, struct: str | None = None) -> _Field:
    return _Field(struct, key, True)


#: The v1 Pod's fields on the way to a list with a patch strategy, from the tags of
#: k8s.io/api core/v1 types.go and k8s.io/apimachinery meta/v1 (``retainKeys`` needs no
#: entry: its directive is applied wherever it is sent). A field not here is merged if both
#: sides are objects and replaced otherwise (a list without a merge key: ``tolerations``).
_SCHEMA: Final[dict[str, dict[str, _Field]]] = {
    "Pod": {
        "metadata": _Field("ObjectMeta"),
        "spec": _Field("PodSpec"),
        "status": _Field("PodStatus"),
    },
    "ObjectMeta": {
        "finalizers": _merged(None),
        "ownerReferences": _merged("uid"),
    },
    "PodSpec": {
        "volumes": _merged("name"),  # merge,retainKeys
        "initContainers": _merged("name", "Container"),
        "containers": _merged("name", "Container"),
        "ephemeralContainers": _merged("name", "Container"),  # EphemeralContainerCommon
        "imagePullSecrets": _merged("name"),
        "hostAliases": _merged("ip"),
        "topologySpreadConstraints": _merged("topologyKey"),
        "schedulingGates": _merged("name"),
        "resourceClaims": _merged("name"),  # merge,retainKeys
        "evictionResponders": _merged("name"),
    },
    "Container": {
        "ports": _merged("containerPort"),
        "env": _merged("name"),
        "volumeMounts": _merged("mountPath"),
        "volumeDevices": _merged("devicePath"),
    },
    "PodStatus": {
        "conditions": _merged("type"),
        "hostIPs": _merged("ip"),
        "podIPs": _merged("ip"),
        "resourceClaimStatuses": _merged("name"),  # merge,retainKeys
        "nodeAllocatableResourceClaimStatuses": _merged(
            "resourceClaimName", "NodeAllocatableResourceClaimStatus"
        ),
    },
    "NodeAllocatableResourceClaimStatus": {
        "mapping": _merged("name"),
        "overhead": _merged("name"),
    },
}

_PATCH: Final = "$patch"
_RETAIN_KEYS: Final = "$retainKeys"
_DELETE_FROM: Final = "$deleteFromPrimitiveList"
_SET_ORDER: Final = "$setElementOrder"
_BAD_RETAIN_KEYS: Final = "invalid patch format of retainKeys"
_BAD_PRIMITIVE_LIST: Final = "invalid patch format of primitive list"
_BAD_SET_ORDER: Final = "invalid patch format of setElementOrder list"
_DROP: Any = object()  # a value that is not kept (a map with "$patch: delete" that was absent)


def strategic_merge_patch(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes strategic merge patch of a v1 Pod (neither argument is changed).

    Raises:
        InvalidPatch: a malformed directive (400) or a patch that does not apply (422).
    """
    if _depth(patch) > MAX_DEPTH:
        raise InvalidPatch(TOO_DEEP)
    return _strategic(obj, _copy(patch))


def _strategic(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """strategic_merge_patch of a patch that is not deeper than MAX_DEPTH (and is used up)."""
    result = _smp_map(_copy(obj), patch, "Pod", "")
    return result if isinstance(result, dict) else {}


def _at(where: str, message: str, status: int = 422) -> InvalidPatch:
    return InvalidPatch(f"{where}: {message}" if where else message, status)


def _child(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _directive_field(key: str, prefix: str, message: str) -> str:
    name, slash, rest = key.partition("/")
    if name != prefix or not slash:
        raise InvalidPatch(message)
    return rest


def _no_merge_key(item: Any, key: str) -> str:
    return f"map: {_go(item)} does not contain declared merge key: {key}"


def _smp_map(
    orig: dict[str, Any] | None, patch: dict[str, Any], struct: str | None, where: str
) -> Any:
    """``patch`` merged into ``orig`` (changed in place), or into nothing if ``orig`` is None;
    _DROP for ``$patch: delete`` with nothing to delete."""
    if _PATCH in patch:
        directive = patch[_PATCH]
        if directive == "delete":
            return {} if orig is not None else _DROP
        if directive not in ("replace", "merge"):
            raise _at(where, f"unknown patch type: {_go(directive)} in map: {_go(patch)}")
        patch = {k: v for k, v in patch.items() if k != _PATCH}
        if directive == "replace":
            orig = None
    result: dict[str, Any] = {} if orig is None else orig
    fields = _SCHEMA.get(struct or "", {})
    if _RETAIN_KEYS in patch:
        _retain_keys(result, patch, where)
    # Deletions from primitive lists first, so that what a patch both deletes and orders or
    # adds is not seen again by the merges below.
    for key, value in patch.items():
        if key.startswith(_DELETE_FROM):
            name = _directive_field(key, _DELETE_FROM, _BAD_PRIMITIVE_LIST)
            if not isinstance(value, list):
                raise InvalidPatch(_BAD_PRIMITIVE_LIST)
            current = result.get(name)
            if isinstance(current, list):
                gone = {_hkey(v) for v in value}
                result[name] = [v for v in current if _hkey(v) not in gone]
    ordered: set[str] = set()
    for key, value in patch.items():
        if key.startswith(_SET_ORDER):
            name = _directive_field(key, _SET_ORDER, _BAD_SET_ORDER)
            if not isinstance(value, list):
                raise InvalidPatch(_BAD_SET_ORDER)
            if _set_order(result, patch, name, value, fields.get(name), _child(where, name)):
                ordered.add(name)
    for key, value in patch.items():
        if key in ordered or key.startswith((_DELETE_FROM, _SET_ORDER)) or key == _RETAIN_KEYS:
            continue
        if value is None:
            result.pop(key, None)
            continue
        field = fields.get(key)
        merged = _smp_value(result.get(key, _MISSING), value, field, _child(where, key))
        if merged is _DROP:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def _retain_keys(result: dict[str, Any], patch: dict[str, Any], where: str) -> None:
    retained = patch[_RETAIN_KEYS]
    if not isinstance(retained, list):
        raise _at(where, _BAD_RETAIN_KEYS, 400)
    keep = {k for k in retained if isinstance(k, str)}
    for key, value in patch.items():
        if key == _RETAIN_KEYS or value is None or key.startswith((_DELETE_FROM, _SET_ORDER)):
            continue
        if key not in keep:  # the patch sets a field it does not keep
            raise _at(where, _BAD_RETAIN_KEYS, 400)
    for key in [k for k in result if k not in keep]:
        del result[key]


def _smp_value(orig: Any, patch: Any, field: _Field | None, where: str) -> Any:
    """``patch`` merged into ``orig`` (_MISSING when the field is absent)."""
    struct = field.struct if field else None
    if isinstance(patch, dict):
        return _smp_map(orig if isinstance(orig, dict) else None, patch, struct, where)
    if isinstance(patch, list):
        if field is not None and field.merge:
            return _smp_list(orig if isinstance(orig, list) else [], patch, field, where)
        return _replaced_list(patch, struct, where)
    return patch


def _replaced_list(patch: list[Any], struct: str | None, where: str) -> list[Any]:
    """A list without a merge strategy: the patch's, its items cleaned of directives and
    nulls as a new value is."""
    out = []
    for item in patch:
        if isinstance(item, dict) and _PATCH in item:
            if item[_PATCH] == "replace":
                continue  # the list is replaced anyway
            raise _at(
                where, f"a list without a merge key cannot take {_PATCH}: {_go(item[_PATCH])}"
            )
        if isinstance(item, dict):
            item = _smp_map(None, item, struct, where)
        elif isinstance(item, list):
            item = _replaced_list(item, None, where)
        out.append(item)
    return out


def _smp_list(orig: list[Any], patch: list[Any], field: _Field, where: str) -> list[Any]:
    """A list with ``patchStrategy: merge``: items merged by their merge key (primitives as a
    set), in the patch's order, the live list's other items kept where they were."""
    key = field.merge_key
    for item in (*orig, *patch):
        if isinstance(item, list):
            raise _at(where, "lists of lists are not supported")
    if key is None:
        if any(isinstance(item, dict) for item in (*orig, *patch)):
            raise _at(where, f"cannot merge lists without merge key for {where}")
        seen: set[Hashable] = set()
        merged = []
        for item in (*orig, *patch):
            if _hkey(item) not in seen:
                seen.add(_hkey(item))
                merged.append(item)
        return _ordered(merged, [_hkey(p) for p in patch], [_hkey(o) for o in orig], _hkey)
    for item in (*orig, *patch):
        if not isinstance(item, dict):
            raise _at(where, f"list element types are not identical: {_go(item)} is not a map")
    items = []
    gone: set[Hashable] = set()
    replace = False
    for item in patch:
        directive = item.get(_PATCH, _MISSING)
        if directive is _MISSING:
            items.append(item)
        elif directive == "delete":  # every item of that key
            if key not in item:
                raise _at(where, _no_merge_key(item, key))
            gone.add(_hkey(item[key]))
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            if key in item:  # an item to merge as any other; alone, only a marker
                items.append(item)
        else:
            raise _at(where, f"unknown patch type: {_go(directive)} in map: {_go(item)}")
    if replace:  # the patch's items, and nothing of the live list
        return [_smp_map(None, item, field.struct, where) for item in items]
    if gone:
        orig = [o for o in orig if not (key in o and _hkey(o[key]) in gone)]
    merged = list(orig)
    position: dict[Hashable, int] = {}
    for i, item in enumerate(orig):
        if key in item:
            position.setdefault(_hkey(item[key]), i)
    for item in items:
        if key not in item:
            raise _at(where, _no_merge_key(item, key))
        at = position.get(_hkey(item[key]))
        if at is None:
            position[_hkey(item[key])] = len(merged)
            merged.append(_smp_map(None, item, field.struct, where))
        else:
            merged[at] = _smp_map(merged[at], item, field.struct, where)
    return _ordered(
        merged,
        [_hkey(item[key]) for item in items],
        [_hkey(o.get(key)) for o in orig],
        lambda item: _hkey(item.get(key)),
    )


def _ordered(
    merged: list[Any],
    order: list[Hashable],
    live: list[Hashable],
    key_of: Callable[[Any], Hashable],
) -> list[Any]:
    """``merged`` in the order upstream gives it: the items named in ``order`` in that order;
    each other item (only in the live list) goes before the next named one if the live list
    has it before that one. An item the live list does not have is not placed after a
    live-only item (a new container of ``kubectl patch`` comes first)."""
    rank: dict[Hashable, int] = {}
    for i, k in enumerate(order):
        rank.setdefault(k, i)
    live_rank: dict[Hashable, int] = {}
    for i, k in enumerate(live):
        live_rank.setdefault(k, i)
    # (rank in order, rank in the live list, item): the key of each item is found once
    named: list[tuple[int, int | None, Any]] = []
    others: list[tuple[int | None, Any]] = []
    for item in merged:
        k = key_of(item)
        at = rank.get(k)
        if at is None:
            others.append((live_rank.get(k), item))
        else:
            named.append((at, live_rank.get(k), item))
    named.sort(key=lambda entry: entry[0])
    out: list[Any] = []
    i = j = 0
    while i < len(others) and j < len(named):
        a = others[i][0]
        b = named[j][1]
        if a is not None and b is not None and a < b:
            out.append(others[i][1])
            i += 1
        else:
            out.append(named[j][2])
            j += 1
    out.extend(entry[1] for entry in others[i:])
    out.extend(entry[2] for entry in named[j:])
    return out


def _set_order(
    result: dict[str, Any],
    patch: dict[str, Any],
    name: str,
    order: list[Any],
    field: _Field | None,
    where: str,
) -> bool:
    """Apply ``$setElementOrder/<name>`` (merging the patch's ``<name>`` list with it); False
    if there is nothing to order here and ``<name>`` is left to the plain merge."""
    if field is None or not field.merge:
        return False  # not a merging list: the list itself is replaced, its order with it
    patch_list = patch.get(name, _MISSING)
    if patch_list is not _MISSING and not isinstance(patch_list, list):
        return False  # null (delete the list) or another kind: the plain merge does it
    live = result.get(name, _MISSING)
    if not isinstance(live, list):
        live = _MISSING
    if live is _MISSING and patch_list is _MISSING:
        return True
    key = field.merge_key
    key_of: Callable[[Any], Hashable]
    if key is None:
        key_of = _hkey
        order_keys = [_hkey(o) for o in order]
    else:
        for o in order:
            if not isinstance(o, dict) or key not in o:
                raise _at(where, _no_merge_key(o, key))

        def key_of(item: Any) -> Hashable:
            return _hkey(item.get(key)) if isinstance(item, dict) else _hkey(item)

        order_keys = [_hkey(o[key]) for o in order]
    if patch_list is not _MISSING:
        _check_order(patch_list, order, order_keys, key, key_of, where)
    live_list: list[Any] = [] if live is _MISSING else live
    if patch_list is _MISSING:
        merged = live_list
    else:
        merged = _smp_list(list(live_list), patch_list, field, where)
    result[name] = _ordered(merged, order_keys, [key_of(o) for o in live_list], key_of)
    return True


def _check_order(
    patch_list: list[Any],
    order: list[Any],
    order_keys: list[Hashable],
    key: str | None,
    key_of: Callable[[Any], Hashable],
    where: str,
) -> None:
    """The patch's items (but deletions) must be in ``$setElementOrder``, in its order."""
    items = [p for p in patch_list if not (isinstance(p, dict) and _PATCH in p)]
    if key is not None:
        for item in items:
            if not isinstance(item, dict) or key not in item:
                raise _at(where, _no_merge_key(item, key))
    i = 0
    for k in order_keys:
        if i < len(items) and key_of(items[i]) == k:
            i += 1
    if i < len(items):
        raise _at(
            where,
            f"The order in patch list:\n{_go(patch_list)}\n doesn't match {_SET_ORDER} list:\n"
            f"{_go(order)}\n",
        )


# --------------------------------------------------------------------------------------------
# What the apiserver refuses in an updated pod


#: ValidatePodUpdate's list of what a pod update may change (pkg/apis/core/validation).
UPDATABLE_POD_SPEC_FIELDS: Final = (
    "`spec.containers[*].image`",
    "`spec.initContainers[*].image`",
    "`spec.activeDeadlineSeconds`",
    "`spec.tolerations` (only additions to existing tolerations)",
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
)
#: The cause of any change under ``spec``: the apiserver's, and what streamsrv adds to it.
SPEC_FORBIDDEN: Final = (
    "Forbidden: pod updates may not change fields other than "
    + ",".join(UPDATABLE_POD_SPEC_FIELDS)
    + "; streamsrv does not change images (or any other field of spec) in place either: "
    "delete the pod and create it again"
)
FIELD_IMMUTABLE: Final = "field is immutable"
#: The cause of a change to the metadata streamsrv does not keep.
NOT_KEPT: Final = (
    "Forbidden: streamsrv keeps only the labels and annotations of a pod's metadata; "
    "this field cannot be changed"
)

#: ObjectMeta fields the apiserver holds immutable; one absent in the update keeps its old
#: value (the apiserver fills these in), but the name.
_IMMUTABLE: Final = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
#: ObjectMeta fields a pod update may change upstream, which the gateway does not keep.
_NOT_KEPT: Final = ("generateName", "finalizers", "ownerReferences")
# Ignored: resourceVersion, generation, managedFields, selfLink (the caller sets them), and
# fields ObjectMeta does not have (the apiserver's decoder drops them).

_LABEL_NAME_FMT: Final = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_NAME: Final = re.compile(_LABEL_NAME_FMT)
_LABEL_VALUE_FMT: Final = f"({_LABEL_NAME_FMT})?"
_DNS1123_LABEL_FMT: Final = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT: Final = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1123_SUBDOMAIN: Final = re.compile(_DNS1123_SUBDOMAIN_FMT)
_LABEL_MAX: Final = 63
_SUBDOMAIN_MAX: Final = 253


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """apimachinery's RegexError, spaces and all."""
    shown = "".join(f"{' or ' if i else ''}'{e}', " for i, e in enumerate(examples))
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


_LABEL_NAME_ERROR: Final = _regex_error(
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character",
    _LABEL_NAME_FMT,
    "MyName",
    "my.name",
    "123-abc",
)
_LABEL_VALUE_ERROR: Final = _regex_error(
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character",
    _LABEL_VALUE_FMT,
    "MyValue",
    "my_value",
    "12345",
)
_SUBDOMAIN_ERROR: Final = _regex_error(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character",
    _DNS1123_SUBDOMAIN_FMT,
    "example.com",
)


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _max_len(length: int) -> str:
    return f"must be no more than {length} bytes"


def qualified_name_errors(key: str) -> list[str]:
    """What is wrong with a label key (apimachinery's IsQualifiedName), [] if nothing."""
    errors = []
    parts = key.split("/")
    if len(parts) > 2:
        return [
            f"a valid label key {_LABEL_NAME_ERROR} with an optional DNS subdomain prefix and "
            "'/' (e.g. 'example.com/MyName')"
        ]
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if _bytes(prefix) > _SUBDOMAIN_MAX:
                errors.append(f"prefix part {_max_len(_SUBDOMAIN_MAX)}")
            if not _DNS1123_SUBDOMAIN.fullmatch(prefix):
                errors.append(f"prefix part {_SUBDOMAIN_ERROR}")
    if not name:
        errors.append("name part must be non-empty")
    elif _bytes(name) > _LABEL_MAX:
        errors.append(f"name part {_max_len(_LABEL_MAX)}")
    if not _LABEL_NAME.fullmatch(name):
        errors.append(f"name part {_LABEL_NAME_ERROR}")
    return errors


def label_value_errors(value: str) -> list[str]:
    """What is wrong with a label value (apimachinery's IsValidLabelValue), [] if nothing."""
    errors = []
    if _bytes(value) > _LABEL_MAX:
        errors.append(_max_len(_LABEL_MAX))
    if value and not _LABEL_NAME.fullmatch(value):
        errors.append(_LABEL_VALUE_ERROR)
    return errors


def _string_map(value: Any, where: str, causes: list[tuple[str, str]] | None) -> dict[str, str]:
    """The string map at ``metadata.<where>``: null values are "" (as Go decodes them), other
    non-strings are left out, with a cause each if ``causes`` is given."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        if causes is not None:
            causes.append((where, "Invalid value: must be a map of strings to strings"))
        return {}
    out = {}
    for key, item in value.items():
        if item is None:
            item = ""
        if not isinstance(item, str):
            if causes is not None:
                causes.append((where, f"Invalid value: {_quoted(item)}: must be a string"))
            continue
        out[key] = item
    return out


def _empty(value: Any) -> bool:
    """As good as absent to the apiserver's semantic equality: null, an empty list or map (nil
    and empty compare equal). "" and 0 are not: whether they are a field's zero value depends on
    the field's type."""
    return value is None or value is _MISSING or (isinstance(value, dict | list) and not value)


def _unset(value: Any) -> bool:
    return _empty(value) or value == ""


def _differences(old: Any, new: Any, where: str, found: list[str], limit: int = 5) -> None:
    """Append to ``found`` the paths where ``new`` differs from ``old`` (up to ``limit``)."""
    if len(found) >= limit or (_empty(old) and _empty(new)):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _differences(old.get(key), new.get(key), f"{where}.{key}", found, limit)
            if len(found) >= limit:
                return
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _differences(a, b, f"{where}[{i}]", found, limit)
            if len(found) >= limit:
                return
    elif not _same(old, new):
        found.append(where)


def pod_update_causes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """What the apiserver would refuse in updating pod ``old`` to ``new``, as (field,
    message) causes of its 422 (``[]``: the update is valid), for a gateway whose pods can
    change only ``metadata.labels`` and ``metadata.annotations``.

    - ``metadata.name``, ``namespace``, ``uid``, ``creationTimestamp``,
      ``deletionTimestamp``, ``deletionGracePeriodSeconds`` changed: ``Invalid value: "x":
      field is immutable`` (one left out keeps its old value, but the name).
    - ``metadata.generateName``, ``finalizers``, ``ownerReferences`` changed: refused, as
      streamsrv keeps none of them (:data:`NOT_KEPT`).
    - anything under ``spec`` changed: ``spec``, :data:`SPEC_FORBIDDEN` and the first
      changed paths on the next line, as the apiserver puts its diff there.
    - labels and annotations as the apiserver validates them.
    - ``status``, ``resourceVersion``, ``generation``, ``managedFields``, ``selfLink`` and
      fields ObjectMeta does not have are ignored.
    """
    causes: list[tuple[str, str]] = []
    if new.get("apiVersion", "v1") != "v1" or new.get("kind", "Pod") != "Pod":
        causes.append(("kind", "Invalid value: only apiVersion v1, kind Pod is served"))
    old_meta = old.get("metadata")
    old_meta = old_meta if isinstance(old_meta, dict) else {}
    meta = new.get("metadata")
    if not isinstance(meta, dict):
        causes.append(("metadata", f"Invalid value: {_quoted(meta)}: must be an object"))
        meta = {}
    for name in _IMMUTABLE:
        value = meta.get(name)
        if name != "name" and value is None:
            continue  # the apiserver keeps the old one
        before = old_meta.get(name)
        if not _same(before, value):
            shown = '""' if value is None else _quoted(value)
            causes.append((f"metadata.{name}", f"Invalid value: {shown}: {FIELD_IMMUTABLE}"))
    for name in _NOT_KEPT:
        before, after = old_meta.get(name), meta.get(name)
        if not (_unset(before) and _unset(after)) and not _same(before, after):
            causes.append((f"metadata.{name}", NOT_KEPT))
    _validate_labels(meta.get("labels"), causes)
    _validate_annotations(meta.get("annotations"), causes)
    changed: list[str] = []
    _differences(old.get("spec"), new.get("spec"), "spec", changed)
    if changed:
        causes.append(("spec", SPEC_FORBIDDEN + "\nchanged: " + ", ".join(changed)))
    return causes


def _validate_labels(value: Any, causes: list[tuple[str, str]]) -> None:
    where = "metadata.labels"
    labels = _string_map(value, where, causes)
    if len(labels) > MAX_LABELS:
        causes.append((where, f"Too many: {len(labels)}: must have at most {MAX_LABELS}"))
    for key, item in labels.items():
        for message in qualified_name_errors(key):
            causes.append((where, f"Invalid value: {_quoted(key)}: {message}"))
        for message in label_value_errors(item):
            causes.append((where, f"Invalid value: {_quoted(item)}: {message}"))


def _validate_annotations(value: Any, causes: list[tuple[str, str]]) -> None:
    where = "metadata.annotations"
    annotations = _string_map(value, where, causes)
    for key in annotations:
        # A qualified name, but any case: the apiserver checks the key in lower case.
        for message in qualified_name_errors(key.lower()):
            causes.append((where, f"Invalid value: {_quoted(key)}: {message}"))
    size = sum(_bytes(k) + _bytes(v) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_SIZE:
        causes.append((where, f"Too long: may not be more than {MAX_ANNOTATIONS_SIZE} bytes"))


def patched_metadata(new: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The (labels, annotations) of pod ``new`` to store: string maps, a null value as "".

    A value of another kind is left out here (:func:`pod_update_causes` refuses it).
    """
    meta = new.get("metadata")
    if not isinstance(meta, dict):
        return {}, {}
    return (
        _string_map(meta.get("labels"), "metadata.labels", None),
        _string_map(meta.get("annotations"), "metadata.annotations", None),
    )


__all__ = [
    "FIELD_IMMUTABLE",
    "JSON_PATCH",
    "MAX_ANNOTATIONS_SIZE",
    "MAX_COPY_BYTES",
    "MAX_DEPTH",
    "MAX_LABELS",
    "MAX_OPERATIONS",
    "MERGE_PATCH",
    "NOT_JSON",
    "NOT_KEPT",
    "PATCH_TYPES",
    "SPEC_FORBIDDEN",
    "STRATEGIC_MERGE_PATCH",
    "TOO_DEEP",
    "UNSUPPORTED_MESSAGE",
    "UPDATABLE_POD_SPEC_FIELDS",
    "InvalidPatch",
    "UnsupportedPatch",
    "apply_patch",
    "json_patch",
    "label_value_errors",
    "merge_patch",
    "patched_metadata",
    "pod_update_causes",
    "qualified_name_errors",
    "strategic_merge_patch",
]
