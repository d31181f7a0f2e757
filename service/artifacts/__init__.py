"""Artifacts at this node: sharing (``share``), listing and lookup (``listing``), reading
(``read``), revoking (``revoke``), the database rows they write (``rows``), the start-up
sweep of what a crash left in the blob store (``sweep``), and the one enforcement step that
sharing, reading, receiving and onward sharing decide and refuse through (``enforce``).

The package has no re-exports: import from the module that does the work.
"""
