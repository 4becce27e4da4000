"""The ``gpumlp`` command: the typer app (app), its commands (commands), and what they print."""
