"""``python -m gpumlp`` runs the command-line interface."""

from gpumlp.cli import main

if __name__ == "__main__":
    main()
