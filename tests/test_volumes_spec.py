"""The volume part of the pod model: spec.volumes and volumeMounts, parsed and validated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.pods import (
    EMPTY_DIR,
    HOST_PATH,
    HOST_PATH_TYPES,
    LABEL_MANIFEST,
    MAX_PATH,
    MAX_VOLUME_MOUNTS,
    MAX_VOLUMES,
    SHOWN,
    ContainerSpec,
    InvalidPod,
    PodSpec,
    Volume,
    VolumeMount,
    parse_pod,
    pod_from_labels,
)

SOURCES = '"emptyDir", "hostPath"'
HOST_TYPES = (
    '"", "BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File", '
    '"FileOrCreate", "Socket"'
)


def pod(volumes: Any = None, mounts: Any = None, **container: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "a", "image": "img:1", **container}
    if mounts is not None:
        c["volumeMounts"] = mounts
    spec: dict[str, Any] = {"containers": [c]}
    if volumes is not None:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def causes_of(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidPod) as info:
        parse_pod(doc)
    return info.value.causes


def round_trip(spec: PodSpec) -> PodSpec:
    return pod_from_labels(spec.sandbox_labels())


# --------------------------------------------------------------------------------------------
# Valid pods


def test_volumes_and_mounts_are_parsed() -> None:
    doc = pod(
        [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "host", "hostPath": {"path": "/srv/data", "type": "DirectoryOrCreate"}},
            {"name": "plain", "hostPath": {"path": "/etc/hosts"}},
        ],
        [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "cache", "mountPath": "/cache", "readOnly": True},
            {"name": "host", "mountPath": "/data", "subPath": "a/b"},
            {"name": "host", "mountPath": "/data2", "readOnly": False},
        ],
    )
    spec = parse_pod(doc)
    assert spec.volumes == (
        Volume("scratch", EMPTY_DIR),
        Volume("cache", EMPTY_DIR, medium="Memory", size_limit="64Mi"),
        Volume("host", HOST_PATH, path="/srv/data", host_path_type="DirectoryOrCreate"),
        Volume("plain", HOST_PATH, path="/etc/hosts"),
    )
    assert spec.containers[0].volume_mounts == (
        VolumeMount("scratch", "/scratch"),
        VolumeMount("cache", "/cache", read_only=True),
        VolumeMount("host", "/data", sub_path="a/b"),
        VolumeMount("host", "/data2"),
    )
    assert spec.volume("cache") == Volume("cache", EMPTY_DIR, "Memory", "64Mi")
    assert spec.volume("missing") is None
    assert spec.manifest["spec"]["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "host", "hostPath": {"path": "/srv/data", "type": "DirectoryOrCreate"}},
        {"name": "plain", "hostPath": {"path": "/etc/hosts"}},
    ]
    assert spec.manifest["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "cache", "mountPath": "/cache", "readOnly": True},
        {"name": "host", "mountPath": "/data", "subPath": "a/b"},
        {"name": "host", "mountPath": "/data2"},
    ]
    assert round_trip(spec) == spec


def test_defaults_keep_constructors_valid() -> None:
    c = ContainerSpec("a", "img")
    assert c.volume_mounts == ()
    p = PodSpec("p", "default", "uid", (c,))
    assert p.volumes == () and p.volume("x") is None
    assert HOST_PATH_TYPES[0] == "" and len(HOST_PATH_TYPES) == 8


def test_every_host_path_type_and_null_fields_are_accepted() -> None:
    volumes: list[Any] = [
        {"name": f"v{i}", "hostPath": {"path": f"/p{i}", "type": t}}
        for i, t in enumerate(HOST_PATH_TYPES)
    ]
    volumes.append({"name": "n", "hostPath": {"path": "/n", "type": None}, "configMap": None})
    volumes.append({"name": "e", "emptyDir": {"medium": None, "sizeLimit": None}})
    spec = parse_pod(pod(volumes))
    assert [v.host_path_type for v in spec.volumes[: len(HOST_PATH_TYPES)]] == list(HOST_PATH_TYPES)
    assert spec.volume("n") == Volume("n", HOST_PATH, path="/n")
    assert spec.volume("e") == Volume("e", EMPTY_DIR)
    assert round_trip(spec) == spec


@pytest.mark.parametrize(
    ("given_limit", "kept"),
    [("1Gi", "1Gi"), ("500M", "500M"), ("0", "0"), ("1.5e3", "1.5e3"), (1024, "1024")],
)
def test_size_limit_is_kept_as_given(given_limit: Any, kept: str) -> None:
    spec = parse_pod(pod([{"name": "v", "emptyDir": {"sizeLimit": given_limit}}]))
    assert spec.volumes[0].size_limit == kept
    assert round_trip(spec) == spec


def test_mount_paths_equal_once_normalised_are_duplicates_but_distinct_ones_are_not() -> None:
    spec = parse_pod(
        pod(
            [{"name": "v", "emptyDir": {}}],
            [
                {"name": "v", "mountPath": "/data"},
                {"name": "v", "mountPath": "/data/sub"},
                {"name": "v", "mountPath": "/database"},
            ],
        )
    )
    assert [m.mount_path for m in spec.containers[0].volume_mounts] == [
        "/data",
        "/data/sub",
        "/database",
    ]
    # The same path in another container is fine.
    doc = pod([{"name": "v", "emptyDir": {}}], [{"name": "v", "mountPath": "/data"}])
    doc["spec"]["containers"].append(
        {"name": "b", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/data/"}]}
    )
    parse_pod(doc)


def test_a_pod_without_volumes_keeps_its_exact_stored_manifest() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": {"app": "x"},
            "annotations": {"a": "b"},
        },
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "img:1",
                    "command": ["sh"],
                    "args": ["-c", "echo"],
                    "env": [{"name": "X", "value": "1"}],
                    "workingDir": "/w",
                    "tty": True,
                    "stdin": True,
                    "ports": [{"containerPort": 80, "name": "http"}],
                },
                {"name": "b", "image": "img:2"},
            ],
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 5,
        },
    }
    # What the model stored before volumes existed, byte for byte.
    expected = (
        '{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{"a":"b"},"labels":'
        '{"app":"x"},"name":"p","namespace":"ns"},"spec":{"containers":[{"args":["-c","echo"],'
        '"command":["sh"],"env":[{"name":"X","value":"1"}],"image":"img:1","name":"a","ports":'
        '[{"containerPort":80,"name":"http","protocol":"TCP"}],"stdin":true,"tty":true,'
        '"workingDir":"/w"},{"image":"img:2","name":"b"}],"hostNetwork":true,'
        '"terminationGracePeriodSeconds":5}}'
    )
    spec = parse_pod(doc)
    assert spec.sandbox_labels()[LABEL_MANIFEST] == expected
    assert spec.volumes == () and spec.containers[0].volume_mounts == ()
    # Empty lists are no volumes either: nothing is stored for them.
    doc["spec"]["volumes"] = []
    doc["spec"]["containers"][0]["volumeMounts"] = []
    assert parse_pod(doc).sandbox_labels()[LABEL_MANIFEST] == expected


# --------------------------------------------------------------------------------------------
# spec.volumes errors


@pytest.mark.parametrize(
    ("volumes", "cause"),
    [
        ("x", ("spec.volumes", "Invalid value: must be a list")),
        (["x"], ("spec.volumes[0]", "Invalid value: must be an object")),
        ([{"emptyDir": {}}], ("spec.volumes[0].name", "Required value")),
        ([{"name": "", "emptyDir": {}}], ("spec.volumes[0].name", "Required value")),
        (
            [{"name": "Bad_Name", "emptyDir": {}}],
            ("spec.volumes[0].name", 'Invalid value: "Bad_Name": must be a DNS-1123 label'),
        ),
        (
            [{"name": "a" * 64, "emptyDir": {}}],
            ("spec.volumes[0].name", f'Invalid value: "{"a" * 64}": must be a DNS-1123 label'),
        ),
        (
            [{"name": "v\n", "emptyDir": {}}],
            ("spec.volumes[0].name", 'Invalid value: "v\\n": must be a DNS-1123 label'),
        ),
        (
            [{"name": 7, "emptyDir": {}}],
            ("spec.volumes[0].name", "Invalid value: 7: must be a DNS-1123 label"),
        ),
        (
            [{"name": "v", "emptyDir": {}}, {"name": "v", "hostPath": {"path": "/x"}}],
            ("spec.volumes[1].name", 'Duplicate value: "v"'),
        ),
        ([{"name": "v"}], ("spec.volumes[0]", "Required value: must specify a volume type")),
        (
            [{"name": "v", "emptyDir": None}],
            ("spec.volumes[0]", "Required value: must specify a volume type"),
        ),
        (
            [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}],
            ("spec.volumes[0].hostPath", "Forbidden: may not specify more than 1 volume type"),
        ),
        (
            [{"name": "v", "emptyDir": []}],
            ("spec.volumes[0].emptyDir", "Invalid value: must be an object"),
        ),
        (
            [{"name": "v", "emptyDir": {"medium": "HugePages"}}],
            (
                "spec.volumes[0].emptyDir.medium",
                'Unsupported value: "HugePages": supported values: "", "Memory"',
            ),
        ),
        (
            [{"name": "v", "emptyDir": {"medium": 1}}],
            (
                "spec.volumes[0].emptyDir.medium",
                'Unsupported value: 1: supported values: "", "Memory"',
            ),
        ),
        (
            [{"name": "v", "hostPath": "/x"}],
            ("spec.volumes[0].hostPath", "Invalid value: must be an object"),
        ),
        ([{"name": "v", "hostPath": {}}], ("spec.volumes[0].hostPath.path", "Required value")),
        (
            [{"name": "v", "hostPath": {"path": ""}}],
            ("spec.volumes[0].hostPath.path", "Required value"),
        ),
        (
            [{"name": "v", "hostPath": {"path": 3}}],
            ("spec.volumes[0].hostPath.path", "Invalid value: 3: must be a string"),
        ),
        (
            [{"name": "v", "hostPath": {"path": "data"}}],
            (
                "spec.volumes[0].hostPath.path",
                'Invalid value: "data": must be an absolute path: '
                "the runtime mounts it from this host",
            ),
        ),
        (
            [{"name": "v", "hostPath": {"path": "/srv/../etc"}}],
            (
                "spec.volumes[0].hostPath.path",
                "Invalid value: \"/srv/../etc\": must not contain '..'",
            ),
        ),
        (
            [{"name": "v", "hostPath": {"path": "/" + "a" * MAX_PATH}}],
            (
                "spec.volumes[0].hostPath.path",
                f"Too long: must have at most {MAX_PATH} characters",
            ),
        ),
        (
            [{"name": "v", "hostPath": {"path": "/x", "type": "Dir"}}],
            (
                "spec.volumes[0].hostPath.type",
                f'Unsupported value: "Dir": supported values: {HOST_TYPES}',
            ),
        ),
        (
            [{"name": "v", "configMap": {"name": "cm"}}],
            (
                "spec.volumes[0].configMap",
                f'Unsupported value: "configMap": supported volume types: {SOURCES}',
            ),
        ),
        (
            [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}],
            (
                "spec.volumes[0].persistentVolumeClaim",
                f'Unsupported value: "persistentVolumeClaim": supported volume types: {SOURCES}',
            ),
        ),
    ],
)
def test_volume_errors(volumes: Any, cause: tuple[str, str]) -> None:
    assert cause in causes_of(pod(volumes))


@pytest.mark.parametrize(
    "source", ["secret", "projected", "downwardAPI", "nfs", "ephemeral", "csi", "gitRepo"]
)
def test_every_unserved_source_is_named_alone(source: str) -> None:
    causes = causes_of(pod([{"name": "v", source: {}}]))
    assert causes == [
        (
            f"spec.volumes[0].{source}",
            f'Unsupported value: "{source}": supported volume types: {SOURCES}',
        )
    ]


def test_unserved_sources_beside_a_served_one_are_each_refused() -> None:
    causes = causes_of(pod([{"name": "v", "emptyDir": {}, "secret": {}, "nfs": {}}]))
    assert causes == [
        (
            "spec.volumes[0].secret",
            f'Unsupported value: "secret": supported volume types: {SOURCES}',
        ),
        ("spec.volumes[0].nfs", f'Unsupported value: "nfs": supported volume types: {SOURCES}'),
    ]


@pytest.mark.parametrize(
    "limit", ["abc", "-1Gi", "", "1GiB", "1 Gi", "١", True, [], "9" * 65, 10**200, float("nan")]
)
def test_bad_size_limits_are_refused(limit: Any) -> None:
    causes = causes_of(pod([{"name": "v", "emptyDir": {"sizeLimit": limit}}]))
    assert len(causes) == 1
    where, message = causes[0]
    assert where == "spec.volumes[0].emptyDir.sizeLimit"
    assert message.startswith("Invalid value: ")
    assert message.endswith(": must be a non-negative quantity, e.g. 64Mi")
    assert len(message) <= SHOWN + 80


def test_a_pod_with_too_many_volumes_is_refused_without_reading_them() -> None:
    volumes = [{"name": "v"}] * (MAX_VOLUMES + 1)
    assert causes_of(pod(volumes)) == [
        (
            "spec.volumes",
            f"Too many: {MAX_VOLUMES + 1}: must have at most {MAX_VOLUMES} items",
        )
    ]
    # Exactly the bound is fine.
    ok = [{"name": f"v{i}", "emptyDir": {}} for i in range(MAX_VOLUMES)]
    assert len(parse_pod(pod(ok)).volumes) == MAX_VOLUMES


def test_a_huge_bad_value_is_cut_in_the_message() -> None:
    name = "X" * 10_000
    key = "k" * 10_000
    causes = causes_of(pod([{"name": name, key: {}}]))
    assert len(causes) == 2
    for where, message in causes:
        assert len(where) <= len("spec.volumes[0].") + SHOWN
        assert len(message) <= SHOWN + 80


# --------------------------------------------------------------------------------------------
# volumeMounts errors

VOL = [{"name": "v", "emptyDir": {}}]
M = "spec.containers[0].volumeMounts"


@pytest.mark.parametrize(
    ("mounts", "cause"),
    [
        ({"name": "v"}, (M, "Invalid value: must be a list")),
        ([3], (f"{M}[0]", "Invalid value: must be an object")),
        ([{"mountPath": "/d"}], (f"{M}[0].name", "Required value")),
        ([{"name": 5, "mountPath": "/d"}], (f"{M}[0].name", "Invalid value: 5: must be a string")),
        ([{"name": "x", "mountPath": "/d"}], (f"{M}[0].name", 'Not found: "x"')),
        ([{"name": "v"}], (f"{M}[0].mountPath", "Required value")),
        ([{"name": "v", "mountPath": ""}], (f"{M}[0].mountPath", "Required value")),
        (
            [{"name": "v", "mountPath": ["/d"]}],
            (f"{M}[0].mountPath", "Invalid value: ['/d']: must be a string"),
        ),
        (
            [{"name": "v", "mountPath": "data"}],
            (f"{M}[0].mountPath", 'Invalid value: "data": must be an absolute path'),
        ),
        (
            [{"name": "v", "mountPath": "/a/../etc"}],
            (f"{M}[0].mountPath", "Invalid value: \"/a/../etc\": must not contain '..'"),
        ),
        (
            [{"name": "v", "mountPath": "//./"}],
            (f"{M}[0].mountPath", 'Invalid value: "//./": must not be the root directory'),
        ),
        (
            [{"name": "v", "mountPath": "/" + "d" * MAX_PATH}],
            (f"{M}[0].mountPath", f"Too long: must have at most {MAX_PATH} characters"),
        ),
        (
            [{"name": "v", "mountPath": "/data"}, {"name": "v", "mountPath": "/data"}],
            (f"{M}[1].mountPath", 'Invalid value: "/data": must be unique'),
        ),
        (
            [{"name": "v", "mountPath": "/data"}, {"name": "v", "mountPath": "/data/"}],
            (f"{M}[1].mountPath", 'Invalid value: "/data/": must be unique'),
        ),
        (
            [{"name": "v", "mountPath": "/data/"}, {"name": "v", "mountPath": "//data/."}],
            (f"{M}[1].mountPath", 'Invalid value: "//data/.": must be unique'),
        ),
        (
            [{"name": "v", "mountPath": "/d", "readOnly": "yes"}],
            (f"{M}[0].readOnly", "Invalid value: 'yes': must be a boolean"),
        ),
        (
            [{"name": "v", "mountPath": "/d", "subPath": "/x"}],
            (f"{M}[0].subPath", 'Invalid value: "/x": must be a relative path'),
        ),
        (
            [{"name": "v", "mountPath": "/d", "subPath": "a/../../b"}],
            (f"{M}[0].subPath", "Invalid value: \"a/../../b\": must not contain '..'"),
        ),
        (
            [{"name": "v", "mountPath": "/d", "subPath": ".."}],
            (f"{M}[0].subPath", "Invalid value: \"..\": must not contain '..'"),
        ),
        (
            [{"name": "v", "mountPath": "/d", "subPath": 1}],
            (f"{M}[0].subPath", "Invalid value: 1: must be a string"),
        ),
        (
            [{"name": "v", "mountPath": "/d", "mountPropagation": "HostToContainer"}],
            (
                f"{M}[0].mountPropagation",
                'Unsupported value: "HostToContainer": mountPropagation is not served',
            ),
        ),
        (
            [{"name": "v", "mountPath": "/d", "subPathExpr": "$(POD_NAME)"}],
            (f"{M}[0].subPathExpr", 'Unsupported value: "$(POD_NAME)": subPathExpr is not served'),
        ),
        (
            [{"name": "v", "mountPath": "/d", "recursiveReadOnly": "Enabled"}],
            (
                f"{M}[0].recursiveReadOnly",
                'Unsupported value: "Enabled": recursiveReadOnly is not served',
            ),
        ),
    ],
)
def test_mount_errors(mounts: Any, cause: tuple[str, str]) -> None:
    assert cause in causes_of(pod(VOL, mounts))


def test_an_absolute_sub_path_with_backsteps_gets_both_causes() -> None:
    causes = causes_of(pod(VOL, [{"name": "v", "mountPath": "/d", "subPath": "/a/.."}]))
    assert causes == [
        (f"{M}[0].subPath", 'Invalid value: "/a/..": must be a relative path'),
        (f"{M}[0].subPath", "Invalid value: \"/a/..\": must not contain '..'"),
    ]


def test_a_relative_host_path_with_backsteps_gets_both_causes() -> None:
    causes = causes_of(pod([{"name": "v", "hostPath": {"path": "../x"}}]))
    assert [w for w, _ in causes] == ["spec.volumes[0].hostPath.path"] * 2
    assert "must be an absolute path" in causes[0][1]
    assert "must not contain '..'" in causes[1][1]


def test_mounts_without_volumes_are_not_found() -> None:
    assert causes_of(pod(None, [{"name": "v", "mountPath": "/d"}])) == [
        (f"{M}[0].name", 'Not found: "v"')
    ]


def test_a_mount_of_a_refused_volume_is_not_also_not_found() -> None:
    causes = causes_of(pod([{"name": "v", "secret": {}}], [{"name": "v", "mountPath": "/d"}]))
    assert causes == [
        (
            "spec.volumes[0].secret",
            f'Unsupported value: "secret": supported volume types: {SOURCES}',
        )
    ]


def test_a_refused_volume_list_does_not_make_every_mount_not_found() -> None:
    causes = causes_of(pod("nope", [{"name": "v", "mountPath": "/d"}]))
    assert causes == [("spec.volumes", "Invalid value: must be a list")]


def test_too_many_mounts_are_refused() -> None:
    mounts = [{"name": "v", "mountPath": f"/m{i}"} for i in range(MAX_VOLUME_MOUNTS + 1)]
    assert causes_of(pod(VOL, mounts)) == [
        (M, f"Too many: {MAX_VOLUME_MOUNTS + 1}: must have at most {MAX_VOLUME_MOUNTS} items")
    ]
    assert len(parse_pod(pod(VOL, mounts[:-1])).containers[0].volume_mounts) == MAX_VOLUME_MOUNTS


def test_every_problem_is_reported_at_once() -> None:
    doc = pod(
        [
            {"name": "Bad", "emptyDir": {"medium": "Disk"}},
            {"name": "h", "hostPath": {"path": "rel", "type": "Nope"}},
            {"name": "h"},
            {"name": "s", "configMap": {"name": "x"}},
        ],
        [
            {"name": "missing", "mountPath": "rel", "subPath": "/abs"},
            {"name": "h", "mountPath": "/x", "mountPropagation": "Bidirectional"},
            {"name": "h", "mountPath": "/x/"},
        ],
    )
    doc["spec"]["containers"].append(
        {"name": "b", "image": "i", "volumeMounts": [{"name": "s", "readOnly": 1}]}
    )
    causes = causes_of(doc)
    assert causes == [
        ("spec.volumes[0].name", 'Invalid value: "Bad": must be a DNS-1123 label'),
        (
            "spec.volumes[0].emptyDir.medium",
            'Unsupported value: "Disk": supported values: "", "Memory"',
        ),
        (
            "spec.volumes[1].hostPath.path",
            'Invalid value: "rel": must be an absolute path: the runtime mounts it from this host',
        ),
        (
            "spec.volumes[1].hostPath.type",
            f'Unsupported value: "Nope": supported values: {HOST_TYPES}',
        ),
        ("spec.volumes[2].name", 'Duplicate value: "h"'),
        ("spec.volumes[2]", "Required value: must specify a volume type"),
        (
            "spec.volumes[3].configMap",
            f'Unsupported value: "configMap": supported volume types: {SOURCES}',
        ),
        (f"{M}[0].name", 'Not found: "missing"'),
        (f"{M}[0].mountPath", 'Invalid value: "rel": must be an absolute path'),
        (f"{M}[0].subPath", 'Invalid value: "/abs": must be a relative path'),
        (
            f"{M}[1].mountPropagation",
            'Unsupported value: "Bidirectional": mountPropagation is not served',
        ),
        (f"{M}[2].mountPath", 'Invalid value: "/x/": must be unique'),
        ("spec.containers[1].volumeMounts[0].mountPath", "Required value"),
        ("spec.containers[1].volumeMounts[0].readOnly", "Invalid value: 1: must be a boolean"),
    ]
    with pytest.raises(InvalidPod, match=r'^Pod "p" is invalid: spec\.volumes\[0\]\.name: '):
        parse_pod(doc)


# --------------------------------------------------------------------------------------------
# Round trip of generated valid pods

_label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
_abs_path = st.lists(_segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_empty_dir = st.fixed_dictionaries(
    {},
    optional={
        "medium": st.sampled_from(["", "Memory"]),
        "sizeLimit": st.sampled_from(["64Mi", "1Gi", "500M", "0", "1.5", "2e3"]),
    },
)
_host_path = st.fixed_dictionaries(
    {"path": _abs_path}, optional={"type": st.sampled_from(HOST_PATH_TYPES)}
)
_source = st.one_of(
    _empty_dir.map(lambda s: {"emptyDir": s}), _host_path.map(lambda s: {"hostPath": s})
)


@st.composite
def _pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(_label, min_size=0, max_size=5, unique=True))
    volumes: list[dict[str, Any]] = [{"name": n, **draw(_source)} for n in names]
    containers: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 3))):
        mounts: list[dict[str, Any]] = []
        if names:
            paths = draw(st.lists(_abs_path, max_size=4, unique=True))  # normalised already
            for path in paths:
                mount: dict[str, Any] = {
                    "name": draw(st.sampled_from(names)),
                    "mountPath": path + draw(st.sampled_from(["", "/", "/."])),
                }
                if draw(st.booleans()):
                    mount["readOnly"] = draw(st.booleans())
                if draw(st.booleans()):
                    mount["subPath"] = "/".join(draw(st.lists(_segment, min_size=1, max_size=3)))
                mounts.append(mount)
        container: dict[str, Any] = {"name": f"c{i}", "image": "img"}
        if draw(st.booleans()) or mounts:  # an empty list, sometimes
            container["volumeMounts"] = mounts
        containers.append(container)
    spec: dict[str, Any] = {"containers": containers}
    if draw(st.booleans()) or volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


@settings(max_examples=200, deadline=None)
@given(_pods())
def test_generated_volumes_and_mounts_round_trip(doc: dict[str, Any]) -> None:
    spec = parse_pod(doc)
    again = round_trip(spec)
    assert again == spec
    assert again.sandbox_labels() == spec.sandbox_labels()
    raw_volumes = doc["spec"].get("volumes", [])
    assert [v.name for v in spec.volumes] == [v["name"] for v in raw_volumes]
    for raw, volume in zip(raw_volumes, spec.volumes, strict=True):
        assert spec.volume(volume.name) == volume
        if EMPTY_DIR in raw:
            assert volume.kind == EMPTY_DIR
            assert volume.medium == raw[EMPTY_DIR].get("medium", "")
            assert volume.size_limit == raw[EMPTY_DIR].get("sizeLimit")
        else:
            assert volume.kind == HOST_PATH
            assert volume.path == raw[HOST_PATH]["path"]
            assert volume.host_path_type == raw[HOST_PATH].get("type", "")
    for raw_c, c in zip(doc["spec"]["containers"], spec.containers, strict=True):
        raw_mounts = raw_c.get("volumeMounts", [])
        assert c.volume_mounts == tuple(
            VolumeMount(m["name"], m["mountPath"], m.get("readOnly", False), m.get("subPath", ""))
            for m in raw_mounts
        )
    if not raw_volumes:
        assert "volumes" not in spec.manifest["spec"]
