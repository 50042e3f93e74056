"""What both command lines share: one-line errors with meaningful exit codes, progress
bars on stderr, and the entry-point wrapper."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from contract.errors import Img2ImgError, InvalidJob

# Exit codes: 1 the work failed (some jobs failed, AWS errored), 2 the request was wrong
# (bad flags or settings, a queue or bucket that is not there).
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class HelpGroup(TyperGroup):
    """The apps' command group: help shows what to type, not Python's types. A flag
    shows no ``<bool>``, a repeatable option its value's name (``MODEL``), not
    ``<list[str]>``, and an argument its name (``DEST``), not ``{dest}``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            command.get_params = _plain_params(command.get_params)  # type: ignore[method-assign]

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # the completion options are added late
        _plain_metavars(params)
        return params


def _plain_params(get_params: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
    """A command's ``get_params`` whose parameters (its --help too, made late) read
    plainly."""
    def plain(ctx: Any) -> list[Any]:
        params = get_params(ctx)
        _plain_metavars(params)
        return params
    return plain


def _plain_metavars(params: list[Any]) -> None:
    for param in params:
        if param.metavar is not None:
            continue
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
        elif isinstance(param, TyperArgument):
            _plain_argument(param)
        elif getattr(param, "multiple", False):
            param.metavar = (param.name or "value").upper()


def _plain_argument(param: TyperArgument) -> None:
    """``DEST`` and ``[INPUTS]...`` in the usage line; no Python type in the list."""
    param.metavar = name = (param.name or "value").upper()
    usage = (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")
    param.get_usage_pieces = lambda ctx: [usage]  # type: ignore[method-assign]
    if param.nargs != 1:
        param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 body``, ``2 bodies``: a count with its noun in the right number."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``error: message`` in red on stderr (its blank lines and trailing space
    dropped: an AWS message may end in a newline); return the Exit to raise."""
    text = "\n".join(line.rstrip() for line in str(message).strip().splitlines()
                     if line.strip())
    typer.secho(f"error: {text}", err=True, fg=typer.colors.RED)
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


_quiet = False  # --quiet: no progress bars


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


_verbosity = 0  # -1: --quiet; 1: -v; 2: -vv


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = level


def log_level_or(default: str) -> str:
    """The log level --quiet/--verbose ask for, else ``default``."""
    return {-1: "ERROR", 0: default, 1: "INFO"}.get(_verbosity, "DEBUG")


def bars_shown() -> bool:
    """Progress bars only where a person watches: not with --quiet, not into a log."""
    return not _quiet and sys.stderr.isatty()


def no_bars(description: str, total: int) -> Callable[[int], None]:
    """A ProgressFactory that shows nothing (``--json``, ``--quiet``, not a terminal)."""
    return lambda n: None


def progress_columns() -> tuple[Any, ...]:
    """What every bar shows: its name, the bar, done of total (n/N), time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn())


@contextmanager
def progress_bars() -> Iterator[ProgressFactory]:
    """A factory of progress bars on stderr (of no-ops where ``bars_shown`` is false)."""
    from rich.console import Console
    from rich.progress import Progress

    if not bars_shown():
        yield no_bars
        return
    with Progress(*progress_columns(), console=Console(stderr=True)) as progress:
        def factory(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield factory


def run_app(app: Callable[[], Any]) -> None:
    """Run a typer app; a configuration error found late still reads as one line."""
    try:
        app()
    except InvalidJob as exc:
        fail(str(exc))
        sys.exit(EXIT_BAD_INPUT)
