"""Artifacts at this node: sharing (``share``), listing and lookup (``listing``), reading
(``read``), revoking (``revoke``), the database rows they write (``rows``), and the start-up
sweep of what a crash left in the blob store (``sweep``).

The package has no re-exports: import from the module that does the work.
"""
