"""The error a user's input causes: ``logitguard`` prints it as one line (exit code 2), not a traceback."""

from __future__ import annotations


class LogitGuardError(ValueError):
    """Bad input (a file, a field, an option, an artifact): the message names it and says what was expected.

    A ``ValueError``, so code that catches those keeps working. The command line turns it, and ``OSError``,
    into one line on stderr; ``logitguard --debug COMMAND`` shows the traceback instead.
    """


class RunStopped(LogitGuardError):
    """A run stopped before its end on purpose (the safety monitor's ``action: stop``): what it wrote is kept, and
    the command line says so in one line with exit code 3, so a script never takes it for a finished run."""

    exit_code = 3
