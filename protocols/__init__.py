"""The standard protocol library: the data files in this folder, and their loader.

`load_protocol("capacity-check")` finds a built-in protocol by name; a path to any YAML or
JSON protocol file works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stackcycler.errors import InvalidInput
from stackcycler.protocol import Protocol
from stackcycler.validation import load_model


@dataclass(frozen=True)
class ProtocolFile:
    model: Protocol
    path: Path
    text: str


def builtin_protocols() -> dict[str, Path]:
    folder = resources.files(__name__)
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir()
            if entry.name.endswith((".yaml", ".yml", ".json"))}


def resolve_protocol(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    builtin = builtin_protocols()
    if name_or_path in builtin:
        return builtin[name_or_path]
    raise InvalidInput(f"unknown protocol '{name_or_path}': not a protocol file and not a built-in protocol; "
                       f"built-in protocols: {', '.join(sorted(builtin))}")


def load_protocol(name_or_path: str) -> ProtocolFile:
    path = resolve_protocol(name_or_path)
    model, text = load_model(Protocol, path, "protocol")
    return ProtocolFile(model, path, text)
