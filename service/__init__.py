"""The imperative shell of an Entente node: API, persistence, blob store, federation, audit, CLI."""
