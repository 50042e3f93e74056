"""What both command lines share: one-line errors with meaningful exit codes, progress
bars on stderr, and the entry-point wrapper."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from contract.errors import Img2ImgError, InvalidJob

# Exit codes: 1 the work failed (some jobs failed, AWS errored), 2 the request was wrong
# (bad flags or settings, a queue or bucket that is not there).
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``error: message`` in red on stderr; return the Exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Our errors and AWS's, as one line naming the problem (exit 2 for bad input)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    from common.aws_errors import describe, is_configuration_error

    try:
        yield
    except Img2ImgError as exc:
        raise fail(str(exc)) from None
    except NoRegionError:
        raise fail("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile "
                   "with a region)") from None
    except NoCredentialsError:
        raise fail("no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                   "AWS_SECRET_ACCESS_KEY, or run where an instance/task role applies"
                   ) from None
    except ClientError as exc:
        code = EXIT_BAD_INPUT if is_configuration_error(exc) else EXIT_FAILED
        raise fail(describe(exc), code) from None
    except BotoCoreError as exc:
        raise fail(f"AWS: {exc}", EXIT_FAILED) from None


# (description, total) -> advance(n): a progress bar the caller advances.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def no_bars(description: str, total: int) -> Callable[[int], None]:
    """A ProgressFactory that shows nothing (``--json``)."""
    return lambda n: None


@contextmanager
def progress_bars() -> Iterator[ProgressFactory]:
    """A factory of progress bars on stderr."""
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as progress:
        def factory(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield factory


def run_app(app: Callable[[], Any]) -> None:
    """Run a typer app; a configuration error found late still reads as one line."""
    try:
        app()
    except InvalidJob as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(EXIT_BAD_INPUT)
