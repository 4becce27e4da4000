"""``python -m gpumlp`` and the ``gpumlp`` command: the command-line interface.

The entry point imports the CLI itself, so that a Ctrl-C while Python imports typer and gpumlp
(the first ~0.1 s) is one line and exit code 130 too, not a traceback."""

import sys


def main() -> None:
    try:
        from gpumlp.cli.commands import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
