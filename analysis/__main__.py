"""``python -m analysis STUDY_FILE [--root DIR] [--band ci|std]``: same as ``tstudy figures``.
``python -m analysis recommend RESULTS.parquet [--by F,..] [--select final|best|val] [--reference-T T] [--json]``:
the recommendation from any results table."""
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["recommend"]:
        sys.exit(_recommend(sys.argv[2:]))
    from tstudy.cli import main

    sys.exit(main(["figures", *sys.argv[1:]]))
