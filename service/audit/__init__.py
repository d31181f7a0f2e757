"""The audit log: recording entries, sequencing them into a Merkle transparency log, proofs,
checkpoints, witnessing partners' logs, submitting ours to their witnesses, and verifying a log.

- ``log``: :func:`~service.audit.log.record`, an entry in the action's own transaction;
  ``refusals`` and ``rotations`` record refusals and key rotations.
- ``models``: the tables of the log and of the witness.
- ``entries``: the canonical entry encoding (the leaf), the log's names, reading entry rows.
- ``sequencer``, ``tree``, ``checkpoints``: appending, the stored tree and its proofs, the signed
  checkpoints with their cosignatures.
- ``witness`` (this node as a witness: the I/O around ``witness_rules``, the pure checker) and
  ``submission`` (our checkpoints to partners' witnesses).
- ``verify``, ``sources``, ``leaves``: the verifier, which trusts nothing it reads.

The package has no re-exports: import from the module that does the work.
"""
