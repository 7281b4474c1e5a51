"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (input, config, data, hyper-parameters); the message says how."""


class ConfigError(UserError, ValueError):
    """One or more problems in a run configuration."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{len(self.problems)} config problems:\n{lines}")


class DataError(UserError):
    """A dataset is missing, corrupt or too small for the requested split."""


class DivergedError(UserError):
    """A loss became NaN or infinite; the run stops rather than log garbage."""
