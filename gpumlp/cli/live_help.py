"""Help texts that name records: each placeholder an option's help may hold, filled in when the
help is shown with the records registered then (``datasets.register``, ``checkpoint.register``
after import too), so a registered dataset or format is listed like the built-in ones."""

from __future__ import annotations

from gpumlp.data import datasets


def _format_targets() -> str:
    from gpumlp.formats.checkpoint import targets  # numpy: only for the commands whose help names formats

    return targets()


LIVE_HELP = {"{datasets}": datasets.choices, "{formats}": _format_targets}


def live_help(template: str) -> str:
    """``template`` with each placeholder of ``LIVE_HELP`` replaced by what is registered now."""
    for key, names in LIVE_HELP.items():
        if key in template:
            template = template.replace(key, names())
    return template
