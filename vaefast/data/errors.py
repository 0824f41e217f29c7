"""The error every data source raises for bad input: it names the file and what was expected."""


class DataError(ValueError):
    """Bad, missing or corrupt input data."""
