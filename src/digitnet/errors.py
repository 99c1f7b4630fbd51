"""One family of user-facing errors.

Input problems raise a subclass of `DigitnetError` carrying a one-line message for a person.
The CLI maps them to that message and exit code 2; the API maps them to a 4xx JSON body.
Anything else escaping is a bug and should be visible as one.
"""

from __future__ import annotations


class DigitnetError(Exception):
    """Base class: `str(err)` is a one-line message fit to show a user."""

    exit_code = 2


class DatasetError(DigitnetError):
    """Data could not be found, read, or verified."""


class InputError(DigitnetError, ValueError):
    """A user-supplied input (image, pixels, array, argument) is unusable."""


class ModelError(DigitnetError):
    """A run folder, checkpoint or exported model is missing or unusable."""


class ConfigError(DigitnetError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DigitnetWarning(UserWarning):
    """Something the user should know, with a one-line message; the work goes on (the CLI prints
    `warning: …` on stderr, the server logs it)."""
