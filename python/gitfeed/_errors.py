"""The exceptions gitfeed raises: one class, `Error`, and two subclasses that are also the
built-in exceptions a Python caller expects for bad input and for something missing."""

from __future__ import annotations


class Error(Exception):
    """A call into gitfeed failed.

    `reason` is the same snake_case reason that `state` events and the status carry
    (`connection_refused`, `ref_not_found`, ...), plus `invalid_input`, `not_found` and
    `stopped`, which only calls meet. `retryable` says whether trying again can help. The
    message is the whole chain: what failed, then what was said underneath.
    """

    reason: str
    retryable: bool

    def __init__(self, message: str, reason: str, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.reason, self.retryable))


class InvalidInputError(Error, ValueError):
    """Input gitfeed cannot take (reason `invalid_input`): an unknown key of a source, a value
    of the wrong type, a bad duration, a missing url, a text that is not a commit id."""


class NotFoundError(Error, LookupError):
    """Something named does not exist (reason `not_found`): a source the feed does not
    follow, a path that is not in the commit, a source with no clone in the cache yet."""


_BY_REASON = {"invalid_input": InvalidInputError, "not_found": NotFoundError}


def from_reason(message: str, reason: str, retryable: bool) -> Error:
    """The exception for `reason`: called by the extension module."""
    return _BY_REASON.get(reason, Error)(message, reason, retryable)
