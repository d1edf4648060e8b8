"""Label and field selectors as the apiserver takes them in list and watch queries (no I/O).

Label selectors: the equality forms ``k=v``, ``k==v``, ``k!=v``, ``k`` and ``!k``, joined by
commas (set-based ``in``/``notin`` are not served). Field selectors: ``f=v``, ``f==v`` and
``f!=v`` on the fields a resource names; any other field is the apiserver's
``field label not supported``. docs/api.md lists the fields of each resource.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .errors import RequestError


class UnsupportedField(RequestError, ValueError):
    """A field selector on a field the resource does not select by (the apiserver's 400)."""

    def __init__(self, field: str) -> None:
        super().__init__(f'field label not supported: "{field}"')
        self.field = field


FieldTerms = list[tuple[str, str, bool]]


def matches_labels(labels: Mapping[str, str], selector: str) -> bool:
    """Whether ``labels`` satisfy every term of ``selector``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, _, v = term.partition("!=")
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, _, v = term.replace("==", "=").partition("=")
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def parse_field_selector(selector: str, known: Collection[str]) -> FieldTerms:
    """``selector``'s terms as ``(field, value, negated)``; :class:`UnsupportedField` for a
    field not in ``known``."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, _, value = term.partition("!=" if negate else "==" if "==" in term else "=")
        key = key.strip()
        if key not in known:
            raise UnsupportedField(key)
        terms.append((key, value.strip(), negate))
    return terms


def fields_match(fields: Mapping[str, str], terms: FieldTerms) -> bool:
    """Whether an object with these field values satisfies every term."""
    return all((fields.get(k, "") == v) != negate for k, v, negate in terms)
