"""The one path by which the CLI prints text it did not write itself.

Partners choose their names, URLs and titles, and a node relays problem details; all of it can
reach an operator's terminal. Two things make such text dangerous there: control characters
(ANSI/OSC escape sequences that recolour, clear the screen, set the window title or forge
hyperlinks; C1 controls that some terminals read as escapes; bidi overrides that reorder what is
shown; new lines that forge table rows or extra output lines) and Rich markup, which Rich would
apply (styles, ``[link=…]``) or refuse with a traceback (an unmatched ``[/x]``).

* :func:`printable` shows every such character as a visible escape (``\\x1b``, ``\\u202e``),
  so the operator sees that something is off and nothing is performed.
* :func:`outside` is :func:`printable` plus :func:`rich.markup.escape`: for a value placed
  inside a markup string printed by Rich.
* :class:`SafeTable` turns every string cell into literal text (never markup).
* :class:`TerminalConsole` is the Rich console of every CLI command: whatever string it renders
  (our own markup included) passes :func:`printable` first, markup it cannot parse is shown
  literally instead of raising, and no markup makes a hyperlink, so a value someone forgot to
  wrap is still inert.
* :func:`plain_line` is for ``typer.echo`` (no markup): one line, printable.

This module does not decide what is untrusted (every value that came from a database row, a
file, a partner or a node's answer is) and does not touch JSON output, whose encoder already
escapes control characters (``ensure_ascii``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.errors import MarkupError, StyleSyntaxError
from rich.markup import escape
from rich.measure import Measurement
from rich.style import Style
from rich.table import Table
from rich.text import Span, Text

from crypto.names import HIDDEN

__all__ = ["SafeTable", "TerminalConsole", "outside", "plain_line", "printable"]

# C0 controls, DEL, C1 controls; bidi embeddings, overrides, isolates and marks; the Unicode
# line and paragraph separators; the byte order mark and interlinear annotations (the set file
# names may not hold either); with lines kept, all but tab and newline.
_UNSAFE = HIDDEN
_UNSAFE_KEEP_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ufeff\ufff9-\ufffb]"
)


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, lines: bool = False) -> str:
    """``value`` as text with every control, bidi and separator character shown as an escape.

    ``lines=True`` keeps new lines and tabs (for multi-line text the CLI itself composed)."""
    return (_UNSAFE_KEEP_LINES if lines else _UNSAFE).sub(_visible, str(value))


def outside(value: object) -> str:
    """``value`` for a Rich markup string: printable, and its markup shown literally."""
    return escape(printable(value))


def plain_line(value: object) -> str:
    """``value`` as one printable line, for output without markup (``typer.echo``)."""
    return printable(value)


UNBOUNDED_WIDTH = 100_000  # "no limit": wider than any table the CLI prints


def unbounded(console: Console) -> bool:
    """Whether ``console`` writes to a pipe or a file with no width asked for (``COLUMNS``)."""
    return not console.is_terminal and "COLUMNS" not in os.environ and console.width == 80


class SafeTable(Table):
    """A Rich table whose string cells are literal text: printable, never parsed as markup.

    Nothing a user may need to copy is cut or broken: where the rows fit the terminal's width
    whole they are a table; where they do not (a narrow terminal, a long title), each row is
    printed as a record, one ``column  value`` line per cell, so ids, fingerprints and
    digests stay on one line. A value longer than a whole line is folded, never cut short
    with an ellipsis."""

    def __init__(self, *headers: str, **kwargs: Any) -> None:
        super().__init__(*headers, **kwargs)
        for column in self.columns:
            column.overflow = "fold"

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        cells = [Text(printable(c)) if isinstance(c, str) else c for c in renderables]
        super().add_row(*cells, **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if unbounded(console):  # a pipe or a file: the natural width, whatever it is
            options = options.update(max_width=UNBOUNDED_WIDTH)
        widths = [
            max(
                (Measurement.get(console, options, c).maximum for c in (col.header, *col.cells)),
                default=0,
            )
            for col in self.columns
        ]
        if sum(widths) + 3 * len(widths) + 1 <= options.max_width or not self.columns:
            yield from super().__rich_console__(console, options)
            return
        label = max(Measurement.get(console, options, col.header).maximum for col in self.columns)
        if self.title:
            yield self.title
        for index, row in enumerate(zip(*(col.cells for col in self.columns), strict=True)):
            record = Table.grid(padding=(0, 2))
            record.add_column(style="bold", no_wrap=True, min_width=label)
            record.add_column(overflow="fold")
            for col, cell in zip(self.columns, row, strict=True):
                record.add_row(col.header, cell)
            if index:
                yield Text("")
            yield record


def _unlinked(style: str | Style) -> str | Style:
    """``style`` without a hyperlink (the CLI never prints one; a ``[link=…]`` is injected)."""
    if isinstance(style, str):
        if "link" not in style.split():
            return style
        try:
            style = Style.parse(style)
        except StyleSyntaxError:
            return ""
    return style.update_link(None) if style.link else style


class TerminalConsole(Console):
    """The CLI's Rich console: every rendered string passes :func:`printable` (new lines kept),
    markup that does not parse is shown as the characters it is, and no markup makes a
    terminal hyperlink (OSC 8), so a value someone forgot to pass through :func:`outside` can
    at most change colours.

    Output to a pipe or a file is not cut at a made-up width (Rich's 80 columns): a
    :class:`SafeTable` is laid out at its natural width there, one line per row for ``grep``
    and ``cut``, unless ``COLUMNS`` says a width."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if unbounded(self):
            kwargs.setdefault("crop", False)
        super().print(*objects, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        text = printable(text, lines=True)
        try:
            rendered = super().render_str(text, **kwargs)
        except MarkupError:
            rendered = super().render_str(escape(text), **kwargs)
        rendered.spans = [Span(s.start, s.end, _unlinked(s.style)) for s in rendered.spans]
        return rendered
