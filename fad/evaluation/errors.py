"""The one exception class of the evaluation package."""


class EvalError(ValueError):
    """Bad evaluation input; the message is one line naming the file (or value) and the fix."""
