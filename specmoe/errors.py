"""One error type for bad input, so the CLI can print a one-line message instead of a traceback."""
import difflib


class SpecMoEError(ValueError):
    """Bad input or an impossible configuration; the message names the field, value and what is
    allowed."""


def suggest(name: str, choices) -> str:
    """' (did you mean: a, b?)' for the nearest known names, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.4)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
