"""Kubernetes protobuf request bodies, decoded by hand into the JSON form of the object.

Since client-go 1.32, kubectl's typed clients send what they create as
``application/vnd.kubernetes.protobuf``: ``kubectl debug --copy-to`` and ``kubectl debug
node/...`` POST their pod that way. The gateway decodes such a body with :func:`decode` into
the very dict ``json.loads`` would give for the same pod sent as JSON, and hands it to the same
``pods.parse_pod`` (docs/architecture.md, "Protobuf request bodies").

**The envelope.** Four bytes ``k8s\\0``, then a ``runtime.Unknown`` message: ``typeMeta``
(``apiVersion``, ``kind``), ``raw`` (the object's own message, which carries no type
fields), ``contentEncoding`` (must be empty: nothing else is defined) and ``contentType``
(empty or the protobuf type). A missing ``apiVersion``/``kind`` is left out (the endpoint
implies ``v1 Pod``); any other kind is refused, since only a Pod can be decoded.

**What is decoded of a v1 Pod** (field numbers and types of k8s.io/api ``core/v1`` and
apimachinery's ``meta/v1``, ``runtime`` and ``api/resource`` ``generated.proto``):

- ``metadata``: ``name``, ``generateName``, ``namespace``, ``uid``, ``resourceVersion``,
  ``generation``, ``creationTimestamp``, ``deletionTimestamp``,
  ``deletionGracePeriodSeconds``, ``labels``, ``annotations``, ``ownerReferences``,
  ``finalizers``. (``selfLink`` and ``managedFields`` are dropped.)
- ``spec``: ``volumes``, ``initContainers``, ``containers``, ``restartPolicy``,
  ``terminationGracePeriodSeconds``, ``activeDeadlineSeconds``, ``dnsPolicy``,
  ``nodeSelector``, ``serviceAccountName``, ``serviceAccount``,
  ``automountServiceAccountToken``, ``nodeName``, ``hostNetwork``, ``hostPID``, ``hostIPC``,
  ``shareProcessNamespace``, ``securityContext``, ``imagePullSecrets``, ``hostname``,
  ``subdomain``, ``schedulerName``, ``tolerations`` (all five fields), ``priorityClassName``,
  ``priority``, ``runtimeClassName``, ``enableServiceLinks``, ``preemptionPolicy``,
  ``setHostnameAsFQDN``, ``hostUsers``.
- each container and init container: ``name``, ``image``, ``command``, ``args``,
  ``workingDir``, ``ports`` (all five fields), ``env`` (``name``, ``value`` and ``valueFrom``
  with its five sources), ``resources`` (``limits``, ``requests`` as quantity strings,
  ``claims``), ``restartPolicy``, ``volumeMounts`` (all but ``bindMountOptions``),
  ``terminationMessagePath``, ``terminationMessagePolicy``, ``imagePullPolicy``,
  ``securityContext``, ``stdin``, ``stdinOnce``, ``tty``.
- a security context (container): ``capabilities`` (``add``, ``drop``), ``privileged``,
  ``seLinuxOptions``, ``runAsUser``, ``runAsGroup``, ``runAsNonRoot``,
  ``readOnlyRootFilesystem``, ``allowPrivilegeEscalation``, ``procMount``,
  ``seccompProfile``, ``appArmorProfile``; (pod) ``seLinuxOptions``, ``runAsUser``,
  ``runAsGroup``, ``runAsNonRoot``, ``supplementalGroups``, ``supplementalGroupsPolicy``,
  ``fsGroup``, ``sysctls``, ``fsGroupChangePolicy``, ``seccompProfile``,
  ``appArmorProfile``, ``seLinuxChangePolicy``.
- ``volumes``: ``name``, ``hostPath`` (``path``, ``type``), ``emptyDir`` (``medium``,
  ``sizeLimit``, ``mode``). Every other volume source is kept as its key with ``{}``, so
  ``parse_pod`` names it in its refusal instead of seeing a volume with no source.

Everything else is dropped without a trace: ``status``, ``ephemeralContainers``, probes,
``lifecycle``, ``affinity``, ``envFrom``, ... are fields ``parse_pod`` ignores (or would refuse)
in a JSON body as well.

**Semantics.** The k8s.io messages are proto2 and Go's generated code writes every field of
a non-pointer Go value even when it is zero, so a body holds ``stdin: false`` and
``workingDir: ""`` where the JSON form has nothing. To give the JSON form, each field knows
what its Go field is: a plain value tagged ``omitempty`` leaves its zero value out (as
``encoding/json`` does); a pointer (``privileged``, ``runAsNonRoot``, ``enableServiceLinks``,
``priority``, ``hostPath.type``, ...) or a value without ``omitempty`` (``containerPort``,
``mountPath``) keeps whatever was sent, ``false``, ``0`` and ``""`` included. Map fields are
repeated key/value entries (the last of a key wins); a message field sent twice is merged, a
scalar's last value wins; repeated numbers may be packed. Unknown fields are skipped by wire
type (varint, 64-bit, length-delimited, 32-bit); groups are refused. Strings must be UTF-8
(``json.loads`` refuses the same bytes). A ``Time`` is its seconds as RFC 3339 (the zero time
is left out), a ``Quantity`` its string.

**Bounds.** At most :data:`MAX_BODY` bytes, messages nested at most :data:`MAX_DEPTH` deep (the
Pod schema needs 8), at most :data:`MAX_REPEATED` entries in one repeated or map field of one
message. Anything malformed or past a bound raises :class:`ProtobufError` (a ``ValueError``),
never anything else.

Pure: the standard library only, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

#: The media type client-go sends.
CONTENT_TYPE: Final = "application/vnd.kubernetes.protobuf"
#: What every Kubernetes protobuf body starts with.
MAGIC: Final = b"k8s\x00"
#: The largest body decoded (the gateway refuses larger ones before this, with 413).
MAX_BODY: Final = 3 * 1024 * 1024
#: How deep messages may nest (the envelope counts as one).
MAX_DEPTH: Final = 32
#: The most entries of one repeated (or map) field in one message.
MAX_REPEATED: Final = 10_000


class ProtobufError(ValueError):
    """The body is not a Kubernetes protobuf object this module can decode."""


# ------------------------------------------------------------------------------- the schema

# Field kinds.
_STRING, _BYTES, _BOOL, _INT32, _INT64 = "string", "bytes", "bool", "int32", "int64"
_MESSAGE = "message"  # a nested message: a dict
_INLINE = "inline"  # a Go struct embedded with `json:""`: its fields go into the parent's dict
_OPAQUE = "opaque"  # a message kept as {} (present, not decoded)
_QUANTITY = "quantity"  # resource.Quantity: its string
_TIME = "time"  # meta/v1 Time: RFC 3339 seconds
_STRING_MAP = "map<string,string>"
_QUANTITY_MAP = "map<string,Quantity>"

_LENGTH_KINDS = frozenset(
    {_STRING, _BYTES, _MESSAGE, _INLINE, _OPAQUE, _QUANTITY, _TIME, _STRING_MAP, _QUANTITY_MAP}
)
_NUMBER_KINDS = frozenset({_BOOL, _INT32, _INT64})


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str
    #: A repeated field: a list of values.
    repeated: bool = False
    #: A plain (non-pointer) Go value tagged ``omitempty``: its zero value is left out.
    omitempty: bool = False
    #: The fields of a nested (or inline) message.
    fields: Mapping[int, _Field] | None = None


_Schema = Mapping[int, _Field]


def _str(name: str, *, omit: bool = False) -> _Field:
    return _Field(name, _STRING, omitempty=omit)


def _strs(name: str) -> _Field:
    return _Field(name, _STRING, repeated=True)


def _flag(name: str, *, omit: bool = False) -> _Field:
    return _Field(name, _BOOL, omitempty=omit)


def _int32(name: str, *, omit: bool = False) -> _Field:
    return _Field(name, _INT32, omitempty=omit)


def _int64(name: str, *, omit: bool = False) -> _Field:
    return _Field(name, _INT64, omitempty=omit)


def _msg(name: str, fields: _Schema, *, repeated: bool = False) -> _Field:
    return _Field(name, _MESSAGE, repeated=repeated, fields=fields)


# runtime/generated.proto
_TYPE_META: _Schema = {1: _str("apiVersion", omit=True), 2: _str("kind", omit=True)}
_UNKNOWN: _Schema = {
    1: _msg("typeMeta", _TYPE_META),
    2: _Field("raw", _BYTES),
    3: _str("contentEncoding", omit=True),
    4: _str("contentType", omit=True),
}

# meta/v1/generated.proto
_OWNER_REFERENCE: _Schema = {
    5: _str("apiVersion"),
    1: _str("kind"),
    3: _str("name"),
    4: _str("uid"),
    6: _flag("controller"),
    7: _flag("blockOwnerDeletion"),
}
_OBJECT_META: _Schema = {
    1: _str("name", omit=True),
    2: _str("generateName", omit=True),
    3: _str("namespace", omit=True),
    5: _str("uid", omit=True),
    6: _str("resourceVersion", omit=True),
    7: _int64("generation", omit=True),
    8: _Field("creationTimestamp", _TIME),
    9: _Field("deletionTimestamp", _TIME),
    10: _int64("deletionGracePeriodSeconds"),
    11: _Field("labels", _STRING_MAP),
    12: _Field("annotations", _STRING_MAP),
    13: _msg("ownerReferences", _OWNER_REFERENCE, repeated=True),
    14: _strs("finalizers"),
}

# core/v1/generated.proto
_LOCAL_OBJECT_REFERENCE: _Schema = {1: _str("name", omit=True)}
_KEY_SELECTOR: _Schema = {  # ConfigMapKeySelector and SecretKeySelector
    1: _Field("localObjectReference", _INLINE, fields=_LOCAL_OBJECT_REFERENCE),
    2: _str("key"),
    3: _flag("optional"),
}
_ENV_VAR_SOURCE: _Schema = {
    1: _msg("fieldRef", {1: _str("apiVersion", omit=True), 2: _str("fieldPath")}),
    2: _msg(
        "resourceFieldRef",
        {
            1: _str("containerName", omit=True),
            2: _str("resource"),
            3: _Field("divisor", _QUANTITY),
        },
    ),
    3: _msg("configMapKeyRef", _KEY_SELECTOR),
    4: _msg("secretKeyRef", _KEY_SELECTOR),
    5: _msg(
        "fileKeyRef",
        {1: _str("volumeName"), 2: _str("path"), 3: _str("key"), 4: _flag("optional")},
    ),
}
_ENV_VAR: _Schema = {
    1: _str("name"),
    2: _str("value", omit=True),
    3: _msg("valueFrom", _ENV_VAR_SOURCE),
}
_CONTAINER_PORT: _Schema = {
    1: _str("name", omit=True),
    2: _int32("hostPort", omit=True),
    3: _int32("containerPort"),
    4: _str("protocol", omit=True),
    5: _str("hostIP", omit=True),
}
_RESOURCES: _Schema = {
    1: _Field("limits", _QUANTITY_MAP),
    2: _Field("requests", _QUANTITY_MAP),
    3: _msg("claims", {1: _str("name"), 2: _str("request", omit=True)}, repeated=True),
}
_VOLUME_MOUNT: _Schema = {
    1: _str("name"),
    2: _flag("readOnly", omit=True),
    7: _str("recursiveReadOnly"),
    3: _str("mountPath"),
    4: _str("subPath", omit=True),
    5: _str("mountPropagation"),
    6: _str("subPathExpr", omit=True),
}
_SE_LINUX_OPTIONS: _Schema = {
    1: _str("user", omit=True),
    2: _str("role", omit=True),
    3: _str("type", omit=True),
    4: _str("level", omit=True),
}
_PROFILE: _Schema = {1: _str("type"), 2: _str("localhostProfile")}  # seccomp and AppArmor
_SECURITY_CONTEXT: _Schema = {
    1: _msg("capabilities", {1: _strs("add"), 2: _strs("drop")}),
    2: _flag("privileged"),
    3: _msg("seLinuxOptions", _SE_LINUX_OPTIONS),
    4: _int64("runAsUser"),
    8: _int64("runAsGroup"),
    5: _flag("runAsNonRoot"),
    6: _flag("readOnlyRootFilesystem"),
    7: _flag("allowPrivilegeEscalation"),
    9: _str("procMount"),
    11: _msg("seccompProfile", _PROFILE),
    12: _msg("appArmorProfile", _PROFILE),
}
_CONTAINER: _Schema = {
    1: _str("name"),
    2: _str("image", omit=True),
    3: _strs("command"),
    4: _strs("args"),
    5: _str("workingDir", omit=True),
    6: _msg("ports", _CONTAINER_PORT, repeated=True),
    7: _msg("env", _ENV_VAR, repeated=True),
    8: _msg("resources", _RESOURCES),
    24: _str("restartPolicy"),
    9: _msg("volumeMounts", _VOLUME_MOUNT, repeated=True),
    13: _str("terminationMessagePath", omit=True),
    20: _str("terminationMessagePolicy", omit=True),
    14: _str("imagePullPolicy", omit=True),
    15: _msg("securityContext", _SECURITY_CONTEXT),
    16: _flag("stdin", omit=True),
    17: _flag("stdinOnce", omit=True),
    18: _flag("tty", omit=True),
}
#: The volume sources besides hostPath and emptyDir: kept as ``{}``, so that the refusal names
#: them.
_OTHER_VOLUME_SOURCES = {
    3: "gcePersistentDisk", 4: "awsElasticBlockStore", 5: "gitRepo", 6: "secret", 7: "nfs",
    8: "iscsi", 9: "glusterfs", 10: "persistentVolumeClaim", 11: "rbd", 12: "flexVolume",
    13: "cinder", 14: "cephfs", 15: "flocker", 16: "downwardAPI", 17: "fc", 18: "azureFile",
    19: "configMap", 20: "vsphereVolume", 21: "quobyte", 22: "azureDisk",
    23: "photonPersistentDisk", 24: "portworxVolume", 25: "scaleIO", 26: "projected",
    27: "storageos", 28: "csi", 29: "ephemeral", 30: "image",
}  # fmt: skip
_VOLUME_SOURCE: _Schema = {
    1: _msg("hostPath", {1: _str("path"), 2: _str("type")}),
    2: _msg(
        "emptyDir",
        {1: _str("medium", omit=True), 2: _Field("sizeLimit", _QUANTITY), 3: _int32("mode")},
    ),
    **{number: _Field(name, _OPAQUE) for number, name in _OTHER_VOLUME_SOURCES.items()},
}
_VOLUME: _Schema = {1: _str("name"), 2: _Field("volumeSource", _INLINE, fields=_VOLUME_SOURCE)}
_TOLERATION: _Schema = {
    1: _str("key", omit=True),
    2: _str("operator", omit=True),
    3: _str("value", omit=True),
    4: _str("effect", omit=True),
    5: _int64("tolerationSeconds"),
}
_POD_SECURITY_CONTEXT: _Schema = {
    1: _msg("seLinuxOptions", _SE_LINUX_OPTIONS),
    2: _int64("runAsUser"),
    6: _int64("runAsGroup"),
    3: _flag("runAsNonRoot"),
    4: _Field("supplementalGroups", _INT64, repeated=True),
    12: _str("supplementalGroupsPolicy"),
    5: _int64("fsGroup"),
    7: _msg("sysctls", {1: _str("name"), 2: _str("value")}, repeated=True),
    9: _str("fsGroupChangePolicy"),
    10: _msg("seccompProfile", _PROFILE),
    11: _msg("appArmorProfile", _PROFILE),
    13: _str("seLinuxChangePolicy"),
}
_POD_SPEC: _Schema = {
    1: _msg("volumes", _VOLUME, repeated=True),
    20: _msg("initContainers", _CONTAINER, repeated=True),
    2: _msg("containers", _CONTAINER, repeated=True),
    3: _str("restartPolicy", omit=True),
    4: _int64("terminationGracePeriodSeconds"),
    5: _int64("activeDeadlineSeconds"),
    6: _str("dnsPolicy", omit=True),
    7: _Field("nodeSelector", _STRING_MAP),
    8: _str("serviceAccountName", omit=True),
    9: _str("serviceAccount", omit=True),
    21: _flag("automountServiceAccountToken"),
    10: _str("nodeName", omit=True),
    11: _flag("hostNetwork", omit=True),
    12: _flag("hostPID", omit=True),
    13: _flag("hostIPC", omit=True),
    27: _flag("shareProcessNamespace"),
    14: _msg("securityContext", _POD_SECURITY_CONTEXT),
    15: _msg("imagePullSecrets", _LOCAL_OBJECT_REFERENCE, repeated=True),
    16: _str("hostname", omit=True),
    17: _str("subdomain", omit=True),
    19: _str("schedulerName", omit=True),
    22: _msg("tolerations", _TOLERATION, repeated=True),
    24: _str("priorityClassName", omit=True),
    25: _int32("priority"),
    29: _str("runtimeClassName"),
    30: _flag("enableServiceLinks"),
    31: _str("preemptionPolicy"),
    35: _flag("setHostnameAsFQDN"),
    37: _flag("hostUsers"),
}
_POD: _Schema = {1: _msg("metadata", _OBJECT_META), 2: _msg("spec", _POD_SPEC)}


# ------------------------------------------------------------------------------- the wire

_VARINT, _FIXED64, _LENGTH, _GROUP_START, _GROUP_END, _FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_TYPES = frozenset({_VARINT, _FIXED64, _LENGTH, _FIXED32})  # the ones accepted
_MAX_FIELD_NUMBER = (1 << 29) - 1
_INT32_RANGE = range(-(1 << 31), 1 << 31)
#: Unix seconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59Z (meta/v1 Timestamp).
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _varint(data: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtobufError(f"{where}: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"{where}: varint longer than 10 bytes")
    if value >> 64:
        raise ProtobufError(f"{where}: varint overflows 64 bits")
    return value, pos


def _signed(value: int) -> int:
    """A varint as Go's int64 (two's complement)."""
    return value - (1 << 64) if value >> 63 else value


def _length(data: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    """The bounds of the length-delimited value at ``pos``."""
    size, pos = _varint(data, pos, end, where)
    if size > end - pos:
        raise ProtobufError(f"{where}: length {size} runs past the end of its message")
    return pos, pos + size


def _skip(data: bytes, pos: int, end: int, wire: int, where: str) -> int:
    """The position after an unknown field's value of wire type ``wire``."""
    if wire == _VARINT:
        return _varint(data, pos, end, where)[1]
    if wire == _LENGTH:
        return _length(data, pos, end, where)[1]
    if wire in (_FIXED64, _FIXED32):
        size = 8 if wire == _FIXED64 else 4
        if end - pos < size:
            raise ProtobufError(f"{where}: truncated {size * 8}-bit value")
        return pos + size
    if wire in (_GROUP_START, _GROUP_END):
        raise ProtobufError(f"{where}: groups (wire type {wire}) are not accepted")
    raise ProtobufError(f"{where}: invalid wire type {wire}")


def _text(data: bytes, start: int, end: int, where: str) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtobufError(f"{where}: not valid UTF-8 (byte {exc.start})") from None


def _time(seconds: int, where: str) -> str:
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ProtobufError(f"{where}: seconds {seconds} out of range")
    t = _EPOCH + timedelta(seconds=seconds)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


class _Decoder:
    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth

    def message(
        self, start: int, end: int, schema: _Schema, where: str, depth: int, out: dict[str, Any]
    ) -> dict[str, Any]:
        """Decode the message in ``data[start:end]`` into ``out`` (merging into what is there)."""
        if depth > self.max_depth:
            raise ProtobufError(f"{where or 'the object'}: nested more than {self.max_depth} deep")
        data = self.data
        counts: dict[int, int] = {}
        pos = start
        while pos < end:
            tag, pos = _varint(data, pos, end, where or "the object")
            number, wire = tag >> 3, tag & 7
            if not 0 < number <= _MAX_FIELD_NUMBER:
                raise ProtobufError(f"{where or 'the object'}: invalid field number {number}")
            field = schema.get(number)
            if field is None:
                pos = _skip(data, pos, end, wire, f"{where or 'the object'}, field {number}")
                continue
            at = f"{where}.{field.name}" if where else field.name
            if wire not in _WIRE_TYPES:
                _skip(data, pos, end, wire, at)  # always raises: a group, or no wire type
            if field.repeated or field.kind in (_STRING_MAP, _QUANTITY_MAP):
                seen = counts.get(number, 0) + 1
                counts[number] = seen
                if seen > MAX_REPEATED:
                    raise ProtobufError(f"{at}: more than {MAX_REPEATED} entries")
            if field.kind in _NUMBER_KINDS:
                if wire == _LENGTH and field.repeated:  # packed: each value is an entry
                    counts[number] -= 1
                    first, pos = _length(data, pos, end, at)
                    pos = self._packed(first, pos, field, at, out, counts, number)
                    continue
                if wire != _VARINT:
                    raise ProtobufError(f"{at}: wire type {wire}, expected {_VARINT}")
                raw, pos = _varint(data, pos, end, at)
                self._put(out, field, self._number(raw, field, at))
                continue
            if field.kind not in _LENGTH_KINDS or wire != _LENGTH:
                raise ProtobufError(f"{at}: wire type {wire}, expected {_LENGTH}")
            first, pos = _length(data, pos, end, at)
            self._length_field(first, pos, field, at, depth, out)
        return out

    def _packed(
        self,
        start: int,
        end: int,
        field: _Field,
        at: str,
        out: dict[str, Any],
        counts: dict[int, int],
        number: int,
    ) -> int:
        pos = start
        while pos < end:
            raw, pos = _varint(self.data, pos, end, at)
            self._put(out, field, self._number(raw, field, at))
            counts[number] += 1
            if counts[number] > MAX_REPEATED:
                raise ProtobufError(f"{at}: more than {MAX_REPEATED} entries")
        return end

    @staticmethod
    def _number(raw: int, field: _Field, at: str) -> bool | int:
        if field.kind == _BOOL:
            return raw != 0
        value = _signed(raw)
        if field.kind == _INT32 and value not in _INT32_RANGE:
            raise ProtobufError(f"{at}: {value} does not fit in int32")
        return value

    @staticmethod
    def _put(out: dict[str, Any], field: _Field, value: Any) -> None:
        if field.repeated:
            out.setdefault(field.name, []).append(value)
        elif field.omitempty and not value:
            out.pop(field.name, None)  # a later zero value wins over an earlier one, as in Go
        else:
            out[field.name] = value

    def _length_field(
        self, start: int, end: int, field: _Field, at: str, depth: int, out: dict[str, Any]
    ) -> None:
        kind = field.kind
        if kind == _STRING:
            self._put(out, field, _text(self.data, start, end, at))
        elif kind == _BYTES:
            out[field.name] = self.data[start:end]
        elif kind == _MESSAGE:
            assert field.fields is not None
            if field.repeated:
                out.setdefault(field.name, []).append(
                    self.message(start, end, field.fields, at, depth + 1, {})
                )
            else:
                previous = out.get(field.name)
                target = previous if isinstance(previous, dict) else {}
                out[field.name] = self.message(start, end, field.fields, at, depth + 1, target)
        elif kind == _INLINE:
            assert field.fields is not None
            self.message(start, end, field.fields, at, depth + 1, out)
        elif kind == _OPAQUE:
            if depth + 1 > self.max_depth:
                raise ProtobufError(f"{at}: nested more than {self.max_depth} deep")
            out.setdefault(field.name, {})
        elif kind == _QUANTITY:
            quantity = self._quantity(start, end, at, depth + 1)
            if quantity is not None or field.name not in out:
                out[field.name] = quantity if quantity is not None else "0"
        elif kind == _TIME:
            when = self._timestamp(start, end, at, depth + 1)
            if when is None:
                out.pop(field.name, None)
            else:
                out[field.name] = when
        else:  # a map entry
            key, value = self._entry(start, end, kind, at, depth + 1)
            out.setdefault(field.name, {})[key] = value

    def _entry(self, start: int, end: int, kind: str, at: str, depth: int) -> tuple[str, str]:
        """One entry of a map field: its key, and its value (a string, or a quantity's)."""
        if depth > self.max_depth:
            raise ProtobufError(f"{at}: nested more than {self.max_depth} deep")
        data = self.data
        key, value = "", None
        pos = start
        while pos < end:
            tag, pos = _varint(data, pos, end, at)
            number, wire = tag >> 3, tag & 7
            if number not in (1, 2):
                if number == 0:
                    raise ProtobufError(f"{at}: invalid field number 0")
                pos = _skip(data, pos, end, wire, at)
                continue
            if wire != _LENGTH:
                raise ProtobufError(f"{at}: wire type {wire}, expected {_LENGTH}")
            first, pos = _length(data, pos, end, at)
            if number == 1:
                key = _text(data, first, pos, f"{at} key")
            elif kind == _STRING_MAP:
                value = _text(data, first, pos, f"{at}[{key}]")
            else:
                value = self._quantity(first, pos, f"{at}[{key}]", depth + 1) or value
        return key, value if value is not None else ("" if kind == _STRING_MAP else "0")

    def _quantity(self, start: int, end: int, at: str, depth: int) -> str | None:
        """A ``resource.Quantity`` message's string (None when it has none)."""
        if depth > self.max_depth:
            raise ProtobufError(f"{at}: nested more than {self.max_depth} deep")
        text = self.message(start, end, _QUANTITY_FIELDS, at, depth, {}).get("string")
        return text if isinstance(text, str) else None

    def _timestamp(self, start: int, end: int, at: str, depth: int) -> str | None:
        """A ``Time`` as its JSON form (seconds; the nanoseconds are dropped, as Go does);
        None for an empty message, Go's zero time."""
        if start == end:
            return None
        fields = self.message(start, end, _TIMESTAMP_FIELDS, at, depth, {})
        return _time(int(fields.get("seconds", 0)), at)


_QUANTITY_FIELDS: _Schema = {1: _str("string")}
_TIMESTAMP_FIELDS: _Schema = {1: _int64("seconds"), 2: _int32("nanos")}


# ------------------------------------------------------------------------------- the API


def decode(body: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The v1 Pod in a Kubernetes protobuf body, as the dict its JSON form would give.

    Raises:
        ProtobufError: the body is not one (see the module's docstring for every check).
    """
    if len(body) > MAX_BODY:
        raise ProtobufError(f"the body is larger than {MAX_BODY} bytes")
    body = bytes(body)
    if not body.startswith(MAGIC):
        raise ProtobufError(r"not a Kubernetes protobuf object (no k8s\x00 prefix)")
    if len(body) == len(MAGIC):
        raise ProtobufError("empty body")
    decoder = _Decoder(body, max_depth)
    unknown = decoder.message(len(MAGIC), len(body), _UNKNOWN, "", 1, {})
    if unknown.get("contentEncoding"):
        raise ProtobufError(f"contentEncoding {unknown['contentEncoding'][:80]!r} is not supported")
    if unknown.get("contentType", CONTENT_TYPE) != CONTENT_TYPE:
        raise ProtobufError(f"contentType {unknown['contentType'][:80]!r} is not protobuf")
    type_meta = unknown.get("typeMeta", {})
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if api_version not in ("", "v1") or kind not in ("", "Pod"):
        raise ProtobufError(
            f"only a v1 Pod can be decoded from protobuf, not {api_version[:80]} {kind[:80]}"
        )
    out: dict[str, Any] = {}
    if api_version:
        out["apiVersion"] = api_version
    if kind:
        out["kind"] = kind
    raw: bytes = unknown.get("raw", b"")
    return out | _Decoder(raw, max_depth).message(0, len(raw), _POD, "", 2, {})


def decode_pod(raw: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """A bare ``v1.Pod`` message (no envelope) as the dict of its JSON form, without
    ``apiVersion`` and ``kind``."""
    if len(raw) > MAX_BODY:
        raise ProtobufError(f"the body is larger than {MAX_BODY} bytes")
    raw = bytes(raw)
    return _Decoder(raw, max_depth).message(0, len(raw), _POD, "", 1, {})


__all__ = [
    "CONTENT_TYPE",
    "MAGIC",
    "MAX_BODY",
    "MAX_DEPTH",
    "MAX_REPEATED",
    "ProtobufError",
    "decode",
    "decode_pod",
]
