"""Errors that the command line reports as one line (``fasterrcnn: error: ...``) and exit code 2."""


class FasterRCNNError(Exception):
    """Base class of the errors that are the user's to fix (bad input, bad usage)."""


class DataError(FasterRCNNError, ValueError):
    """A data file or folder is missing or malformed. The message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(FasterRCNNError, ValueError):
    """A configuration value, preset name or command-line option is invalid."""
