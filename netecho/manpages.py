"""
The manual pages ``netecho(1)`` and ``twistd-netecho(8)``, made from the
definitions the programs themselves use, so they cannot drift from them:
``netecho``'s argparse parser (L{netecho.cli.build_parser}, rendered by
argparse-manpage) and twistd's L{netecho.tap.Options} (rendered here from the
same data twisted.python.usage turns into C{--help}).

Run from the checkout to write them into C{man/} (argparse-manpage comes with
the C{test} extra; netecho itself does not need it)::

    python -m netecho.manpages man

The pages carry no date (a page made today and one made tomorrow are the
same page) and wrap nothing themselves: groff fills the text.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from twisted.python import reflect

from netecho import __version__

#: Defaults that depend on the machine the page is made on, said in words.
MACHINE_DEFAULTS = {"backlog": "net.core.somaxconn, else 4096"}

# NO_HYPHENATION: both pages start with .nh: a hyphen groff put into an
# endpoint description (sys-temd:domain=...) would read as part of it.

#: The option name shown where an option takes a value.
VALUE = "VALUE"


@contextmanager
def _unwrapped() -> Iterator[None]:
    # argparse wraps usage and help to the terminal's width ($COLUMNS): make
    # it wide, so what the page says does not depend on who made it.
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100000"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def roff(text: str) -> str:
    """C{text} escaped for a roff text line (backslashes, minus signs, leading dots)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _lower_first(text: str) -> str:
    """A sentence made a man page's NAME line: "Clients for" -> "clients for"; "TCP" stays."""
    if text[:2].istitle():
        return text[0].lower() + text[1:]
    return text


def _header(title: str, section: str) -> str:
    # .TH title section date source manual (man(7)); no date: see the module docstring.
    return f'.TH {title} "{section}" "" "netecho {__version__}" "netecho manual"'


def netecho_page() -> str:
    """The text of C{netecho(1)}, from the parser C{netecho} runs with."""
    from argparse_manpage.manpage import Manpage

    from netecho.cli import build_parser

    with _unwrapped():
        parser = build_parser()
        # The subcommands under COMMANDS, after the options (argparse has no
        # public way to its groups).
        for group in list(parser._action_groups):
            if any(isinstance(a, argparse._SubParsersAction) for a in group._group_actions):
                group.title = "COMMANDS"
                parser._action_groups.remove(group)
                parser._action_groups.append(group)
        summary = parser.description.split(". ")[0]
        page = Manpage(
            parser,
            _data={"project_name": "netecho", "version": __version__, "manual_title": "netecho manual",
                   "description": _lower_first(summary)},
            format="single-commands-section",
        )
        page.date = ""
        page.synopsis = page.synopsis[:1] + [roff(word) for word in page.synopsis[1:]]
        text = str(page)
    lines = text.splitlines()
    lines.insert(1, ".nh")  # (see NO_HYPHENATION)
    # The exit statuses netecho.cli's docstring states for every subcommand.
    cli_doc = " ".join((sys.modules[build_parser.__module__].__doc__ or "").split())
    _, found, statuses = cli_doc.partition("Exit status: ")
    if found:
        lines += [".SH EXIT STATUS", roff(statuses)]
    lines += [".SH SEE ALSO", r"\fBtwistd\-netecho\fR(8)"]
    return "\n".join(lines) + "\n"


def _options_rows(options) -> list[tuple[str, bool, str, object]]:
    """
    The options of a L{usage.Options} instance as its C{--help} lists them:
    (long name, takes a value, doc, default), sorted as Twisted sorts them.
    """
    # The coerce callables' docs, as --help shows them, from the options'
    # public optParameters lists (name, short, default, doc, coerce).
    parameters: list = []
    reflect.accumulateClassList(type(options), "optParameters", parameters)
    coerce_docs = {
        entry[0]: getattr(entry[4], "coerceDoc", "") for entry in parameters if len(entry) > 4 and entry[4]
    }
    rows = []
    for opt in options.longOpt:
        takes_value = opt.endswith("=")
        name = opt.rstrip("=")
        doc = (options.docs.get(name) or "").strip()
        default = options.defaults.get(name) if takes_value else None
        coerce_doc = coerce_docs.get(name)
        if takes_value and coerce_doc:
            doc = f"{doc}. {coerce_doc}"
        rows.append((name, takes_value, doc, default))
    rows.sort(key=lambda row: row[0])
    return rows


def twistd_page() -> str:
    """The text of C{twistd-netecho(8)}, from L{netecho.tap.Options} and the plugin's description."""
    from netecho.tap import Options

    options = Options()
    description = _plugin_description()
    lines = [
        _header("TWISTD\\-NETECHO", "8"),
        ".nh",  # (see NO_HYPHENATION)
        ".SH NAME",
        f"twistd\\-netecho \\- {roff(_lower_first(description))}",
        ".SH SYNOPSIS",
        f".B twistd\n[\\fItwistd options\\fR] \\fBnetecho\\fR {roff(options.synopsis)}",
        ".SH DESCRIPTION",
        roff(" ".join(options.longdesc.split())),
        ".SH OPTIONS",
    ]
    for name, takes_value, doc, default in _options_rows(options):
        lines.append(".TP")
        invocation = f"\\fB\\-\\-{roff(name)}\\fR"
        if takes_value:
            invocation += f"=\\fI{VALUE}\\fR"
        lines.append(invocation)
        if name in MACHINE_DEFAULTS:
            default = MACHINE_DEFAULTS[name]
        if default not in (None, ""):
            doc = f"{doc} [default: {default}]"
        lines.append(roff(" ".join(doc.split())))
    lines += [".SH SEE ALSO", r"\fBnetecho\fR(1), \fBtwistd\fR(1)"]
    return "\n".join(lines) + "\n"


def _plugin_description() -> str:
    """The description twistd's C{--help} shows for the plugin (its ServiceMaker)."""
    from twisted.plugins import netecho_plugin

    return netecho_plugin.netecho.description


def pages() -> dict[str, str]:
    """Each page's file name and text."""
    return {"netecho.1": netecho_page(), "twistd-netecho.8": twistd_page()}


def write(directory: str | Path) -> list[Path]:
    """Write the pages into C{directory}; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netecho.manpages",
        description="Write netecho(1) and twistd-netecho(8) into DIRECTORY (needs argparse-manpage).",
    )
    parser.add_argument("directory", nargs="?", default="man")
    args = parser.parse_args(argv)
    try:
        written = write(args.directory)
    except ImportError as e:
        print(f"netecho.manpages: {e} (pip install argparse-manpage, or netecho's test extra)", file=sys.stderr)
        return 100
    except OSError as e:
        print(f"netecho.manpages: cannot write {args.directory}: {(e.strerror or str(e)).lower()}", file=sys.stderr)
        return 100
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
