"""Entente's cryptographic core: pure functions over bytes and streams.

Keys and fingerprints (Ed25519, ML-DSA-65), age v1 encryption (X25519 and hybrid post-quantum),
DSSE-signed manifests, RFC 6962 Merkle proofs, C2SP signed notes and checkpoints, and RFC 9421
HTTP message signatures. No I/O beyond the streams a caller passes in, no settings, no database;
time and randomness are parameters. This is the only package that imports ``cryptography.hazmat``.
"""
