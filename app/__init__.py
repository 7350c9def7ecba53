"""The composition root: what puts the library, the daemon and the status site together.

    cli.py        `restorer`, the one console script; each subcommand lives in commands/<name>.py
    service.py    `restorer serve`: the daemon's parts and both HTTP servers in one process tree

Imports point one way: app -> status_site -> daemon -> pipeline. Nothing below imports app.
"""
