"""The one exception type that carries a message meant for the user.

Code that checks user input (flags, configs, data folders, files) raises
`UserError` with a single line naming the offending value and the fix. Entry
points catch it, print the line and exit non-zero, so the user never sees a
traceback for a mistake of theirs.
"""


class UserError(Exception):
    """A problem with the user's input, described in one actionable line."""


def exit_on_user_error(main):
    """Wraps an absl `main` so that a UserError prints one line and exits with status 2."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped
