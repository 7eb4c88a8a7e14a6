"""Loading YAML/JSON data files into validated models, with errors a technician can act on.

Every error names the file, the line, the field (as a path such as `steps[2].current_C`) and
what would be accepted. YAML is parsed with the safe loader only: protocols and benches are
data, never code.
"""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InvalidInput, UnreadableInput

M = TypeVar("M", bound=BaseModel)
PathKey = tuple[Any, ...]


def _line_map(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            lines[key_path] = key_node.start_mark.line + 1
            _line_map(value_node, key_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, path + (index,), lines)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[PathKey, int]]:
    """Parse YAML (JSON is YAML too); return the data and the line of every key and item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UnreadableInput(f"{source}{where}: not valid YAML ({problem})") from None
    lines: dict[PathKey, int] = {}
    if node is not None:
        _line_map(node, (), lines)
    return data, lines


# TOML has no parser that keeps positions: a key's line is found by reading the lines, which is
# all an error message needs (a nested key inside an inline table points at its table's line).
_TOML_TABLE = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_TOML_KEY_PART = re.compile(r"""[A-Za-z0-9_-]+|"([^"]*)"|'([^']*)'""")


def _toml_key(text: str) -> PathKey:
    return tuple(next(g for g in match.groups() if g is not None) if match.group(0)[0] in "\"'" else match.group(0)
                 for match in _TOML_KEY_PART.finditer(text))


def parse_toml(text: str, source: str) -> tuple[Any, dict[PathKey, int]]:
    """Parse TOML; return the data and the line of every table and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UnreadableInput(f"{source}: not valid TOML ({error})") from None
    lines: dict[PathKey, int] = {}
    table: PathKey = ()
    array_counts: dict[PathKey, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TOML_TABLE.match(line)
        if header and not _TOML_KEY.match(line):
            path = _toml_key(header.group(2))
            if header.group(1) == "[[":  # an array of tables: each header is the next item
                array_counts[path] = array_counts.get(path, -1) + 1
                path = path + (array_counts[path],)
            table = path
            lines.setdefault(table, number)
            continue
        key = _TOML_KEY.match(line)
        if key:
            lines.setdefault(table + _toml_key(key.group(1)), number)
    return data, lines


def parse_data_text(text: str, path: Path) -> tuple[Any, dict[PathKey, int]]:
    """A data file's contents by its suffix: TOML (`.toml`), else YAML (which reads JSON too)."""
    return parse_toml(text, str(path)) if path.suffix.lower() == ".toml" else parse_yaml(text, str(path))


def builtin_files(folder, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Data files shipped in a package folder (an importlib.resources Traversable), by stem."""
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(suffixes)}


def find_data_file(name_or_path: str, builtin: dict[str, Path], what: str, plural: str,
                   relative_to: Path | None = None) -> Path:
    """A file given by path, or a built-in one given by name; else an error listing the built-ins."""
    candidate = Path(name_or_path)
    if relative_to is not None and not candidate.is_absolute():
        candidate = relative_to / candidate
    if candidate.is_file():
        return candidate
    if name_or_path in builtin:
        return builtin[name_or_path]
    raise UnreadableInput(f"unknown {what} '{name_or_path}': not a {what} file and not a built-in {what}; "
                       f"built-in {plural}: {', '.join(sorted(builtin))}")


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise UnreadableInput(f"{path}: cannot read the {what} file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise UnreadableInput(f"{path}: the {what} file is not UTF-8 text") from None


def format_location(path: PathKey) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(top level)"


def _candidates(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, with Annotated/Optional/Union unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _candidates(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [c for arg in get_args(annotation) for c in _candidates(arg)]
    return [annotation]


def _model_for(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The model class an annotation selects for `value` (discriminated unions by `step`/`kind`)."""
    models = [c for c in _candidates(annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
    if len(models) == 1:
        return models[0]
    if isinstance(value, dict):
        for model in models:
            for tag in ("step", "kind"):
                field = model.model_fields.get(tag)
                if field is not None and value.get(tag) in get_args(field.annotation):
                    return model
        untagged = [m for m in models if "step" not in m.model_fields and "kind" not in m.model_fields]
        if len(untagged) == 1 and "step" not in value and "kind" not in value:
            return untagged[0]
    return None


def _descend(annotation: Any, key: Any) -> Any:
    for candidate in _candidates(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and key in candidate.model_fields:
            return candidate.model_fields[key].annotation
        origin = get_origin(candidate)
        if origin in (list, tuple) and isinstance(key, int):
            return get_args(candidate)[0]
        if origin is dict:
            return get_args(candidate)[1]
    return None


def _accepted_fields(root: type[BaseModel], data: Any, parent: PathKey) -> list[str]:
    annotation: Any = root
    value = data
    for key in parent:
        model = _model_for(annotation, value)
        annotation = _descend(model if model is not None else annotation, key)
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            value = None
        if annotation is None:
            return []
    model = _model_for(annotation, value)
    return [name for name in model.model_fields] if model else []


def _data_path(loc: tuple[Any, ...], data: Any) -> PathKey:
    """Pydantic's error location as a path into the data, without the union tags it inserts."""
    path: list[Any] = []
    value = data
    after_index = False
    for position, key in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(value, dict) and after_index and key in ("step", "loop") and not last:
            after_index = False
            continue  # the tag of a list item: a step or a loop
        after_index = False
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
            value = value[key]
            after_index = True
        elif isinstance(value, dict) and key in (value.get("step"), value.get("kind")):
            continue  # the tag of a discriminated union, not a field
        else:
            value = None  # a missing or unknown field: the path ends here
        path.append(key)
    return tuple(path)


_LEADING_LOCATION = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\]|\.[A-Za-z_]\w*)*): (.*)$", re.S)


def parse_location(text: str) -> PathKey:
    """'steps[2].until[0].goto' -> ('steps', 2, 'until', 0, 'goto')."""
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"\w+", text))


def _where(source: str, lines: dict[PathKey, int], path: PathKey) -> str:
    line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), None)
    return f"{source}, line {line}" if line else source


def describe_validation_error(error: ValidationError, source: str, data: Any,
                              lines: dict[PathKey, int], model: type[BaseModel]) -> str:
    messages = []
    for item in error.errors():
        path = _data_path(tuple(item["loc"]), data)
        if item["type"] == "value_error" and "\n" in item["msg"] or (
                item["type"] == "value_error" and _LEADING_LOCATION.match(item["msg"].removeprefix("Value error, "))):
            # a whole-file check: one problem a line, each starting with the field it is about
            for problem in item["msg"].removeprefix("Value error, ").splitlines():
                located = _LEADING_LOCATION.match(problem)
                inner = path + parse_location(located[1]) if located else path
                messages.append(f"{_where(source, lines, inner)}: {problem}")
            continue
        where = _where(source, lines, path)
        field = format_location(path)
        if item["type"] == "extra_forbidden":
            accepted = _accepted_fields(model, data, path[:-1])
            hint = f"; accepted here: {', '.join(accepted)}" if accepted else ""
            messages.append(f"{where}: unknown field '{field}'{hint}")
        elif item["type"] == "missing":
            messages.append(f"{where}: '{field}' is required")
        else:
            message = item["msg"].removeprefix("Value error, ")
            messages.append(f"{where}: '{field}': {message}")
    return "\n".join(messages)


def validate_data(model: type[M], data: Any, source: str, lines: dict[PathKey, int]) -> M:
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: expected a mapping of fields at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(error, source, data, lines, model)) from None


def load_model(model: type[M], path: Path, what: str) -> tuple[M, str]:
    """Read, parse and validate a data file; return the model and the file's text."""
    text = read_text(path, what)
    data, lines = parse_data_text(text, path)
    return validate_data(model, data, str(path), lines), text

