"""User-facing errors.

Every problem a user can cause (a bad path, a bad value, a malformed file) is raised as a subclass of
:class:`MAAEError` with a one-line message that names the file or field and what was expected. The command
line prints that line and exits with :data:`EXIT_USAGE`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class MAAEError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(MAAEError, ValueError):
    """An invalid configuration value; the message names the field.

    ``field`` carries the offending field's name where there is one, so callers that re-word the error (a
    search space naming its own file and key) never have to parse the message.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DataError(MAAEError):
    """A data folder that does not follow the MVTec-AD layout; the message names the file."""


class BackboneError(MAAEError):
    """Backbone weights that cannot be resolved; the message names the offline alternatives."""


class MetricError(MAAEError, ValueError):
    """Malformed metric inputs (wrong shapes, non-binary masks, NaN scores); undefined metrics give NaN instead."""
