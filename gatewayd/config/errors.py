"""Located configuration errors.

Every problem found in a config file carries the file, line and column it points at, so that
`gatewayd check` can print `file:line:col: error: message` lines that editors and CI annotate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    location: Location
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; holds every problem found, sorted by location."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.location.line, p.location.column, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))
