"""The standard protocol library: the data files in this folder, and their loader.

`load_protocol("capacity-check")` finds a built-in protocol by name; a path to any YAML or
JSON protocol file works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stackcycler.protocol import Protocol
from stackcycler.validation import builtin_files, find_data_file, load_model


@dataclass(frozen=True)
class ProtocolFile:
    model: Protocol
    path: Path
    text: str


def builtin_protocols() -> dict[str, Path]:
    return builtin_files(resources.files(__name__), (".yaml", ".yml", ".json"))


def resolve_protocol(name_or_path: str) -> Path:
    return find_data_file(name_or_path, builtin_protocols(), "protocol", "protocols")


def load_protocol(name_or_path: str) -> ProtocolFile:
    path = resolve_protocol(name_or_path)
    model, text = load_model(Protocol, path, "protocol")
    return ProtocolFile(model, path, text)
