"""Errors the CLI turns into one clear line and an exit code (never a raw traceback)."""


class FakemergeError(Exception):
    """A problem with the user's input or configuration; the message names the input and the cause."""

    exit_code = 2


class InputError(FakemergeError):
    """Bad data, file or argument: a usage/config error (exit 2)."""


class PartialFailure(FakemergeError):
    """Some inputs of a batch failed (each already reported); the rest succeeded (exit 1)."""

    exit_code = 1
