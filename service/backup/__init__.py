"""Backup and restore of a node (``entente backup``, ``entente restore``; docs/backup.md).

``archive``: the backup's container (a folder or a tar file) and its manifest; ``take``: a
consistent snapshot of a node that may be running; ``restore``: into a new home and an empty
database, every digest checked before anything is written; ``pg``: the PostgreSQL client tools
they run.
"""
