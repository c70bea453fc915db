"""Optional dependencies, imported on first use with an error that says how to install them."""

from __future__ import annotations


def require_pandas(what: str):
    """The ``pandas`` module, or an ImportError naming ``what`` needs it and how to get it."""
    try:
        import pandas
    except ImportError as err:
        raise ImportError(f"{what} needs pandas; install it with pip install 'excise[notebooks]' "
                          "(or pip install pandas)") from err
    return pandas
