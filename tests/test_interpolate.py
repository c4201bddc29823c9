"""Tests for ollama_magic.interpolate."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_magic.interpolate import interpolate, references


class BadStr:
    """str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class BadGetattr:
    """Attribute access raises something that is not AttributeError."""

    def __getattr__(self, name: str) -> Any:
        raise ValueError(name)

    def __str__(self) -> str:
        return "bad-getattr"


class BadGetitem:
    def __getitem__(self, key: Any) -> Any:
        raise ZeroDivisionError(key)

    def __str__(self) -> str:
        return "bad-getitem"


class Everything:
    """Every hook raises; even type(obj) lookups would be the only safe thing."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)

    def __getitem__(self, key: Any) -> Any:
        raise RuntimeError(key)

    def __str__(self) -> str:
        raise RecursionError("deep")

    def __repr__(self) -> str:
        raise RuntimeError("repr")


class StrSubclass(str):
    def __str__(self) -> str:
        raise RuntimeError("subclass str")


class ReturnsStrSubclass:
    def __str__(self) -> str:
        return StrSubclass("sub")


class HostileMapping(Mapping[str, Any]):
    """A namespace whose lookups themselves explode."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        raise RuntimeError("len")


df = SimpleNamespace(columns=["alpha", "beta"], shape=(3, 2))

NS: dict[str, Any] = {
    "name": "Ada",
    "n": 42,
    "a": "A",
    "b": "B",
    "obj": SimpleNamespace(attr="value", inner=SimpleNamespace(deep="deeper")),
    "items": [10, 20, 30],
    "d": {"key": "v1", "other key": "v2", "a.b]": "odd", 1: "int-key"},
    "df": df,
    "In": ["", "x = 1", "y = 2", "print(x)"],
    "Out": {2: "two", 3: [1, 2]},
    "_": "last",
    "_3": "third",
    "_private": "priv",
    "bad_str": BadStr(),
    "bad_getattr": BadGetattr(),
    "bad_getitem": BadGetitem(),
    "everything": Everything(),
    "sub": ReturnsStrSubclass(),
    "braces": "{name}",
    "café": "coffee",
    "名前": "namae",
    "x": 1,
    "y": [1, 2],
}

CASES: list[tuple[str, str, str]] = [
    # (id, input, expected)
    ("plain-name", "Hello {name}!", "Hello Ada!"),
    ("int-value", "n={n}", "n=42"),
    ("attribute", "{obj.attr}", "value"),
    ("attribute-chain", "{obj.inner.deep}", "deeper"),
    ("index-int", "{items[0]}", "10"),
    ("index-negative", "{items[-1]}", "30"),
    ("index-str-double", '{d["key"]}', "v1"),
    ("index-str-single", "{d['other key']}", "v2"),
    ("index-str-with-punct", '{d["a.b]"]}', "odd"),
    ("index-int-on-dict", "{d[1]}", "int-key"),
    ("chain-attr-index", "{df.columns[0]}", "alpha"),
    ("chain-index-index", "{Out[3][1]}", "2"),
    ("ipython-In", "{In[3]}", "print(x)"),
    ("ipython-Out", "{Out[2]}", "two"),
    ("ipython-underscore", "{_}", "last"),
    ("ipython-underscore-n", "{_3}", "third"),
    ("private-bare-name", "{_private}", "priv"),
    ("escape", "{{name}}", "{name}"),
    ("escape-chain", "{{df.columns[0]}}", "{df.columns[0]}"),
    ("escape-unknown", "{{nope}}", "{nope}"),
    ("escape-empty", "{{}}", "{{}}"),
    ("empty", "{}", "{}"),
    ("json-flat", '{"a": 1}', '{"a": 1}'),
    ("json-nested", '{"a": {"b": 1}}', '{"a": {"b": 1}}'),
    ("json-nested-deep", '{"a": {"b": {"c": [1, {}]}}}', '{"a": {"b": {"c": [1, {}]}}}'),
    ("json-with-ref", '{"k": "{name}"}', '{"k": "Ada"}'),
    ("json-nested-ref", '{"a": {"b": "{n}"}}', '{"a": {"b": "42"}}'),
    ("fstring-spec", 'f"{x!r:>10}"', 'f"{x!r:>10}"'),
    ("fstring-format", 'f"{x:>10}"', 'f"{x:>10}"'),
    ("fstring-conversion", 'f"{x!s}"', 'f"1"'),
    ("conversion-repr", '{name!r}', "'Ada'"),
    ("conversion-other", '{name!a}', '{name!a}'),
    ("escape-conversion", '{{name!r}}', '{name!r}'),
    ("dict-comp", "def f(): return {x: 1 for x in y}", "def f(): return {x: 1 for x in y}"),
    ("set-comp", "{x for x in y}", "{x for x in y}"),
    ("set-literal", "{1, 2}", "{1, 2}"),
    ("unknown-name", "{nope}", "{nope}"),
    ("attribute-error", "{obj.missing}", "{obj.missing}"),
    ("index-error", "{items[10]}", "{items[10]}"),
    ("key-error", '{d["missing"]}', '{d["missing"]}'),
    ("type-error-index", "{n[0]}", "{n[0]}"),
    ("str-raises", "x {bad_str} y", "x {bad_str} y"),
    ("getattr-raises-valueerror", "{bad_getattr.foo}", "{bad_getattr.foo}"),
    ("getattr-object-itself-ok", "{bad_getattr}", "bad-getattr"),
    ("getitem-raises", "{bad_getitem[0]}", "{bad_getitem[0]}"),
    ("everything-raises", "{everything} {everything.a} {everything[0]}",
     "{everything} {everything.a} {everything[0]}"),
    ("str-returns-subclass", "{sub}", "sub"),
    ("dunder-refused", "{obj.__class__}", "{obj.__class__}"),
    ("private-attr-refused", "{obj._x}", "{obj._x}"),
    ("dunder-in-chain-refused", "{df.columns.__len__}", "{df.columns.__len__}"),
    ("whitespace-inside", "{ name }", "{ name }"),
    ("whitespace-left", "{ name}", "{ name}"),
    ("whitespace-in-chain", "{obj. attr}", "{obj. attr}"),
    ("multiline", "line1 {name}\nline2 {n}\n{nope}\n", "line1 Ada\nline2 42\n{nope}\n"),
    ("adjacent", "{a}{b}", "AB"),
    ("adjacent-three", "{a}{b}{a}", "ABA"),
    ("unicode-name", "{café} {名前}", "coffee namae"),
    ("expression", "{a+b}", "{a+b}"),
    ("call", "{f()}", "{f()}"),
    ("method-call", "{name.upper()}", "{name.upper()}"),
    ("expression-index", "{items[n]}", "{items[n]}"),
    ("slice", "{items[0:2]}", "{items[0:2]}"),
    ("leading-zero-index", "{items[01]}", "{items[01]}"),
    ("escaped-string-key", r'{d["k\"ey"]}', r'{d["k\"ey"]}'),
    ("digit-start", "{3x}", "{3x}"),
    ("value-not-reinterpolated", "{braces}", "{name}"),
    ("unbalanced-open", "{name", "{name"),
    ("unbalanced-close", "name}", "name}"),
    ("lonely-brace-before-ref", "{{name}", "{Ada"),
    ("lonely-brace-after-ref", "{name}}", "Ada}"),
    ("triple-braces", "{{{name}}}", "{{name}}"),
    ("no-braces", "just text", "just text"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(text: str, expected: str) -> None:
    result = interpolate(text, NS)
    assert result == expected
    assert type(result) is str


def test_case_ids_unique() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


def test_hostile_namespace_mapping() -> None:
    text = "{a} {b.c} {{a}} {}"
    assert interpolate(text, HostileMapping()) == "{a} {b.c} {a} {}"


def test_huge_int_index_left_as_written() -> None:
    # int() refuses > 4300 digits by default; that must not escape.
    text = "{items[" + "9" * 5000 + "]}"
    assert interpolate(text, NS) == text


def test_no_brace_returns_same_object() -> None:
    text = "no braces here " * 10
    assert interpolate(text, NS) is text


def test_references() -> None:
    text = '{name} {{escaped}} {df.columns[0]} {"json": 1} {nope} {a+b} {d["k"]}'
    assert references(text) == ["name", "df.columns[0]", "nope", 'd["k"]']
    assert references("plain") == []


# --- performance / pathological inputs -------------------------------------


def _timed(text: str) -> float:
    start = time.perf_counter()
    interpolate(text, NS)
    return time.perf_counter() - start


def test_megabyte_without_braces_is_fast() -> None:
    text = "lorem ipsum dolor sit amet " * 40_000  # ~1 MB
    assert _timed(text) < 0.05


@pytest.mark.parametrize(
    "text",
    [
        "{" * 100_000,
        "}" * 100_000,
        "{a" + ".b" * 50_000,
        "{{a" + ".b" * 50_000 + "}",
        "{a" * 50_000,
        "{a[" + "1" * 100_000,
        "{a['" + "x" * 100_000,
        '{a["' * 30_000,
        "{a['{a[\"" * 15_000,
        "{a" + "[0]" * 40_000,
        "{" + "a" * 100_000,
        '{"a": {"b": 1}} ' * 20_000,
        "{name} " * 50_000,
    ],
    ids=lambda t: repr(t[:12]),
)
def test_pathological_inputs_are_linear(text: str) -> None:
    assert _timed(text) < 0.5


# --- property-based ---------------------------------------------------------

# Text biased towards the characters that matter, plus arbitrary unicode.
_interesting = st.sampled_from(list("{}[]().'\"_-0123456789 \n!:abxyzé名"))
_texts = st.text(alphabet=st.one_of(_interesting, st.characters()), max_size=200)


@settings(max_examples=300, deadline=None)
@given(_texts)
def test_empty_namespace_is_identity_except_escapes(text: str) -> None:
    # With nothing to resolve, only the {{ref}} escape can change the text.
    if "{{" not in text:
        assert interpolate(text, {}) == text
    # Break every "{{" so no escape can form; then the text must round-trip.
    no_escapes = re.sub(r"\{(?=\{)", "{ ", text)
    assert interpolate(no_escapes, {}) == no_escapes


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="{"), max_size=200))
def test_text_without_open_brace_unchanged(text: str) -> None:
    assert interpolate(text, NS) == text
    assert references(text) == []


_hostile_values = st.sampled_from(
    [BadStr(), BadGetattr(), BadGetitem(), Everything(), ReturnsStrSubclass(),
     None, 0, "s", [1, 2], {"k": Everything()}, SimpleNamespace(a=Everything())]
)
_names = st.sampled_from(["a", "b", "x", "_", "_1", "In", "Out", "é"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            _texts,
            _names.map(lambda n: "{" + n + "}"),
            st.tuples(_names, st.sampled_from([".a", "[0]", "[-1]", "['k']", '["k"]', ".__class__"]))
            .map(lambda t: "{" + t[0] + t[1] + "}"),
        ),
        max_size=8,
    ).map("".join),
    st.dictionaries(_names, _hostile_values, max_size=5),
)
def test_never_raises_with_hostile_namespace(text: str, namespace: dict[str, Any]) -> None:
    result = interpolate(text, namespace)
    assert type(result) is str
    for ref in references(text):
        assert isinstance(ref, str)
