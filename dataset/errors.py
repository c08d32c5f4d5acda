"""The one error type data code raises: its message is a single line naming the path and what was expected."""


class DataError(ValueError):
    """A missing or malformed data file or folder."""
