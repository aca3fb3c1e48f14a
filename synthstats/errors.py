"""The one base class of mistakes a user can fix: the CLI prints them without a traceback."""


class UserFacingError(Exception):
    """Its message says what was wrong, where, and what to do."""
