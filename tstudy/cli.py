"""`tstudy plan|launch|status|collect|figures|recommend|clean STUDY_FILE`: a study's life from the shell;
`tstudy migrate ROOT`: move a root of the per-study layout to the shared run store."""
from __future__ import annotations

import argparse
import collections
import sys
import time
from typing import Sequence

from tstudy.config import RunConfig
from tstudy.errors import ConfigError
from tstudy.executors.options import add_cli_flags, options_for
from tstudy.lock import describe, is_stale, on_this_host, remove_if_unchanged
from tstudy.machine import Machine, add_flags as add_machine_flags
from tstudy.migrate import legacy_studies, migrate
from tstudy.store import DONE, FAILED, INCOMPLETE, RunState, RunStore
from tstudy.study import Study, load_study, parse_only, parse_seeds, parse_sets, restrict, run_warnings
from tstudy.text import counted

EXECUTORS = ("local", "slurm")
MAX_TABLE = 200


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tstudy", description="Temperature studies in knowledge distillation.")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("study", help="the study file (Python, defining `study = Study(...)`)")
        c.add_argument("--root", default="results", help="where studies live (default: results/)")
        c.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a base field (replaces its axis); teacher.FIELD=VALUE for the teacher")
        c.add_argument("--seeds", metavar="0,1,2", help="override the seeds: integers >= 0, comma-separated")
        c.add_argument("--only", action="append", default=[], metavar="FIELD=V1,V2",
                       help="only the runs whose FIELD is one of the values (repeatable: all must hold), with "
                            "their teachers: a chunk of the study, e.g. --only method=ce,kd")
        return c

    cmd("plan", "print the runs and their state").add_argument("--all", action="store_true", help="list every run")
    c = cmd("launch", "train what is missing")
    c.add_argument("--executor", default="local", choices=EXECUTORS)
    c.add_argument("--dry-run", action="store_true",
                   help="make the checks of a launch (device, data, weights files), print what would run, write nothing")
    add_machine_flags(c)
    add_cli_flags(c)
    cmd("status", "state of each run, read from disk").add_argument("--all", action="store_true")
    cmd("collect", "write <root>/<study>/results.parquet")
    c = cmd("figures", "collect, then write the figures and report.md")
    c.add_argument("--band", choices=("ci", "std"), default="ci",
                   help="the shaded band around each mean over seeds: its 95 %% interval (ci, default) or ± 1 std")
    c = cmd("recommend", "collect, then recommend T per setting and method, with its uncertainty")
    c.add_argument("--by", metavar="FIELD,...", help="the fields that define a setting (default: those that vary)")
    c.add_argument("--select", choices=("final", "best", "val"),
                   help="choose T by the last epoch's test accuracy (final), each run's best epoch (best), or the "
                        "validation split (val); default: val if the study has one, else final")
    c.add_argument("--reference-T", type=float, default=None, metavar="T",
                   help="KD's reference temperature for the gains (default: the study's, else 4)")
    c.add_argument("--json", action="store_true", help="one JSON record per setting and method")
    c = cmd("clean", "delete incomplete and failed runs (asks first)")
    c.add_argument("--yes", action="store_true", help="do not ask")
    c.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    c.add_argument("--stale-locks", action="store_true",
                   help="instead, remove the locks of the study's runs held by dead processes or by processes on "
                        "other hosts (names each owner; asks first)")
    c.add_argument("--weights", action="store_true",
                   help="instead, delete the model.pt of the study's finished students (never a teacher's), keeping "
                        "them done with their results: to keep a study's run files small (e.g. in git; asks first)")
    c = sub.add_parser("migrate", help="move ROOT/<study>/runs/ folders to the shared run store ROOT/runs/")
    c.add_argument("root", help="the root to migrate (e.g. results)")
    return p


def _seeds_value_joined(argv: Sequence[str]) -> list[str]:
    """``--seeds -1,2`` -> ``--seeds=-1,2``: argparse would take ``-1,2`` for an option and answer
    "expected one argument"; joined, ``parse_seeds`` names the accepted forms."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "--seeds" and out[i + 1].startswith("-") and not out[i + 1].startswith("--"):
            out[i:i + 2] = [f"--seeds={out[i + 1]}"]
            break
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_seeds_value_joined(sys.argv[1:] if argv is None else argv))
    study = None
    try:
        if args.command == "migrate":
            report = migrate(args.root)
            print(report.summary(args.root) if report.studies else f"{args.root}: nothing to migrate")
            return 0
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        study = load_study(args.study)
        if args.sets:
            study = study.override(parse_sets(args.sets))
        if seeds is not None:
            study = Study(**{**study.__dict__, "seeds": seeds})
        study = restrict(study, parse_only(args.only))
        store = RunStore(args.root, study.name)
        if legacy_studies(args.root):  # a root written before the shared run store: once, on first use
            migrate(args.root, say=lambda line: print(f"tstudy: {line}", file=sys.stderr))
        return COMMANDS[args.command](study, store, args)
    except ConfigError as e:
        print(f"tstudy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every run keeps its last checkpoint
        what = f"{args.command} of study {study.name!r}" if study is not None else args.command
        print(f"tstudy: interrupted: {what} stopped"
              + ("; launch again to resume (each run restarts from its last checkpoint)"
                 if args.command == "launch" else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tstudy plan ... | head`
        sys.stderr.close()
        return 0


# --------------------------------------------------------------------------- commands
def cmd_plan(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    show_plan(study, store, args)
    return 0


def show_plan(study: Study, store: RunStore, args: argparse.Namespace) -> tuple[list[RunConfig], dict[str, RunState]]:
    """Print the study's runs and their states; return both."""
    t0 = time.perf_counter()
    runs = study.runs()
    teacher_ids = {t.run_id for t in study.teachers(runs)}
    states = store.states(runs)
    counts = collections.Counter(s.status for s in states.values())
    n_t = sum(r.run_id in teacher_ids for r in runs)
    _warn(runs)
    print(f"study {study.name}: {counted(len(runs), 'run')} ({counted(n_t, 'teacher')}, {counted(len(runs) - n_t, 'student')}) "
          f"under {store.study_dir}  [expanded in {time.perf_counter() - t0:.2f} s]")
    print("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    _note_finished_elsewhere(store, [r.run_id for r in runs], args)
    if len(runs) <= MAX_TABLE or getattr(args, "all", False):
        fields = study.varying_fields()
        table = [["run_id", "role", "state", "epoch", *fields, ""]]
        for r in runs:
            s = states[r.run_id]
            table.append([r.run_id, "teacher" if r.run_id in teacher_ids else "student", s.status,
                          f"{s.epoch}/{r.epochs}", *(_short(getattr(r, f)) for f in fields),
                          f"({s.reason})" if s.reason else ""])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    else:
        print(f"  ({len(runs)} runs: pass --all to list them)")
    return runs, states


def _warn(runs: Sequence) -> None:
    """The runs' distinct warnings (e.g. a warm-up longer than the run), once each, on stderr."""
    for line in run_warnings(runs):
        print(f"tstudy: warning: {line}", file=sys.stderr)


def _note_finished_elsewhere(store: RunStore, run_ids: Sequence[str], args: argparse.Namespace) -> None:
    """One line when finished runs this study launched before are not in the current expansion
    (``run_ids``; ``--set``/``--seeds``/``--only``, or an edited study file): their count and how to see them."""
    others = store.finished_elsewhere(run_ids)
    if not others:
        return
    n = len(others)
    what = f"{counted(n, 'finished run')} of study {store.study!r} under {store.root}"
    if args.sets or args.seeds or args.only:
        flags = " and ".join(f for f, given in (("--set", args.sets), ("--seeds", args.seeds), ("--only", args.only))
                             if given)
        print(f"  note: {what} {'are' if n != 1 else 'is'} not in this expansion ({flags}): "
              f"`tstudy status {args.study} --root {args.root}` without {flags} lists them")
    else:
        print(f"  note: {what} {'are' if n != 1 else 'is'} no longer named by the study file; "
              f"their ids are in {store.study_dir / 'study.json'}")


def _short(v: object) -> str:
    from tstudy.config import TeacherFile

    if isinstance(v, RunConfig):
        return f"{v.model}[{v.run_id[:6]}]"
    if isinstance(v, TeacherFile):
        return f"{v.model}[file]"
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items())) or "-"
    return str(v)


def cmd_launch(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    from tstudy.stream_data import check_decoder

    machine = Machine.from_args(args)  # every machine setting checked once, before anything else
    check_decoder(machine.decoder, study.runs())
    if args.executor == "slurm":
        from tstudy.executors import slurm

        _warn(study.runs())
        return slurm.launch(study, store, args, machine)
    from tstudy.engine import RunEnv
    from tstudy.executors.local import local_plan, run_local
    from tstudy.executors.workers import default_workers
    from tstudy.preflight import check_device, preflight

    opts = options_for(study.options, args, "local")
    machine = machine.replace(device=check_device(machine.device))
    device = machine.device
    runs = study.runs()
    plan = local_plan(runs, store, opts.pack)
    workers = min(opts.workers or default_workers(device), max(1, len(plan.packs)))
    threads = opts.threads or (opts.worker_threads(workers) if workers > 1 else None)
    todo = plan.todo
    _warn(todo)
    if args.dry_run:
        preflight(study, store, todo, machine.data_root, dry_run=True)
    print(f"study {study.name}: {counted(len(runs), 'run')}, {len(runs) - len(todo)} done or running, {len(todo)} to launch"
          + (f" in {counted(len(plan.packs), 'pack')}" if opts.pack > 1 else "")
          + (f", {workers} workers" + (f" x {threads} threads" if device == "cpu" else "") if workers > 1 else ""))
    if args.dry_run:
        for p in plan.packs:
            for r in p.runs:
                print(f"  would run {r.run_id} {r.model} {r.method} T={r.temperature} seed={r.seed}"
                      + (f" (after teacher {p.after})" if p.after else ""))
        for rid, why in plan.blocked:
            print(f"  would skip {rid}: {why}")
        return 0
    if not todo:
        return 0
    env = RunEnv(machine)
    t0 = time.perf_counter()
    results = run_local(runs, store, env, pack=opts.pack, workers=workers, threads=threads,
                        before=lambda: preflight(study, store, todo, machine.data_root, env if workers == 1 else None))
    counts = collections.Counter(results.values())
    print(f"study {study.name}: {dict(counts)} in {time.perf_counter() - t0:.1f} s")
    return 1 if counts.get(FAILED) else 0


def cmd_status(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    from tstudy.executors.slurm import status_lines

    runs, states = show_plan(study, store, args)
    for line in status_lines(runs, store, getattr(args, "all", False), states=states):  # queued/running from squeue
        print(line)
    return 0


def cmd_collect(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    from tstudy.results import update_results

    path, c = update_results(study, store)
    for line in c.skipped:
        print(f"  left out {line}")
    how = ("unchanged" if c.table is None else f"{c.read} metrics files read"
           + (f", {counted(c.reused, 'run')} from the previous table" if c.reused else ""))
    print(f"{path}: {counted(c.rows, 'row')} from {counted(c.runs, 'run')}"
          + (f" ({counted(len(c.skipped), 'run')} left out)" if c.skipped else "") + f" [{how}]")
    _note_finished_elsewhere(store, c.run_ids, args)
    return 0


def cmd_figures(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    from analysis.report import write_report

    cmd_collect(study, store, args)
    paths = write_report(study, store, band=args.band)
    for p in paths:
        print(p)
    return 0


def cmd_recommend(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    import contextlib

    import pandas as pd

    from analysis.recommend import parse_by, recommend, render
    from tstudy.results import RESULTS

    by = parse_by(args.by)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the recommendation (JSON with --json)
        cmd_collect(study, store, args)
    path = store.study_dir / RESULTS
    df = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    ref = args.reference_T if args.reference_T is not None else study.reference_temperature
    print(render(recommend(df, by, args.select, ref), args.json))
    return 0


def cmd_clean(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    ids = {r.run_id for r in study.runs()}
    if args.stale_locks and args.weights:
        raise ConfigError("clean: --stale-locks and --weights are two commands; pass one")
    if args.stale_locks:
        return _clean_locks(store, ids, args)
    if args.weights:
        return _clean_weights(study, store, args)
    elsewhere = [rid for rid, info in store.foreign_locks(ids)
                 if info and not on_this_host(info) and not info.get("slurm_job")]
    if elsewhere:
        print(f"  {len(elsewhere)} run{'s are' if len(elsewhere) != 1 else ' is'} locked by processes on other "
              f"hosts, shown as running: `tstudy clean {args.study} --stale-locks` lists those locks")
    victims = [i for i in store.run_ids_on_disk()
               if i in ids and store.state(i).status in (INCOMPLETE, FAILED)]
    if not victims:
        print("nothing to clean")
        return 0
    shared = store.listed_by_others(victims)
    for i in victims:
        s = store.state(i)
        print(f"  {i}: {s.status} at epoch {s.epoch}" + (f" ({s.reason})" if s.reason else "")
              + (f"  [also listed by {', '.join(shared[i])}]" if i in shared else ""))
    if args.dry_run:
        print(f"would delete {len(victims)} run directories" + (f" ({len(shared)} shared with other studies)" if shared else ""))
        return 0
    if not args.yes:
        question = f"delete these {len(victims)} run directories"
        if shared:
            question += f", {len(shared)} of them listed by other studies under {store.root} too"
        if not _confirm(question + "? [y/N] ", "delete without asking"):
            print("nothing deleted")
            return 0
    elif shared:  # --yes answers for this study's runs, never for another study's
        victims = [i for i in victims if i not in shared]
        print(f"  left {len(shared)} run directories that other studies list too (run clean on a terminal to delete them)")
    deleted = sum(store.remove(i) for i in victims)
    kept = len(victims) - deleted
    print(f"deleted {deleted} run directories" + (f"; {kept} left alone (started meanwhile)" if kept else ""))
    return 0


def _clean_weights(study: Study, store: RunStore, args: argparse.Namespace) -> int:
    """`clean --weights`: release (delete, recorded in status.json) the model.pt of the study's done
    students; the study's teachers keep theirs (their students need them)."""
    from tstudy.store import release_weights

    teachers = {t.run_id for t in study.teachers()}
    todo = [r.run_id for r in study.students() if r.run_id not in teachers and store.state(r).status == DONE
            and (store.run_dir(r) / "model.pt").exists()]
    if not todo:
        print("no student weights to release")
        return 0
    size = sum((store.run_dir(i) / "model.pt").stat().st_size for i in todo)
    what = f"{len(todo)} students' model.pt ({size / 2**20:.1f} MiB); their results stay"
    if args.dry_run:
        print(f"would delete the weights of {what}")
        return 0
    if not args.yes and not _confirm(f"delete the weights of {what}? [y/N] ", "delete them without asking"):
        print("nothing deleted")
        return 0
    done = sum(release_weights(store.run_dir(i)) for i in todo)
    print(f"released the weights of {done} runs" + (f"; {len(todo) - done} left alone (locked or changed)"
                                                     if done < len(todo) else ""))
    return 0


def _clean_locks(store: RunStore, ids: set[str], args: argparse.Namespace) -> int:
    """`clean --stale-locks`: list the locks of the study's runs held by dead processes or by
    processes on other hosts (tstudy cannot tell whether those still run), each with its owner;
    after a yes (or --yes), remove exactly those lock files, unless they changed meanwhile. A
    SLURM job's lock whose job squeue still shows is left alone."""
    found, queue = [], None
    for rid, info in store.foreign_locks(ids):
        job = info.get("slurm_job") if info else None
        if job and not on_this_host(info):
            if queue is None:
                from tstudy.executors.slurm import read_queue

                queue = read_queue() or False
            entry = queue.by_raw.get(str(job)) if queue else None
            if entry is not None and entry.alive:
                print(f"  left {rid}: locked by {describe(info)}, a job squeue shows as {entry.state.lower()}")
                continue
        found.append((rid, info))
    if not found:
        print("no stale locks")
        return 0
    for rid, info in found:
        why = ("unreadable lock file" if not info else "process gone" if is_stale(info) else
               "on another host: tstudy cannot tell whether it still runs")
        print(f"  {rid}: locked by {describe(info)} ({why})")
    n = len(found)
    if args.dry_run:
        print(f"would remove {counted(n, 'lock file')}")
        return 0
    if not args.yes and not _confirm(f"remove these {counted(n, 'lock file')}? If one of those processes still "
                                     f"runs, its run may then be trained twice [y/N] ", "remove the locks without asking"):
        print("no lock removed")
        return 0
    removed = sum(remove_if_unchanged(store.run_dir(rid), info) for rid, info in found)
    print(f"removed {counted(removed, 'lock file')}"
          + (f"; {n - removed} changed meanwhile, left alone" if removed < n else "")
          + ("; launching again resumes those runs" if removed else ""))
    return 0


def _confirm(question: str, what: str) -> bool:
    """Ask ``question`` on the terminal (yes: True); without a terminal, one line: pass --yes."""
    if not sys.stdin.isatty():
        raise ConfigError(f"clean: not a terminal; pass --yes to {what}")
    return input(question).strip().lower() in ("y", "yes")


COMMANDS = {"plan": cmd_plan, "launch": cmd_launch, "status": cmd_status, "collect": cmd_collect,
            "figures": cmd_figures, "recommend": cmd_recommend, "clean": cmd_clean}


if __name__ == "__main__":
    sys.exit(main())
