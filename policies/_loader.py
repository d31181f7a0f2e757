"""Policy files to :class:`Policy` values: strict YAML, the published JSON Schema, then semantics.

The core works on text and a display name (``source``) so that it does no I/O;
:func:`load_file` and :func:`load_dir` are thin conveniences over it. Every problem becomes a
:class:`PolicyLoadError` naming the file, the line and the problem in words; nothing unknown is
ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from policies._model import Approval, Forbid, Obligation, Permit, Policy
from policies._set import PolicySet
from policies._vocab import CASES_FORMAT, FORMAT
from policies._yaml import MAX_BYTES, Parsed, YamlProblem, parse
from policies.errors import PolicyLoadError

__all__ = [
    "CASES_SUFFIX",
    "decode",
    "load_dir",
    "load_file",
    "load_policy",
    "parse_time",
    "policy_files",
    "schema",
    "validate",
]

# Golden-case files live beside the policies and are never loaded as policies.
CASES_SUFFIX = ".cases.yaml"

Problems = list[tuple[int, str]]
EMPTY_PERMIT = (
    "'permit' is empty: a policy needs at least one permit rule (or, to make a signed agreement "
    "stricter, forbid rules only)"
)


@cache
def schema(name: str = "policy") -> Mapping[str, Any]:
    """The published JSON Schema (``policy`` or ``cases``), from the package's ``schema/``."""
    text = resources.files("policies").joinpath("schema", f"{name}.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    s = schema(name)
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def decode(text: str | bytes, source: str) -> tuple[str, bytes]:
    """(text, bytes) of a file's content; bytes are what the SHA-256 is taken over."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_BYTES:
        raise PolicyLoadError(source, [(0, f"the file is larger than {MAX_BYTES} bytes")])
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyLoadError(source, [(line, "the file is not UTF-8 text")]) from None


def validate(text: str, source: str, kind: str) -> Parsed:
    """Parse ``text`` and check it against the ``kind`` schema; raise every problem at once."""
    try:
        parsed = parse(text)
    except YamlProblem as exc:
        raise PolicyLoadError(source, [(exc.line, exc.problem)]) from None
    data = parsed.data
    if isinstance(data, dict):
        fmt = data.get("format")
        if kind == "policy" and fmt == CASES_FORMAT:
            raise PolicyLoadError(source, [(1, "this is a golden-case file, not a policy")])
        if kind == "cases" and fmt == FORMAT:
            raise PolicyLoadError(source, [(1, "this is a policy, not a golden-case file")])
    elif kind == "policy":
        raise PolicyLoadError(
            source, [(parsed.line(()), "not a policy: expected keys such as format, id, permit")]
        )
    problems: Problems = []
    for error in _validator(kind).iter_errors(data):
        problems.extend(_describe(error, parsed, kind))
    if problems:
        raise PolicyLoadError(source, sorted(set(problems)))
    return parsed


# --- schema errors in words -------------------------------------------------------------------


def _where(path: tuple[str | int, ...], data: Any, kind: str) -> str:
    """``permit rule 'share-x'``, ``case 'name'``, ``the policy header`` and so on."""
    if len(path) >= 2 and path[0] in ("permit", "forbid", "cases") and isinstance(path[1], int):
        items = data.get(path[0]) if isinstance(data, dict) else None
        item = items[path[1]] if isinstance(items, list) and path[1] < len(items) else None
        noun = {"permit": "permit rule", "forbid": "forbid rule", "cases": "case"}[str(path[0])]
        key = "name" if path[0] == "cases" else "id"
        name = item.get(key) if isinstance(item, dict) else None
        where = f"{noun} {name!r}" if isinstance(name, str) else f"{noun} #{path[1] + 1}"
        if "obligations" in path[2:]:
            where = f"obligations of {where}"
        return where
    if len(path) >= 2 and path[0] == "approved_by" and isinstance(path[1], int):
        return f"approval #{path[1] + 1}"
    return "the policy header" if kind == "policy" else "the case file"


def _field(path: tuple[str | int, ...]) -> str:
    for part in reversed(path):
        if isinstance(part, str):
            return part
    return "the document"


_TYPES = {
    "string": "text",
    "integer": "a whole number",
    "array": "a list",
    "object": "a mapping of keys",
    "boolean": "true or false",
}


def _describe(
    error: jsonschema.ValidationError, parsed: Parsed, kind: str
) -> Iterator[tuple[int, str]]:
    path = tuple(error.absolute_path)
    sub = error.schema if isinstance(error.schema, dict) else {}
    where = _where(path, parsed.data, kind)
    field = _field(path)
    title = str(sub.get("title", field))
    instance = error.instance
    validator = error.validator
    value: Any = error.validator_value
    line = parsed.line(path)
    if validator == "additionalProperties" and isinstance(instance, dict):
        known = sorted(sub.get("properties", {}))
        for key in sorted(k for k in instance if k not in known):
            key_line = parsed.key_line((*path, key))
            if title == "obligations":
                yield (
                    key_line,
                    (f"{where}: unknown obligation {key!r} (expected one of {', '.join(known)})"),
                )
            else:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                yield key_line, f"{where}: unknown key {key!r}{hint}"
    elif validator == "required" and isinstance(instance, dict):
        for key in value:
            if key in instance:
                continue
            if key == "permit" and not path:
                yield line, "the policy has no 'permit' rules (an empty rule set is rejected)"
            elif path:
                yield line, f"{where} has no {key!r}"
            else:
                yield line, f"missing key {key!r}"
    elif validator == "enum":
        choices = ", ".join(str(c) for c in value)
        yield line, f"{where}: unknown {title} {instance!r} (expected one of {choices})"
    elif validator == "const":
        if field == "format":
            yield line, f"unsupported format {instance!r} (expected {value!r})"
        else:
            yield line, f"{where}: {field} must be {json.dumps(value)}"
    elif validator == "type":
        wanted = value
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        what = " or ".join(_TYPES.get(n, n) for n in names)
        if not path:
            yield line, f"not a {'policy' if kind == 'policy' else 'case file'}: expected {what}"
        else:
            yield line, f"{where}: {field} must be {what}"
    elif validator in ("minItems", "minProperties") and not instance:
        if path == ("permit",):
            yield line, "'permit' is empty: a policy needs at least one permit rule"
        else:
            yield line, f"{where}: {field} is empty"
    elif validator == "uniqueItems":
        yield line, f"{where}: {field} lists a value twice"
    elif validator == "pattern":
        if title == "text":
            yield line, f"{where}: {field} is blank"
        else:
            hint = str(sub.get("x-hint", ""))
            yield line, f"{where}: invalid {title} {instance!r}" + (f" ({hint})" if hint else "")
    elif validator == "minLength":
        yield line, f"{where}: {field} is empty"
    elif validator == "minimum":
        yield line, f"{where}: {field} must be at least {value}"
    else:
        yield line, f"{where}: {error.message}"


# --- times ------------------------------------------------------------------------------------


_LAST_YEAR = 9998  # times beyond cannot have a day, or a clock skew, added to them


def parse_time(value: str, *, end_of_day: bool = False) -> datetime:
    """A date (00:00 UTC, or the end of that day with ``end_of_day``) or an RFC 3339 time.

    Raises ``ValueError`` with a message fit for a policy officer, for a time past the year 9998
    in UTC too (a "no end" written as 9999-12-31 overflowed when the end of its day, or the
    window, was worked out: leave ``valid_until`` out for no end).
    """
    if len(value) == 10:
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"invalid date {value!r}: {exc}") from None
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    else:
        try:
            moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        except ValueError as exc:
            raise ValueError(f"invalid time {value!r}: {exc}") from None
        if moment.utcoffset() is None:
            raise ValueError(f"invalid time {value!r}: it needs a timezone, e.g. Z")
    try:
        in_range = moment.astimezone(UTC).year <= _LAST_YEAR
    except OverflowError:
        in_range = False
    if not in_range:
        raise ValueError(f"time {value!r} is out of range: a year up to {_LAST_YEAR} (UTC)")
    return moment + timedelta(days=1) if end_of_day and len(value) == 10 else moment


def _time(
    data: Mapping[str, Any],
    key: str,
    parsed: Parsed,
    path: tuple[str | int, ...],
    problems: Problems,
    *,
    end_of_day: bool = False,
) -> datetime | None:
    raw = data.get(key)
    if raw is None:
        return None
    try:
        return parse_time(str(raw), end_of_day=end_of_day)
    except ValueError as exc:
        problems.append((parsed.line((*path, key)), str(exc)))
        return None


# --- the policy -------------------------------------------------------------------------------


def load_policy(text: str | bytes, *, source: str = "<policy>") -> Policy:
    """Load one policy from the content of its file; ``source`` names the file in errors."""
    decoded, raw = decode(text, source)
    parsed = validate(decoded, source, "policy")
    data: dict[str, Any] = parsed.data
    problems: Problems = []
    valid_from = _time(data, "valid_from", parsed, (), problems)
    valid_until = _time(data, "valid_until", parsed, (), problems, end_of_day=True)
    if valid_from and valid_until and valid_until <= valid_from:
        problems.append(
            (
                parsed.line(("valid_until",)),
                "valid_until is not after valid_from: the window is empty",
            )
        )
    approvals = []
    for i, item in enumerate(data["approved_by"]):
        try:
            on = date.fromisoformat(item["date"])
        except ValueError as exc:
            problems.append(
                (parsed.line(("approved_by", i, "date")), f"invalid date {item['date']!r}: {exc}")
            )
            continue
        approvals.append(Approval(item["name"], item["role"], on))
    if problems or valid_from is None or valid_until is None:
        raise PolicyLoadError(source, problems)
    permits = tuple(
        _permit(rule, parsed.line(("permit", i))) for i, rule in enumerate(data["permit"])
    )
    forbids = tuple(
        _forbid(rule, parsed.line(("forbid", i))) for i, rule in enumerate(data.get("forbid", ()))
    )
    if not permits and not forbids:
        raise PolicyLoadError(source, [(parsed.line(("permit",)), EMPTY_PERMIT)])
    return Policy(
        id=data["id"],
        version=data["version"],
        mou=data["mou"],
        partner=data["partner"],
        valid_from=valid_from,
        valid_until=valid_until,
        approved_by=tuple(approvals),
        permits=permits,
        forbids=forbids,
        description=data.get("description", ""),
        source=source,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _set(value: list[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _obligations(data: Mapping[str, Any]) -> tuple[Obligation, ...]:
    out = []
    for kind, value in data.items():
        if kind == "attribute":
            out.append(Obligation.attribute(value))
        elif kind == "retain_max":
            out.append(Obligation.retain_max(value["days"]))
        elif kind == "delete_at_expiry":
            out.append(Obligation.delete_at_expiry())
        elif kind == "inform":
            out.append(Obligation.inform())
        elif kind == "onward":
            out.append(
                Obligation.onward(value["to"], originator_approval=value["originator_approval"])
            )
    return tuple(sorted(out))


def _permit(rule: Mapping[str, Any], line: int) -> Permit:
    return Permit(
        id=rule["id"],
        clause=rule["clause"],
        actions=frozenset(rule["actions"]),
        tlp=frozenset(rule["tlp"]),
        topics=_set(rule.get("topics")),
        purposes=_set(rule.get("purposes")),
        embargo=rule.get("embargo", "ended"),
        expiry=rule.get("expiry", "any"),
        sealing=rule.get("sealing", "any"),
        onward_to=_set(rule.get("onward_to")),
        originator_approval=rule.get("originator_approval", False),
        obligations=_obligations(rule.get("obligations", {})),
        description=rule.get("description", ""),
        line=line,
    )


def _forbid(rule: Mapping[str, Any], line: int) -> Forbid:
    return Forbid(
        id=rule["id"],
        clause=rule["clause"],
        actions=frozenset(rule["actions"]),
        tlp=_set(rule.get("tlp")),
        topics=_set(rule.get("topics")),
        purposes=_set(rule.get("purposes")),
        embargo=rule.get("embargo", "any"),
        expiry=rule.get("expiry", "any"),
        sealing=rule.get("sealing", "any"),
        onward_to=_set(rule.get("onward_to")),
        description=rule.get("description", ""),
        line=line,
    )


# --- files (the thin I/O conveniences) --------------------------------------------------------


def load_file(path: str | Path) -> Policy:
    """Read and load one policy file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(str(path), [(0, f"cannot read the file: {exc.strerror}")]) from None
    return load_policy(raw, source=str(path))


def policy_files(folder: str | Path) -> list[Path]:
    """The policy files of a folder: ``*.yaml`` and ``*.yml``, not golden cases, sorted."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in (".yaml", ".yml") and not p.name.endswith(CASES_SUFFIX)
    )


def load_dir(folder: str | Path) -> PolicySet:
    """Load every policy file of a folder into one set (``<home>/policies`` on a node).

    Files are loaded in name order and the first bad one raises; a folder without policy files
    is an empty set, which denies everything.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PolicyLoadError(str(folder), [(0, "not a folder")])
    return PolicySet.from_policies(load_file(p) for p in policy_files(folder))
