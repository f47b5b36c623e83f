"""Errors raised on bad input data."""


class DataError(ValueError):
    """Bad input data: the message names the file, shard or member."""


class RemoteDataError(DataError):
    """A file of a dataset given by URL could not be fetched, or differs from its manifest; the
    message names the URL. Always stops the run (data.on_error=skip is for bad samples)."""
