"""One exception type for every data problem a user can fix (bad file, bad record, bad config)."""

from __future__ import annotations


class DataError(ValueError):
    """A data problem with a message meant for the user: it names the file, line or setting at fault."""
