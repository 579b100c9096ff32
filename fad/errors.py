"""The one error hierarchy of `fad`: bad user input, reported as one line.

Library code raises these (never `SystemExit`); the tools' shared entry point turns a `FadError`
into `error: <message>` on stderr and exit code 2. Messages name the user's file, key or value
and the fix, never a path inside our sources.
"""


class FadError(ValueError):
    """Bad user input; the message is one line naming the file/key and the fix."""


class ConfigError(FadError):
    """A config file, override or key value that cannot be used."""


class DataError(FadError):
    """Bad dataset input (image, annotation, class list, catalog entry)."""


class GenotypeError(FadError):
    """A malformed genotype or one that does not fit the config."""


class CheckpointError(FadError):
    """A checkpoint that cannot be read or does not fit the model."""


class EvalError(FadError):
    """Bad evaluation input (ground truth, detections, results file)."""


class OpError(FadError):
    """Bad input to a fused op (shapes, dtypes, levels) or an unknown op backend."""


class WriteError(FadError, OSError):
    """A file that could not be written (disk full, size limit, read-only folder); also an
    OSError, so code that tolerates a failed optional write keeps doing so."""
