"""The `wanrt` command line: a thin click group; each subcommand lives beside the code it drives.

Subcommands are imported lazily (Polygraphy's habit): a subcommand whose optional dependency is missing is listed
as disabled with the reason, and the rest of the CLI keeps working.
"""

from __future__ import annotations

import importlib
import sys

import click

from wanrt import __version__
from wanrt.errors import WanrtError

# name -> (module, attribute). Keep in the order users meet them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wanrt.export.cli", "demo"),
    "export": ("wanrt.export.cli", "export"),
    "presets": ("wanrt.export.cli", "presets"),
    "build": ("wanrt.engines.cli", "build"),
    "refit": ("wanrt.engines.cli", "refit"),
    "bench": ("wanrt.runtime.cli", "bench"),
    "generate": ("wanrt.runtime.cli", "generate"),
    "serve": ("wanrt.runtime.cli", "serve"),
    "eval": ("wanrt.runtime.metrics_cli", "eval_cmd"),
    "weights": ("wanrt.runtime.metrics_cli", "weights"),
}


def _disabled(name: str, reason: str) -> click.Command:
    @click.command(name, help=f"(disabled: {reason})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args):  # noqa: ARG001 - swallows whatever was typed
        raise click.ClickException(f"'wanrt {name}' is disabled: {reason}")

    return cmd


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr = SUBCOMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:
            return _disabled(name, f"{e}; install the extra that provides it (see README)")
        except AttributeError:
            return _disabled(name, f"{module} has no '{attr}' in this install")

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WanrtError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
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
    cli()


if __name__ == "__main__":
    main()
