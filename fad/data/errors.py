"""The one exception type for bad dataset input."""


class DataError(ValueError):
    """Bad dataset input; the message is one line naming the file and the fix."""
