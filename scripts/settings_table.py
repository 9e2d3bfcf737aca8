"""Print the README's settings table, built from the settings model (`inscale.settings`).

A setting is written once, as a field of `ServerSettings` with its description and bounds;
`inscale serve --help` and this table are both derived from it. After adding or changing a
field, rewrite the README's table (between its `settings-table` markers) with

    .venv/bin/python scripts/settings_table.py --write README.md

`tests/test_settings.py` fails while the README's table differs from what this prints.

This is a script rather than an `inscale` subcommand because the table is documentation of the
repository, not something a server operator runs; operators read `inscale serve --help`.
"""

import argparse
import sys
from pathlib import Path

from inscale.settings import SettingDoc, setting_docs

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
_KIND_TEXT = {"list": "comma-separated list"}


def markdown_table() -> str:
    lines = [
        "| flag | variable | type | default | bounds | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for doc in setting_docs():
        cells = [_flag(doc), f"`{doc.env}`", _kind(doc), _default(doc), doc.bounds, doc.description]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _flag(doc: SettingDoc) -> str:
    if doc.flag is None:
        return "(none)"
    if doc.kind == "boolean":
        return f"`{doc.flag}` / `--no-{doc.flag.removeprefix('--')}`"
    return f"`{doc.flag}`"


def _kind(doc: SettingDoc) -> str:
    if doc.choices:
        return ", ".join(f"`{choice}`" for choice in doc.choices)
    return _KIND_TEXT.get(doc.kind, doc.kind)


def _default(doc: SettingDoc) -> str:
    return f"`{doc.default}`" if doc.default else "unset"


def replace_table(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"expected one {START} line followed by one {END} line")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, metavar="FILE", help="replace FILE's table")
    args = parser.parse_args()
    if args.write is None:
        sys.stdout.write(markdown_table())
        return 0
    try:
        text = replace_table(args.write.read_text(), markdown_table())
    except ValueError as exc:
        print(f"settings_table: {args.write}: {exc}", file=sys.stderr)
        return 1
    args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
