"""midus.schema on a small schema of its own: YAML files read with one-line errors, validation errors
described in one line (the field, what it got, what is allowed), dotted overrides. The recipes' and
train configs' own messages are tested in tests/growth/test_bad_recipes.py and tests/train/test_config.py."""

from typing import ClassVar, Literal

import pytest
from pydantic import Field, ValidationError, field_validator, model_validator

from midus.errors import UsageError
from midus.schema import Strict, YamlModel, describe_validation_error, expected, read_mapping


class DocError(UsageError):
    pass


class Inner(Strict):
    size: int = Field(2, ge=1, strict=True)
    mode: Literal["fast", "slow"] = "fast"


class Doc(YamlModel):
    kind: ClassVar[str] = "doc"
    error: ClassVar[type[UsageError]] = DocError

    name: str
    count: int = Field(0, ge=0, strict=True)
    ratio: float = Field(0.5, ge=0, le=1)
    inner: Inner = Inner()
    tags: list[str] | None = None

    @field_validator("count")
    @classmethod
    def _even(cls, value):
        if value % 2:
            raise ValueError("must be even")
        return value

    @model_validator(mode="after")
    def _fits(self):
        if self.count > 10 * self.inner.size:
            raise ValueError(f"count: {self.count} exceeds 10 * inner.size")
        return self


def problem(data: dict) -> str:
    with pytest.raises(ValidationError) as error:
        Doc.model_validate(data)
    return describe_validation_error(error.value, Doc)


# --- read_mapping ------------------------------------------------------------------------------------


def test_read_mapping_returns_the_mapping(tmp_path):
    path = tmp_path / "doc.yaml"
    path.write_text("name: x\ninner: {size: 3}\n")
    assert read_mapping(path, "doc", DocError) == {"name": "x", "inner": {"size": 3}}


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file (a YAML doc is UTF-8 text)"),
    (b"name: x\x00", "not a text file (a YAML doc is UTF-8 text)"),  # valid UTF-8, but a NUL byte
    (b"name: [x\n", "not valid YAML (while parsing a flow sequence)"),
    (b"- name\n- count\n", "expected a mapping of fields, got list"),
    (b"", "expected a mapping of fields, got NoneType"),
], ids=["missing", "binary", "nul", "bad-yaml", "list", "empty"])
def test_read_mapping_errors_are_one_line_of_the_given_class(tmp_path, content, message):
    path = tmp_path / "doc.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DocError) as error:
        read_mapping(path, "doc", DocError)
    assert str(error.value) == f"doc {path}: {message}"


def test_read_mapping_refuses_a_folder(tmp_path):
    with pytest.raises(DocError, match=f"^doc {tmp_path}: no such file$"):
        read_mapping(tmp_path, "doc", DocError)


# --- describe_validation_error -----------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "colour": "red"}, "colour: unknown field; valid fields: name, count, ratio, inner, tags"),
    ({"name": "x", "inner": {"speed": 1}}, "inner.speed: unknown field; valid fields: size, mode"),
    ({}, "name: required; expected a string"),
    ({"name": "x", "count": "many"}, "count: got 'many'; expected an integer >= 0"),
    ({"name": "x", "ratio": 2}, "ratio: got 2; expected a number >= 0 and <= 1"),
    ({"name": "x", "inner": {"mode": "medium"}}, "inner.mode: got 'medium'; expected one of fast, slow"),
    ({"name": "x", "inner": 3}, "inner: got 3; expected a mapping with fields size, mode"),
    ({"name": "x", "tags": "a"}, "tags: got 'a'; expected a list of strings"),
    ({"name": "x", "count": 3}, "count: must be even"),  # a validator's message gets its field
    ({"name": "x", "count": 40}, "count: 40 exceeds 10 * inner.size"),  # one that names it already, kept
    ({"name": "x", "count": "many", "ratio": 2}, "count: got 'many'; expected an integer >= 0 (and 1 more)"),
], ids=["unknown", "unknown-nested", "missing", "wrong-type", "bounds", "literal", "section", "list", "validator",
        "validator-named", "more"])
def test_a_validation_error_is_described_in_one_line(data, message):
    assert problem(data) == message


def test_expected_in_words():
    assert expected(bool) == "true or false"
    assert expected(int | None) == "an integer"
    assert expected(Literal["a", "b"] | list[int]) == "one of a, b, or a list of integers"


def test_parse_raises_the_model_s_error_naming_the_source():
    with pytest.raises(DocError, match=r"^doc: count: must be even$"):
        Doc.parse({"name": "x", "count": 1})
    with pytest.raises(DocError, match=r"^my\.yaml: name: required"):
        Doc.parse({}, source="my.yaml")


# --- set_dotted, from_yaml overrides, to_yaml ------------------------------------------------------------


def test_set_dotted_sets_nested_fields_and_creates_sections():
    data = {"name": "x", "inner": {"size": 2}}
    Doc.set_dotted(data, "inner.mode", "slow")
    Doc.set_dotted(data, "name", "y")
    Doc.set_dotted(data, "a.b.c", 1)
    assert data == {"name": "y", "inner": {"size": 2, "mode": "slow"}, "a": {"b": {"c": 1}}}


def test_set_dotted_refuses_to_descend_into_a_value():
    with pytest.raises(DocError, match=r"^override name\.first: name is not a section$"):
        Doc.set_dotted({"name": "x"}, "name.first", "y")


def test_from_yaml_applies_overrides_before_validating(tmp_path):
    path = tmp_path / "doc.yaml"
    path.write_text("name: x\ninner: {size: 1}\n")
    doc = Doc.from_yaml(path, {"inner.size": 3, "count": 20})
    assert (doc.inner.size, doc.count, doc.name) == (3, 20, "x")
    with pytest.raises(DocError, match=rf"^{path}: count: 20 exceeds 10 \* inner.size$"):
        Doc.from_yaml(path, {"count": 20})  # valid only with the size override
    with pytest.raises(DocError, match=rf"^{path}: inner.colour: unknown field"):
        Doc.from_yaml(path, {"inner.colour": "red"})


def test_to_yaml_round_trips_and_leaves_out_unset_options(tmp_path):
    doc = Doc.parse({"name": "x", "inner": {"mode": "slow"}})
    assert "tags" not in doc.to_yaml()
    path = tmp_path / "doc.yaml"
    path.write_text(doc.to_yaml())
    assert Doc.from_yaml(path) == doc
