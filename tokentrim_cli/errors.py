"""Errors a user can act on. Each carries the process exit code the CLI maps it to."""


class TokentrimError(Exception):
    exit_code = 1


class ConfigError(TokentrimError):
    """Bad preset, override or argument: nothing has been loaded or produced yet."""

    exit_code = 2


class WeightsError(ConfigError):
    """A checkpoint that cannot be read or does not fit the preset's architecture."""


class MissingWeights(WeightsError):
    """Weights that are not on this machine; the message names the file. ``downloadable``: hub weights that
    ``tokentrim download`` can fetch (the command says so, naming the preset)."""

    def __init__(self, message: str, downloadable: bool = False):
        super().__init__(message)
        self.downloadable = downloadable
