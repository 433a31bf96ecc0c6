"""``python -m analysis STUDY_FILE [--root DIR] [--band ci|std]``: same as ``tstudy figures``.
``python -m analysis recommend RESULTS.parquet [--by F,..] [--select final|best|val] [--reference-T T] [--json]``:
the recommendation from any results table.
``python -m analysis findings STUDY_FILE [--root DIR] [--check]``: a committed finding regenerated
from its run files (analysis/findings.py)."""
import argparse
import sys


def _recommend(argv: list[str]) -> int:
    from tstudy.errors import ConfigError

    p = argparse.ArgumentParser(prog="python -m analysis recommend")
    p.add_argument("table", help="a results table (results.parquet)")
    p.add_argument("--by", help="setting fields, comma-separated (default: the fields that vary)")
    p.add_argument("--select", choices=("final", "best", "val"), help="how T is chosen (default: val if the "
                   "table has validation rows, else final)")
    p.add_argument("--reference-T", type=float, default=4.0, help="KD's reference temperature (default 4)")
    p.add_argument("--json", action="store_true", help="one JSON record per setting and method")
    a = p.parse_args(argv)
    try:
        from analysis.recommend import recommend_table

        print(recommend_table(a.table, a.by, a.select, a.reference_T, a.json))
    except ConfigError as e:
        print(f"python -m analysis: error: {e}", file=sys.stderr)
        return 2
    return 0


def _findings(argv: list[str]) -> int:
    from pathlib import Path

    from tstudy.errors import ConfigError
    from tstudy.study import load_study

    p = argparse.ArgumentParser(prog="python -m analysis findings")
    p.add_argument("study", help="a study file whose results are kept under the root")
    p.add_argument("--root", default="results", help="the root holding the run files (default: results/)")
    p.add_argument("--check", action="store_true", help="only regenerate in a temporary root and compare")
    a = p.parse_args(argv)
    try:
        from analysis import findings

        study = load_study(a.study)
        if a.check:
            diffs = findings.check(study, Path(a.root))
            for line in diffs:
                print(f"  {line}")
            print(f"{study.name}: {'regenerates with every number equal' if not diffs else f'{len(diffs)} differences'}")
            return 1 if diffs else 0
        print(findings.publish(study, Path(a.root)))
    except ConfigError as e:
        print(f"python -m analysis: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["recommend"]:
        sys.exit(_recommend(sys.argv[2:]))
    if sys.argv[1:2] == ["findings"]:
        sys.exit(_findings(sys.argv[2:]))
    from tstudy.cli import main

    sys.exit(main(["figures", *sys.argv[1:]]))
