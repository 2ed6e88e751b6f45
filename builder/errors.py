"""The one error type the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""
