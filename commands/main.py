"""The `wanrt` command line: a thin click group; each subcommand lives beside the code it drives.

Subcommands are imported lazily (Polygraphy's habit): a subcommand whose optional dependency is missing is listed
as disabled with the reason, and the rest of the CLI keeps working.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import signal
import sys
from pathlib import Path

import click
from click.utils import make_default_short_help

from wanrt import __version__
from wanrt.engines import registry
from wanrt.errors import MissingDependencyError, StorageError, WanrtError, os_error_line
from wanrt.quiet import quiet_expected_notices

# name -> (module, attribute). Keep in the order users meet them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wanrt.commands.export", "demo"),
    "export": ("wanrt.commands.export", "export"),
    "presets": ("wanrt.commands.export", "presets"),
    "extract": ("wanrt.commands.extract", "extract"),
    "build": ("wanrt.commands.build", "build"),
    "refit": ("wanrt.commands.build", "refit"),
    "bench": ("wanrt.commands.bench", "bench"),
    "generate": ("wanrt.commands.generate", "generate"),
    "serve": ("wanrt.commands.serve", "serve"),
    "pack": ("wanrt.commands.serve", "pack"),
    "verify": ("wanrt.commands.serve", "verify"),
    "eval": ("wanrt.commands.eval", "eval_cmd"),
    "weights": ("wanrt.commands.eval", "weights"),
}


# Optional dependencies a subcommand cannot work without, checked with importlib.util.find_spec before anything runs
# (and before listing), so a missing one disables that subcommand with the reason instead of failing after the work.
# name -> ((importable modules, any one suffices), what to install), ...
REQUIRES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "generate": ((("imageio",), "pip install 'wanrt[video]'"), (("imageio_ffmpeg",), "pip install 'wanrt[video]'")),
    # any registered engine flavour (engines/registry.py) will do
    "build": ((tuple(m for f in registry.flavours() for m in f.modules),
               "pip install " + " or ".join(dict.fromkeys(f"'wanrt[{f.extra}]'" for f in registry.flavours()))),),
    "serve": ((("ray",), "pip install 'wanrt[serve]'"), (("fastapi",), "pip install 'wanrt[serve]'"),
              (("multipart", "python_multipart"), "pip install 'wanrt[serve]'"),
              (("imageio_ffmpeg",), "pip install 'wanrt[serve]'")),
}


def missing_requirement(name: str) -> str | None:
    """Why subcommand `name` cannot run here (a missing module and what to install), or None."""
    for modules, install in REQUIRES.get(name, ()):
        if not any(_importable(m) for m in modules):
            return f"needs {' or '.join(modules)}: {install}"
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken __spec__
        return False


def short_help(name: str) -> str:
    """The first line of a subcommand's docstring, read from its source without importing it: importing the command
    modules pulls in torch (seconds), and listing commands should take milliseconds."""
    module, attr = SUBCOMMANDS[name]
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (ImportError, ValueError, AttributeError, TypeError, OSError, SyntaxError):
        return ""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == attr:
            return (ast.get_docstring(node) or "").strip().split("\n\n")[0].replace("\n", " ")
    return ""


def _disabled(name: str, reason: str) -> click.Command:
    @click.command(name, help=f"(disabled: {reason})", add_help_option=False,
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args):  # noqa: ARG001 - swallows whatever was typed
        raise MissingDependencyError(f"'wanrt {name}' is disabled: {reason}")

    return cmd


class _NeedsExtra:
    """Mixed into a subcommand whose extra is missing: `--help` still shows its real options (with the extra to
    install on top), and anything else is refused before parsing, in one line (exit 3), as the README promises."""

    missing_reason = ""

    def parse_args(self, ctx, args):
        if not any(a in ctx.help_option_names for a in args):
            raise MissingDependencyError(f"'wanrt {self.name}' is disabled: {self.missing_reason}")
        return super().parse_args(ctx, args)


def _needs_extra(cmd: click.Command, reason: str) -> click.Command:
    """A copy of `cmd` (the original stays as imported) that says `reason` in its help and refuses to run."""
    needs = copy.copy(cmd)
    needs.__class__ = type(f"NeedsExtra{type(cmd).__name__}", (_NeedsExtra, type(cmd)), {})
    needs.missing_reason = reason
    needs.help = f"(disabled here: {reason})\n\n{inspect.cleandoc(cmd.help or '')}"
    return needs


class LazyGroup(click.Group):
    def list_commands(self, _ctx):
        return list(SUBCOMMANDS)

    def get_command(self, _ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr = SUBCOMMANDS[name]
        try:
            # command modules import their heavy and optional libraries inside the commands, so this works (and
            # `--help` is instant) whether or not the subcommand's extra is installed
            cmd = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            return _disabled(name, f"{e}; install the extra that provides it (see README)")
        except AttributeError:
            return _disabled(name, f"{module} has no '{attr}' in this install")
        reason = missing_requirement(name)
        return cmd if reason is None else _needs_extra(cmd, reason)

    def format_commands(self, _ctx, formatter):
        """The command list without importing any command module (see short_help)."""
        rows = []
        width = formatter.width - 6 - max(len(n) for n in SUBCOMMANDS)
        for name in SUBCOMMANDS:
            reason = missing_requirement(name)
            text = f"(disabled: {reason})" if reason else make_default_short_help(short_help(name), width)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WanrtError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:
            # disk full, read-only mount, permission denied mid-work: the machine, not the input; one line, exit 4
            click.echo(f"error: {os_error_line(e)}", err=True)
            sys.exit(StorageError.exit_code)
        except KeyboardInterrupt:
            # Ctrl-C: temporaries are already removed on the way out (atomic writes); the shell's 128+SIGINT
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as e:
            # `wanrt weights` alone asks for its help: print it as help, not squashed into an error line
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.UsageError as e:
            # click's own format is four lines (usage, hint, blank, error); keep bad input to one line everywhere
            where = e.ctx.command_path if e.ctx is not None else "wanrt"
            message = " ".join(e.format_message().split())
            click.echo(f"error: {message} (see '{where} --help')", err=True)
            sys.exit(e.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wanrt")
def cli():
    """Export Wan2.1 I2V + LoRA to ONNX and TensorRT, run it, and benchmark it at equal quality."""


def main() -> None:
    # Ctrl-C exits 130 and SIGTERM 143 (README): a signal mask inherited blocked (a parent that forked while blocking
    # them, as some test runners' and libraries' threads do) would hold both pending until the work ended. An
    # inherited SIG_IGN is left alone: a shell's background job is meant to ignore the terminal's Ctrl-C.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    quiet_expected_notices()
    cli(prog_name="wanrt")  # also under `python -m wanrt`, so usage lines and hints name the real command


if __name__ == "__main__":
    main()
