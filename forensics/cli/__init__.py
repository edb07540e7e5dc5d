"""The `hakmem-forensics` command line: one typer app, one place that maps errors to exit codes."""

from __future__ import annotations

import os
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

from forensics import __version__
from forensics.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, ForensicsError

PROG = "hakmem-forensics"
ENV_TRACEBACK = "HAKMEM_FORENSICS_TRACEBACK"

EXIT_CODES_EPILOG = (
    "Exit status: 0 analysis completed (even one that found a crash); "
    "2 usage error (bad option or argument); "
    f"{EXIT_BAD_INPUT} bad input (missing file, not an ELF library, unloadable library, bad value); "
    f"{EXIT_INTERNAL} internal error (a bug in the toolkit; set {ENV_TRACEBACK}=1 for the traceback); "
    f"{EXIT_INTERRUPTED} interrupted (Ctrl-C) during a replay, after reporting and saving the partial result."
)


# Exceptions typer (or click, in typer versions that still use it) turns into exit statuses
# itself: usage errors (2), typer.Exit, Abort. Everything else is ours to map.
_PASSTHROUGH: tuple[type[BaseException], ...] = tuple(
    getattr(typer.exceptions, name) for name in ("TyperException", "Exit", "Abort") if hasattr(typer.exceptions, name)
)
try:
    import click

    _PASSTHROUGH += (click.exceptions.Exit, click.ClickException, click.Abort)
except ImportError:  # typer >= 0.2x vendors its own click
    pass


def _error(message: str) -> None:
    # One line, on stderr: the user sees the reason, never a traceback.
    one_line = " ".join(message.split("\n")).strip()
    typer.echo(f"{PROG}: error: {one_line}", err=True)


class ForensicsGroup(TyperGroup):
    """Runs the subcommand and turns domain errors into exit statuses (the one place)."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _PASSTHROUGH:
            raise
        except KeyboardInterrupt:
            # Ctrl-C outside a replay's wait (a replay handles it itself and reports the partial
            # result): every output is written to a temporary file first, so nothing is half-written
            _error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except ForensicsError as exc:
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:  # noqa: BLE001 - anything else is our bug: exit 4
            if os.environ.get(ENV_TRACEBACK):
                traceback.print_exc()
            _error(f"internal error: {type(exc).__name__}: {exc} (set {ENV_TRACEBACK}=1 for the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    name=PROG,
    cls=ForensicsGroup,
    help="Forensics for a hakmem-style allocator's free() path: which route each free took, and why it crashed.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Forensics for a hakmem-style allocator's free() path."""


def _register() -> None:
    from forensics.cli import convert, gen, info, replay

    app.command("info", epilog=EXIT_CODES_EPILOG)(info.info)
    app.command("replay", epilog=EXIT_CODES_EPILOG)(replay.replay)
    app.command("convert", epilog=EXIT_CODES_EPILOG)(convert.convert)
    app.add_typer(gen.app, name="gen")
    from forensics.cli import routes as routes_cmd, run as run_cmd

    app.command("routes", epilog=EXIT_CODES_EPILOG)(routes_cmd.routes)
    # everything after the program's name belongs to the program, options included
    app.command("run", epilog=EXIT_CODES_EPILOG,
                context_settings={"allow_interspersed_args": False})(run_cmd.run)
    from forensics.cli import explain as explain_cli

    app.command("explain", epilog=EXIT_CODES_EPILOG)(explain_cli.explain)
    from forensics.cli import tui as tui_cli

    app.command("tui", epilog=EXIT_CODES_EPILOG)(tui_cli.tui)
    from forensics.cli import probe as probe_cli

    app.add_typer(probe_cli.app, name="probe")
    from forensics.cli import verify as verify_cli

    app.command("verify", epilog=EXIT_CODES_EPILOG)(verify_cli.verify)
    from forensics.cli import diff as diff_cli, firstbad as firstbad_cli, minimize as minimize_cli

    app.command("minimize", epilog=EXIT_CODES_EPILOG)(minimize_cli.minimize)
    app.command("diff", epilog=EXIT_CODES_EPILOG)(diff_cli.diff)
    app.command("firstbad", epilog=EXIT_CODES_EPILOG)(firstbad_cli.firstbad)
    from forensics.cli import import_cmd, record as record_cli, symbols as symbols_cli

    # everything after -- (or the program's name) belongs to the recorded program
    app.command("record", epilog=EXIT_CODES_EPILOG,
                context_settings={"allow_interspersed_args": False})(record_cli.record)
    app.command("import", epilog=EXIT_CODES_EPILOG)(import_cmd.import_log)
    app.command("symbols", epilog=EXIT_CODES_EPILOG)(symbols_cli.symbols)


_register()


def main() -> None:
    app(prog_name=PROG)


__all__ = ["app", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
