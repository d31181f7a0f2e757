"""``entente policy``: check, explain, test and compare MOU policy files.

These commands work on files (a node's ``<home>/policies`` or any folder or file given) and never
talk to a running node (``reload`` asks one to re-read its folder). ``check --home`` without files
also checks the home's policies against the node: its own id (a policy about itself is an error)
and the partners pinned in its database (read, never migrated): a policy about an unpinned node, or
a pinned partner without one, is a warning. Output is rich tables on a terminal and plain aligned
text otherwise.
Exit codes: 0 on success, 1 when a file fails to load, a golden case fails or a home holds a policy
about itself, 2 on bad usage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

import policies
from crypto.vocab import TLP_LABELS
from policies import (
    CASES_SUFFIX,
    PolicyError,
    PolicyLoadError,
    PolicySet,
    Request,
)
from service.cli._policy_home import check_against_home
from service.cli._terminal import SafeTable, TerminalConsole, printable
from service.cli.policy_examples import examples
from service.errors import UsageError

app = typer.Typer(
    help="Check, explain, test and compare MOU policies (YAML files, one per partner).",
    no_args_is_help=True,
)

app.command("examples")(examples)

_console = TerminalConsole(highlight=False, soft_wrap=True)
_err = TerminalConsole(stderr=True, highlight=False, soft_wrap=True)

PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Policy files or folders (default: HOME/policies, else the bundled example MOUs)",
        show_default=False,
    ),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="ENTENTE_HOME",
        help="A node home; its policies are HOME/policies",
        show_default=False,
    ),
]


# --- where the files are ----------------------------------------------------------------------


def _examples_root() -> Path:
    return Path(str(policies.examples_dir()))


def _home_policies(home: Path) -> Path:
    folder = home / "policies"
    if not folder.is_dir():
        raise UsageError(f"{home} has no policies folder ({folder})")
    return folder


def _policy_groups(paths: Sequence[Path], *, recursive: bool) -> list[tuple[str, list[Path]]]:
    """(label, policy files): each folder is one node's set; files given together are one set."""
    groups: list[tuple[str, list[Path]]] = []
    loose: list[Path] = []
    for path in paths:
        if path.is_dir():
            folders = [path]
            if recursive:
                folders += sorted(p for p in path.rglob("*") if p.is_dir())
            found = [(str(f), policies.policy_files(f)) for f in folders]
            # An empty folder is reported as such, but not a parent of folders with policies.
            groups += [(label, files) for label, files in found if files] or [(str(path), [])]
        elif path.is_file():
            loose.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    if loose:
        groups.append((", ".join(str(p) for p in loose), loose))
    return groups


def _resolve(paths: list[Path] | None, home: Path | None) -> tuple[list[Path], bool]:
    """The paths to use and whether they are the bundled examples."""
    if paths:
        return paths, False
    if home is not None:
        return [_home_policies(home)], False
    return [_examples_root()], True


def _load_set(files: Iterable[Path]) -> PolicySet:
    return PolicySet.from_policies(policies.load_file(p) for p in files)


# --- output -----------------------------------------------------------------------------------


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise (for pipes and logs)."""
    if _console.is_terminal:
        # Text, not markup: clause references such as "[example]" must print as written.
        table = SafeTable(*columns, title=Text(printable(title)), title_justify="left")
        for row in rows:
            table.add_row(*row)
        _console.print(table)
        return
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    typer.echo(printable(title))
    for row in (columns, *rows):
        typer.echo(
            "  "
            + "  ".join(
                printable(cell).ljust(w) for cell, w in zip(row, widths, strict=True)
            ).rstrip()
        )


def _echo(text: str = "", *, style: str | None = None) -> None:
    if _console.is_terminal and style:
        _console.print(text, style=style, markup=False)
    else:
        typer.echo(printable(text, lines=True))


def _report_load_error(exc: PolicyError) -> None:
    lines = exc.lines() if isinstance(exc, PolicyLoadError) else [str(exc)]
    for line in lines:
        typer.echo(f"entente: {printable(line)}", err=True)


# --- check ------------------------------------------------------------------------------------


@app.command()
def check(paths: PathsArg = None, home: HomeOpt = None) -> None:
    """Validate policy files and summarise, per partner and action, what they allow.

    With --home (and no files), also check them against that node: none may be about the node
    itself, and each should be about a pinned partner, and each pinned partner have one.
    """
    roots, bundled = _resolve(paths, home)
    if bundled:
        _echo(f"No files given: checking the bundled example MOUs in {roots[0]}")
    now = datetime.now(UTC)
    failed = 0
    loaded = 0
    warnings = 0
    for label, files in _policy_groups(roots, recursive=True):
        good = []
        for path in files:
            try:
                good.append(policies.load_file(path))
            except PolicyError as exc:
                failed += 1
                _report_load_error(exc)
        try:
            policy_set = PolicySet.from_policies(good)
        except PolicyError as exc:
            failed += 1
            _report_load_error(exc)
            continue
        if not files:
            _echo(f"{label}: no policy files (every request would be denied)")
        loaded += len(policy_set)
        for policy in policy_set:
            _summarise(policy, now)
        if home is not None and not paths:  # the home's own folder: check it against the node
            errors, warned = check_against_home(policy_set, home)
            failed += errors
            warnings += warned
    if failed:
        typer.echo(f"entente: {failed} problem(s); see above", err=True)
        raise typer.Exit(1)
    more = f", {warnings} warning(s) above" if warnings else ""
    _echo(f"OK: {loaded} polic{'y' if loaded == 1 else 'ies'} valid{more}", style="bold green")


def _summarise(policy: policies.Policy, now: datetime) -> None:
    _echo()
    _echo(f"{policy.source}", style="bold")
    _echo(f"  partner    {policy.partner}")
    _echo(f"  policy     {policy.id} version {policy.version}   sha256 {policy.sha256}")
    _echo(f"  mou        {policy.mou}")
    window = " until ".join(
        policies.format_time(t) for t in (policy.valid_from, policy.valid_until)
    )
    state = "in force now" if policy.in_force(now) else "NOT in force now"
    _echo(f"  in force   {window} ({state})", style=None if policy.in_force(now) else "bold red")
    approvals = "; ".join(f"{a.name}, {a.role}, {a.date.isoformat()}" for a in policy.approved_by)
    _echo(f"  approved   {approvals}")
    rows = policies.summarize_policy(policy)
    _table(
        f"Rules for partner {policy.partner}",
        [
            "action",
            "rule",
            "effect",
            "TLP",
            "topics",
            "purposes",
            "conditions",
            "obligations",
            "clause",
        ],
        [
            [
                r.action,
                r.rule,
                r.kind,
                r.tlp,
                r.topics,
                r.purposes,
                r.conditions,
                r.obligations,
                r.clause,
            ]
            for r in rows
        ],
    )
    covered = {r.action for r in rows if r.kind == "permit"}
    missing = [a for a in policies.ACTIONS if a not in covered]
    if missing:
        _echo(f"  never permitted (denied by default): {', '.join(missing)}")


# --- explain ----------------------------------------------------------------------------------


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return policies.parse_time(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _label(value: str | None) -> str | None:
    if value is None:
        return None
    upper = value.upper()
    candidate = upper if upper.startswith("TLP:") else f"TLP:{upper}"
    return candidate if candidate in TLP_LABELS else value


@app.command()
def explain(
    partner: Annotated[str, typer.Option("--partner", help="The partner node id, e.g. ca-aisi")],
    action: Annotated[str, typer.Option("--action", help="share, receive, read or onward_share")],
    paths: PathsArg = None,
    home: HomeOpt = None,
    tlp: Annotated[
        str | None, typer.Option("--tlp", help="TLP 2.0 label, e.g. TLP:AMBER (or amber)")
    ] = None,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="A topic (repeat for several)")
    ] = None,
    purpose: Annotated[
        list[str] | None, typer.Option("--purpose", help="A purpose (repeat for several)")
    ] = None,
    embargo_until: Annotated[
        str | None, typer.Option("--embargo-until", help="Embargo end (date or RFC 3339 time)")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="Expiry (date or RFC 3339 time)")
    ] = None,
    onward_to: Annotated[
        str | None, typer.Option("--onward-to", help="onward_share: the third node")
    ] = None,
    originator_approved: Annotated[
        bool, typer.Option("--originator-approved", help="onward_share: the originator approved")
    ] = False,
    sealing: Annotated[
        str | None,
        typer.Option("--sealing", help="How it is sealed: post-quantum or classic"),
    ] = None,
    now: Annotated[
        str | None, typer.Option("--now", help="Decide as of this time (default: now)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON")] = False,
) -> None:
    """Decide one request against a node's policies and say why, as a policy officer reads it.

    Exits 0 whether the request is allowed or denied; the decision is the output.
    """
    if not paths and home is None:
        raise UsageError(
            "give the node's policy folder or files, or --home; e.g. "
            f"entente policy explain {_examples_root() / 'uk-aisi'} --partner ca-aisi ..."
        )
    roots, _ = _resolve(paths, home)
    groups = _policy_groups(roots, recursive=False)
    if len(groups) != 1:
        raise UsageError("explain decides against one node's policies: give one folder, or files")
    policy_set = _load_set(groups[0][1])
    request = Request(
        partner=partner,
        action=action,
        tlp=_label(tlp),
        topics=frozenset(topic or ()),
        purposes=frozenset(purpose or ()),
        embargo_until=_time(embargo_until, "--embargo-until"),
        expires_at=_time(expires_at, "--expires-at"),
        onward_to=onward_to,
        originator_approved=originator_approved,
        sealing=sealing,
    )
    at = _time(now, "--now") or datetime.now(UTC).replace(microsecond=0)
    decision = policies.evaluate(policy_set, request, now=at)
    if as_json:
        typer.echo(json.dumps(decision.to_json(), indent=2, ensure_ascii=False))
        return
    text = policies.explain(decision)
    head, _, rest = text.partition("\n")
    _echo(head, style="bold green" if decision.allowed else "bold red")
    if rest:
        _echo(rest)


# --- test -------------------------------------------------------------------------------------


def _case_files(roots: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found += sorted(root.rglob(f"*{CASES_SUFFIX}"))
        elif root.is_file():
            if not root.name.endswith(CASES_SUFFIX):
                raise UsageError(f"{root} is not a golden-case file (*{CASES_SUFFIX})")
            found.append(root)
        else:
            raise UsageError(f"no such file or folder: {root}")
    return found


@app.command("test")
def run_golden_cases(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Golden-case files (*.cases.yaml) or folders to search "
            "(default: HOME/policies, else the bundled example MOUs)",
            show_default=False,
        ),
    ] = None,
    home: HomeOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List passing cases too")
    ] = False,
) -> None:
    """Run the golden cases beside the policies: each request must get its expected decision."""
    roots, bundled = _resolve(paths, home)
    if bundled:
        _echo(f"No files given: testing the bundled example MOUs in {roots[0]}")
    files = _case_files(roots)
    if not files:
        raise UsageError(
            f"no golden-case files (*{CASES_SUFFIX}) under {', '.join(map(str, roots))}"
        )
    total = failed = broken = 0
    rows: list[list[str]] = []
    for path in files:
        try:
            case_file = policies.load_cases(path.read_bytes(), source=str(path))
            policy = policies.load_file(path.parent / case_file.policy)
        except PolicyError as exc:
            broken += 1
            _report_load_error(exc)
            continue
        for result in policies.run_cases(case_file, policy):
            total += 1
            if result.passed:
                if verbose:
                    rows.append([str(path), result.case.name, "pass", result.decision.summary])
                continue
            failed += 1
            rows.append(
                [f"{path}:{result.case.line}", result.case.name, "FAIL", "; ".join(result.failures)]
            )
    if rows:
        _table("Golden cases", ["file", "case", "result", "detail"], rows)
    summary = f"{total} cases in {len(files)} files: {total - failed} passed, {failed} failed"
    if broken:
        summary += f", {broken} file(s) could not be loaded"
    if failed or broken:
        typer.echo(f"entente: {summary}", err=True)
        raise typer.Exit(1)
    _echo(summary, style="bold green")


# --- diff -------------------------------------------------------------------------------------


def _side(path: Path) -> PolicySet:
    if path.is_dir():
        return policies.load_dir(path)
    if path.is_file():
        return PolicySet.from_policies([policies.load_file(path)])
    raise UsageError(f"no such file or folder: {path}")


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The policy file or folder before the amendment")],
    new: Annotated[Path, typer.Argument(help="The policy file or folder after it")],
) -> None:
    """Show what an MOU amendment changes, per partner and action, and whether it widens access."""
    changes = policies.diff(_side(old), _side(new))
    if not changes:
        _echo("No changes.")
        return
    _table(
        f"Changes from {old} to {new}",
        ["partner", "action", "rule", "change", "effect", "detail"],
        [[c.partner, c.action, c.subject, c.change, c.effect, c.detail] for c in changes],
    )
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.effect] = counts.get(c.effect, 0) + 1
    _echo(
        f"{len(changes)} change(s): "
        + ", ".join(
            f"{counts[e]} {e}" for e in ("widens", "narrows", "mixed", "neutral") if e in counts
        )
    )


@app.command()
def reload(
    url: Annotated[str, typer.Option("--url", envvar="ENTENTE_URL", help="The node")],
    token: Annotated[
        str,
        typer.Option("--token", envvar="ENTENTE_TOKEN", help="An admin token"),
    ],
) -> None:
    """Tell a running node to reload its policy folder, for all its replicas (audited)."""
    import httpx

    from service.cli._http import raise_for as _raise_for
    from service.errors import RemoteError

    try:
        response = httpx.post(
            url.rstrip("/") + "/v1/admin/policies/reload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
        )
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot reach the node: {exc}") from None
    _raise_for(response)
    data = response.json()
    if response.status_code == 202:  # two-person control (ENTENTE_TWO_PERSON_POLICY_RELOAD)
        _echo(
            f"not reloaded yet: waits for a second admin until {data['expires_at'][:19]}; "
            f"they run: entente approvals approve {data['id']}"
        )
        return
    state = "changed" if data["changed"] else "unchanged"
    _echo(
        f"policy set {state}: version {data['version']}, sha256 {data['sha256'][:16]}…, "
        f"{len(data['policies'])} policies (in force at every replica)"
    )
    for ref in data["policies"]:
        _echo(f"  {ref['partner']}: {ref['id']} v{ref['version']}")
