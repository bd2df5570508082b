"""``logitguard report``: several runs side by side, as one self-contained HTML page plus PNGs.

Run: logitguard report RUN_DIR [RUN_DIR ...] [--out report]
A run directory is the output of ``logitguard train``, ``eval`` or ``demo``.
"""

from __future__ import annotations

from pathlib import Path

from logitguard.cli.common import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="logitguard report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    args = parser.parse_args(argv)
    from logitguard.evaluation.report import collect_runs, table, write_report
    from logitguard.outputs import OutputLock, claim_folder, replace_output

    claim_folder(args.out, "report")  # a report rerun replaces its own files only
    runs = collect_runs(args.runs)
    with OutputLock(args.out):
        claim_folder(args.out, "report")  # again, now that no other report can write it
        replace_output(args.out, "report", lambda tmp: write_report(runs, tmp))
        path = Path(args.out) / "report.html"
    header, rows = table(runs)
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    print("\n".join("| " + " | ".join(row) + " |" for row in rows))
    print(f"wrote {path} and its PNGs")
    return 0
