"""The one exception hierarchy of navsvc.

Every error a user can cause or meet is a :class:`NavError`. Messages say what is
wrong and what to do ("expected X, got Y"). The gRPC layer maps these classes to
status codes (``navsvc.server``), the CLI to exit codes (:data:`EXIT_CODES`), each in
exactly one place.
"""

from __future__ import annotations


class NavError(Exception):
    """Base class of every navsvc error."""


class InputError(NavError):
    """A user-supplied input (file, option, value) is wrong."""


class InvalidImageError(InputError):
    """An image file is missing, unreadable, or has unusable geometry or content."""


class InvalidLabelsError(InvalidImageError):
    """A label map has the wrong type, misses expected labels, or is inconsistent."""


class MarkupsError(InputError):
    """A 3D Slicer markups file is malformed or holds unexpected content."""


class ConfigError(InputError):
    """A configuration value or file is wrong."""


class TransformError(NavError):
    """A transform is malformed, or transforms between mismatched frames were combined."""


class PlanError(NavError):
    """A surgical plan is malformed or violates a safety rule."""


class RegistrationFailed(NavError):
    """A registration could not produce a usable result."""


class Cancelled(NavError):
    """A long-running operation was cancelled by the user."""


class NotFound(NavError):
    """A named entity (case, registration, device) does not exist."""


class PreconditionFailed(NavError):
    """The request is valid but the system is not in a state to honour it."""


class PermissionDenied(NavError):
    """The caller's role does not allow this action."""


class Unauthenticated(NavError):
    """The caller did not present valid credentials."""


class ResourceExhausted(NavError):
    """A size or rate limit was exceeded."""


class StreamingError(NavError):
    """An OpenIGTLink message or connection problem."""


class NotBuiltYet(NavError):
    """A documented command whose implementation has not landed yet."""


#: CLI exit codes, most specific class first (checked with isinstance in order).
EXIT_CODES: tuple[tuple[type[NavError], int], ...] = (
    (NotBuiltYet, 3),
    (InvalidLabelsError, 4),
    (InvalidImageError, 4),
    (MarkupsError, 5),
    (ConfigError, 2),
    (InputError, 2),
    (PlanError, 6),
    (RegistrationFailed, 7),
    (TransformError, 8),
    (Cancelled, 130),
    (NotFound, 9),
    (PreconditionFailed, 10),
    (PermissionDenied, 11),
    (Unauthenticated, 11),
    (ResourceExhausted, 12),
    (StreamingError, 13),
    (NavError, 1),
)


def exit_code_for(error: NavError) -> int:
    """Return the CLI exit code for ``error`` (never 0)."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return 1
