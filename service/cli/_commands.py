"""Registers every command module with the CLI app (imported for its side effects)."""

from __future__ import annotations

from service.cli import app
from service.cli import client as _client
from service.cli import files as _files
from service.cli import node as _node
from service.cli.audit import app as audit_app
from service.cli.partners import app as partner_app
from service.cli.policy import app as policy_app
from service.cli.tokens import app as token_app

app.command("init")(_node.init)
app.command("serve")(_node.serve)
app.command("demo")(_node.demo)
app.command("seal")(_files.seal)
app.command("verify")(_files.verify_)
app.command("open")(_files.open_)
app.command("share")(_client.share)
app.command("inbox")(_client.inbox)
app.command("get")(_client.get)
app.command("revoke")(_client.revoke)
app.add_typer(_node.identity_app, name="identity")
app.add_typer(_node.db_app, name="db")
app.add_typer(partner_app, name="partner")
app.add_typer(token_app, name="token")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
