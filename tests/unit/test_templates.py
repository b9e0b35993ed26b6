"""smtprelay.web.templates: versions stored durably, rendered in Jinja2's sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.web.templates import (
    Rendered,
    TemplateInvalid,
    TemplateNotFound,
    TemplateRenderError,
    TemplateStore,
)


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    s = TemplateStore(tmp_path / "templates")
    s.load()
    return s


def test_versions_are_kept_across_a_new_store(store: TemplateStore, tmp_path: Path) -> None:
    assert store.put("welcome", "Hi {{ name }}", "Hello {{ name }}\n", None) == 1
    assert store.put("welcome", "Hey {{ name }}", None, "<p>{{ name }}</p>") == 2
    assert sorted(p.name for p in (tmp_path / "templates" / "welcome").iterdir()) == [
        "1.json",
        "2.json",
    ]
    again = TemplateStore(tmp_path / "templates")
    again.load()
    assert again.get("welcome").version == 2
    assert again.render("welcome", 1, {"name": "Ann"}) == Rendered("Hi Ann", "Hello Ann\n", None, 1)
    assert [t.name for t in again.listing()] == ["welcome"]
    assert again.delete("welcome") == 2
    with pytest.raises(TemplateNotFound):
        again.get("welcome")
    third = TemplateStore(tmp_path / "templates")
    third.load()
    assert third.listing() == []


def test_html_only_is_autoescaped(store: TemplateStore) -> None:
    store.put("t", "For {{ who }}", "Text {{ who }}", "<b>{{ who }}</b>")
    assert store.render("t", None, {"who": "<Tom & Jerry>"}) == Rendered(
        "For <Tom & Jerry>", "Text <Tom & Jerry>", "<b>&lt;Tom &amp; Jerry&gt;</b>", 1
    )


def test_an_undefined_variable_names_its_part_and_line(store: TemplateStore) -> None:
    store.put("t", "Hi", "line one\nline two {{ order.id }}\n", "<p>{{ 1 / n }}</p>")
    with pytest.raises(TemplateRenderError) as caught:
        store.render("t", None, {"n": 1})
    assert (caught.value.part, caught.value.line) == ("text", 2)
    assert "'order' is undefined" in caught.value.detail
    with pytest.raises(TemplateRenderError) as caught:
        store.render("t", None, {"order": {"id": 7}, "n": 0})
    assert (caught.value.part, caught.value.line) == ("html", 1)


def test_the_sandbox_refuses_python_internals(store: TemplateStore) -> None:
    store.put("t", "{{ ''.__class__.__mro__ }}", "x", None)
    with pytest.raises(TemplateRenderError, match="unsafe"):
        store.render("t", None, {})


def test_a_subject_must_render_to_one_line(store: TemplateStore) -> None:
    store.put("t", "{{ s }}", "x", None)
    with pytest.raises(TemplateRenderError, match="more than one line"):
        store.render("t", None, {"s": "a\r\nBcc: victim@example.com"})


def test_syntax_errors_name_every_part_and_store_nothing(
    store: TemplateStore, tmp_path: Path
) -> None:
    with pytest.raises(TemplateInvalid) as caught:
        store.put("bad", "ok", "one\ntwo\n{% if %}", "{{ x ")
    assert [(e.part, e.line) for e in caught.value.errors] == [("text", 3), ("html", 1)]
    assert not (tmp_path / "templates" / "bad").exists()
    with pytest.raises(TemplateNotFound):
        store.render("bad", None, {})
    store.put("good", "s", "t", None)
    with pytest.raises(TemplateNotFound, match="no version 5"):
        store.render("good", 5, {})
