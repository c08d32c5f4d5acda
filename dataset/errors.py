"""The one error type data code raises: its message is a single line naming the path and what was expected."""
from util import UsageError


class DataError(UsageError):
    """A missing or malformed data file or folder (reported by the scripts as one line, exit code 2)."""
