"""Validated settings (recipes, training configs, experiments, the settings of eval, bench and analyze):
pydantic models read from YAML files or `--set` overrides, with one-line errors."""

import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UsageError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class YamlModel(Strict):
    """A file-backed model: `from_yaml` / `parse` raise `error` with a one-line message."""

    kind: ClassVar[str] = "config"  # how messages name the file
    error: ClassVar[type[UsageError]] = UsageError

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None):
        """Read and validate `path`; `overrides` set dotted fields ({"data.streaming": True}) first."""
        return cls.from_overrides(overrides, read_mapping(path, cls.kind, cls.error), source=str(path))

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None, data: dict | None = None, source: str | None = None):
        """Validate `data` (default: no fields, every default) with the dotted `overrides` set."""
        data = data if data is not None else {}
        for key, value in (overrides or {}).items():
            cls.set_dotted(data, key, value)
        return cls.parse(data, source=source)

    @classmethod
    def parse(cls, data: dict, source: str | None = None):
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise cls.error(f"{source or cls.kind}: {describe_validation_error(error, cls)}") from None

    @classmethod
    def set_dotted(cls, data: dict, key: str, value: Any) -> None:
        """data['a']['b'] = value for key 'a.b' (creating the sections on the way)."""
        *sections, last = key.split(".")
        for section in sections:
            node = data.setdefault(section, {})
            if not isinstance(node, dict):
                raise cls.error(f"override {key}: {section} is not a section")
            data = node
        data[last] = value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def read_mapping(path: str | Path, kind: str, error: type[UsageError]) -> dict:
    """The mapping a YAML file holds, or `error` with one line: no such file, not text, not YAML, not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} {path}: no such file")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise error(f"{kind} {path}: not a text file (a YAML {kind} is UTF-8 text)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{kind} {path}: not valid YAML ({str(problem).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise error(f"{kind} {path}: expected a mapping of fields, got {type(data).__name__}")
    return data


def describe_validation_error(error: ValidationError, model: type[BaseModel] | dict[str, type[BaseModel]]) -> str:
    """The first problem of a pydantic error as one line: the field, what it got, what is allowed
    (from the schema of `model`, the validated class, or of the class a discriminated union's tag chose,
    `model` then being the union's classes by tag)."""
    errors = error.errors()
    first = errors[0]
    if isinstance(model, dict):
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            name = first["ctx"]["discriminator"].strip("'")
            value = first["input"].get(name) if isinstance(first["input"], dict) else first["input"]
            return f"{name}: got {value!r}; expected one of {', '.join(model)}"
        model = model[first["loc"][0]]  # every location starts with the tag
        errors = [{**e, "loc": e["loc"][1:]} for e in errors]
        first = errors[0]
    path, owner, info = _field_path(first["loc"], model)
    fields = {tuple(_field_path(e["loc"], model)[0]) for e in errors}
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    field = ".".join(path)
    if first["type"] == "value_error":  # our validators say what is wrong and what is allowed
        message = first["msg"].removeprefix("Value error, ")
        named = not field or message.startswith((f"{field}.", f"{field}:", f"{field}="))
        return f"{message}{more}" if named else f"{field}: {message}{more}"
    if first["type"] == "extra_forbidden":
        name = ".".join([*path, str(first["loc"][-1])])
        return f"{name}: unknown field; valid fields: {', '.join(owner.model_fields)}{more}"
    allowed = f"expected {expected(info.annotation, info.metadata)}" if info else first["msg"].lower()
    if first["type"] == "missing":
        return f"{field}: required; {allowed}{more}"
    # a union reports one error per branch; the branch errors at the field itself carry the whole value
    value = next((e["input"] for e in errors if tuple(e["loc"][: len(path)]) == tuple(path)
                  and len(e["loc"]) <= len(path) + 1), first["input"])
    return f"{field}: got {value!r}; {allowed}{more}"


def _field_path(loc: tuple, model: type[BaseModel]) -> tuple[list[str], type[BaseModel] | None, object]:
    """Walk `loc` through the models' fields: the field names it passes (a union tag, a list index or
    an unknown name ends it), the model reached at its end, and the last field's FieldInfo."""
    path, owner, info = [], model, None
    for part in loc:
        if owner is None or not isinstance(part, str) or part not in owner.model_fields:
            break
        path.append(part)
        info = owner.model_fields[part]
        owner = section_of(info.annotation)
    return path, owner, info


def section_of(annotation) -> type[BaseModel] | None:
    """The model a field holds as a section (`TextSource` for `TextSource | None`), if any."""
    return next((a for a in _flat_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _flat_args(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _flat_args(arg)]
    return [annotation]


def expected(annotation, metadata=()) -> str:
    """What a field accepts, in words: `one of a, b`, `an integer >= 1`, `a number in [0, 1]`..."""
    bounds = []
    for constraint in metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(constraint, getattr(annotated_types, name.title())):
                bounds.append(f"{sign} {getattr(constraint, name)}")
    suffix = f" {' and '.join(bounds)}" if bounds else ""
    kinds = []
    for arg in _flat_args(annotation):
        if arg is type(None):
            continue
        if typing.get_origin(arg) is Literal:
            kinds.append(f"one of {', '.join(str(v) for v in typing.get_args(arg))}")
        elif arg is bool:
            kinds.append("true or false")
        elif arg is int:
            kinds.append(f"an integer{suffix}")
        elif arg is float:
            kinds.append(f"a number{suffix}")
        elif arg is str:
            kinds.append("a string")
        elif typing.get_origin(arg) is list:
            kinds.append(f"a list of {expected(typing.get_args(arg)[0]).removeprefix('an ').removeprefix('a ')}s")
        elif isinstance(arg, type) and issubclass(arg, BaseModel):
            kinds.append(f"a mapping with fields {', '.join(arg.model_fields)}")
        else:
            kinds.append(str(arg))
    return ", or ".join(kinds)


def parse_override(text: str) -> tuple[str, Any]:
    """'data.streaming=true' -> ('data.streaming', True): the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"override {text!r}: expected KEY=VALUE, e.g. max_steps=100 or data.streaming=true")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise UsageError(f"override {text!r}: the value is not valid YAML") from None
