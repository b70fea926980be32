"""One path from an error to the exit status, for every command.

0 success; 1 a problem with the input or the run, or a place that cannot be written (its message, never a
traceback); 2 a usage problem (:func:`usage`);
130 stopped by Ctrl-C or SIGTERM after saving what can be continued. Every command is wrapped in
:func:`user_errors`; ``scnas_dsl.cli.main`` catches what happens outside a command the same way.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from scnas_dsl.errors import ScnasError, message_for_user

F = TypeVar("F", bound=Callable[..., Any])

USAGE = 2


def usage(message: str) -> typer.Exit:
    """Print ``error: message`` and return the usage exit (status 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE)


#: what to do about a file system error, by errno
_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EACCES: "permission denied: choose a place you may write to",
    errno.EPERM: "not permitted: choose a place you may write to",
    errno.EROFS: "a read-only file system: write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "a folder is where a file should be: give a file name",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def os_error_message(err: OSError) -> str:
    """``PATH: reason; what to do`` for a file system error (the files already written are whole: every write
    is atomic, so nothing half-written is left behind)."""
    where = err.filename if err.filename is not None else "a file"
    reason = err.strerror or type(err).__name__
    advice = _ADVICE.get(err.errno or -1)
    return f"{where}: {reason}" + (f" ({advice})" if advice and advice != reason.lower() else "")


def user_errors(func: F) -> F:
    """Turn scnas errors into a message and exit status 1 (130 for a stop by signal), never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from scnas_dsl.stopping import RunInterrupted, SecondInterrupt

        try:
            return func(*args, **kwargs)
        except RunInterrupted as err:
            typer.echo(f"stopped: {err}", err=True)
            code = 130
        except ScnasError as err:
            typer.echo(message_for_user(err), err=True)
            code = 1
        except OSError as err:  # a place that cannot be written (or read): one line, never a traceback
            typer.echo(f"error: {os_error_message(err)}", err=True)
            code = 1
        except SecondInterrupt:  # a second Ctrl-C while a stop was under way: at once, without a new checkpoint
            typer.echo("stopped at once by a second Ctrl-C: nothing more was saved; a search or training continues "
                       "from its last checkpoint (checkpoints/last.pt of its run folder) with the same command and "
                       "--resume", err=True)
            code = 130
        except KeyboardInterrupt:  # Ctrl-C where nothing is stopped cleanly (set-up, checks): nothing half-written
            typer.echo("stopped by Ctrl-C; files are written whole or not at all, so nothing is half-written; a "
                       "search or training that has a checkpoint (checkpoints/last.pt of its run folder) continues "
                       "with the same command and --resume", err=True)
            code = 130
        # raised outside the handler, so that the error's traceback (and with it the run's frames, its loaders
        # and their worker processes, which ignore SIGTERM) is released now: the workers end before the
        # interpreter's exit, which would otherwise wait for them
        raise typer.Exit(code)

    return wrapper  # type: ignore[return-value]
