"""The one base class of mistakes a user can fix: the CLI prints them without a traceback."""


class UserFacingError(Exception):
    """Its message says what was wrong, where, and what to do."""


class PolicyStepError(UserFacingError, RuntimeError):
    """A step failed and left the policy unusable, while its last checkpoint stays sound.

    The training loop reloads that checkpoint in-process, as `resume=` would, a bounded
    number of times (runner.train.max_reloads) before it gives up with this error.
    """
