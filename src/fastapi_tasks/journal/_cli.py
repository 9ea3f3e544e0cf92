"""``python -m fastapi_tasks.journal PATH ...``: list, show, retry and count journal rows."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from ..errors import FastAPITasksJournalError
from ._rows import STATES, JournalRow, count_by_state, read_rows, retry_rows

__all__ = ["main"]

PROG = "python -m fastapi_tasks.journal"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect the journal of durable work (add_tasks(app, journal=...)) and "
        "make finished rows run again.",
        epilog="Reading never changes the file and works while apps use it. Times are UTC.",
    )
    parser.add_argument("path", metavar="PATH", help="the journal file, e.g. tasks.db")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="rows, newest first")
    listing.add_argument("--state", choices=STATES, help="only rows in this state")
    listing.add_argument(
        "--limit", type=_positive, default=20, metavar="N", help="at most N rows (default 20)"
    )
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")

    show = commands.add_parser("show", help="one row: every column, arguments, error")
    show.add_argument("id", metavar="ID", help="the row's id (see list)")
    show.add_argument("--json", action="store_true", help="a JSON object instead of text")

    retry = commands.add_parser(
        "retry",
        help="make finished rows run again",
        description="Make finished rows unfinished again: a running app takes them within "
        "lease/4 seconds (7.5 s by default), or the next app to start on the file does. "
        "Attempts start from zero. Unfinished rows are never touched.",
    )
    retry.add_argument(
        "ids", nargs="*", metavar="ID", help="rows to retry (failed, cancelled or succeeded)"
    )
    retry.add_argument("--failed", action="store_true", help="retry every failed row")

    stats = commands.add_parser("stats", help="how many rows in each state")
    stats.add_argument("--json", action="store_true", help="a JSON object instead of text")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    moment = datetime.fromtimestamp(value, timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _last_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.rstrip().splitlines()[-1]
    return line if len(line) <= 60 else line[:59] + "…"


def _table(rows: Sequence[JournalRow]) -> str:
    header = ("ID", "STATE", "TRIES", "SCHEDULED", "FINISHED", "NAME", "ERROR")
    lines = [
        (
            row.id,
            row.state,
            str(row.attempts),
            _time(row.scheduled_at),
            _time(row.finished_at),
            row.name,
            _last_line(row.error),
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in (header, *lines)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in (header, *lines)
    )


def _details(row: JournalRow) -> str:
    fields = [
        ("id", row.id),
        ("name", row.name),
        ("function", row.func),
        ("mode", row.mode),
        ("state", row.state),
        ("attempts", str(row.attempts)),
        ("owner", row.owner or "-"),
        ("request", row.request or "-"),
        ("scheduled", _time(row.scheduled_at)),
        ("started", _time(row.started_at)),
        ("finished", _time(row.finished_at)),
        ("options", row.options),
    ]
    text = "\n".join(f"{label:<10} {value}" for label, value in fields)
    arguments = json.dumps(json.loads(row.arguments), indent=2, ensure_ascii=False)
    text += "\narguments:\n" + _indent(arguments)
    if row.error:
        text += "\nerror:\n" + _indent(row.error.rstrip())
    return text


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _list(args: argparse.Namespace) -> int:
    rows = read_rows(args.path, state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False))
    elif rows:
        print(_table(rows))
    else:
        print("no rows" + (f" in state {args.state}" if args.state else ""))
    return 0


def _show(args: argparse.Namespace) -> int:
    rows = read_rows(args.path, ids=[args.id], limit=1)
    if not rows:
        return _fail(f"no row with id {args.id} in the task journal {args.path}")
    if args.json:
        print(json.dumps(rows[0].to_json(), indent=2, ensure_ascii=False))
    else:
        print(_details(rows[0]))
    return 0


def _retry(args: argparse.Namespace) -> int:
    ids: list[str] = list(dict.fromkeys(args.ids))
    if ids and args.failed:
        return _fail("give row ids or --failed, not both")
    if not ids and not args.failed:
        return _fail("give the ids of the rows to retry, or --failed for every failed row")
    if args.failed:
        changed = retry_rows(args.path, None, all_failed=True)
    else:
        found = {row.id: row for row in read_rows(args.path, ids=ids, limit=len(ids))}
        unknown = [ident for ident in ids if ident not in found]
        if unknown:
            return _fail(
                f"no row with id {', '.join(unknown)} in the task journal {args.path}; "
                "nothing was changed"
            )
        for ident in ids:
            if found[ident].state == "pending":
                print(f"{ident} is unfinished (waiting or running): left as it is")
        changed = retry_rows(args.path, ids)
    if not changed:
        print("nothing to retry")
        return 0
    print(
        f"{changed} row(s) will run again: a running app takes them within lease/4 seconds, "
        "or the next app to start on this file does"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    counts = count_by_state(args.path)
    if args.json:
        print(json.dumps(counts))
        return 0
    width = max(len(state) for state in (*counts, "total"))
    for state, count in counts.items():
        print(f"{state:<{width}}  {count}")
    print(f"{'total':<{width}}  {sum(counts.values())}")
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


_COMMANDS = {"list": _list, "show": _show, "retry": _retry, "stats": _stats}


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); the exit status.

    0: done; 2: wrong usage, a missing or unusable journal file, or an unknown id
    (one line on stderr says which).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _COMMANDS[args.command](args)
    except FastAPITasksJournalError as exc:
        return _fail(str(exc))
