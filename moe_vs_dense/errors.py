"""User-facing errors: the CLI prints them without a traceback and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (config, file, flag); the message names the problem."""
