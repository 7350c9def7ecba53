"""The composition root: what puts the library, the daemon and the status site together.

    cli.py        `restorer`, the one console script; each subcommand lives in commands/<name>.py
    flags.py      command-line flags made from the Settings fields each command lists
    service.py    `restorer serve`: the daemon's parts and both HTTP servers in one process tree

Imports point one way: app -> status_site -> daemon -> pipeline. Nothing below imports app; app uses
status_site's public surface only, and may wire the daemon's parts directly (pyproject.toml's contracts).
"""
