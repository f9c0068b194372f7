"""policy-onnx (or python -m policy_onnx): the reference exporter, the suite, the spec document,
the comparison of two reports.

Examples:
  policy-onnx export m.zip -o m.onnx
  policy-onnx export sac.zip -o m.onnx --action-transform tanh
  policy-onnx check m.zip a.onnx --report verdict.json    # the suite, as pytest runs it
  policy-onnx check m.zip -- -k PAR-01                      # further pytest arguments after --
  policy-onnx check zoo/ -- -n auto                         # every .zip in zoo/, on all cores
  policy-onnx replay counterexamples/m/PAR-01.json         # a failing parity clause, again
  policy-onnx compare last-release.json report.json --max-growth 2   # release over release
  policy-onnx merge reports/*.json --junitxml junit.xml   # the shards of a zoo (--shard K/N)
  policy-onnx spec              # where POLICY_ONNX_SPEC.md is; it matches the clause registry
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, spec, spec_doc
from .metadata import TRANSFORMS
from .observations import IMAGE_LAYOUTS


TRUST_HELP = ("let SB3 unpickle everything in the zip, running any code it holds (default: off, "
              "only allow-listed classes)")
IMAGE_LAYOUT_HELP = ("the layout images are taken in: HWC (height, width, channels, as "
                     "environments usually return them) or CHW (for environments that return "
                     "channels first)")
VECNORMALIZE_HELP = ("the VecNormalize statistics (.pkl) the model was trained behind, or 'none' "
                     "(default: found beside the model, in the RL Zoo's <dir>/<name>/"
                     "vecnormalize.pkl or the Hub's vec_normalize.pkl)")


def _export(args: argparse.Namespace) -> int:
    from .artifact import ArtifactError
    from .export import export
    from .load import ModelLoadError, load_model
    from .normalization import attach

    output = args.output or args.model.with_suffix(".onnx")
    if not output.parent.is_dir():
        print(f"error: -o {output}: the folder {output.parent} does not exist; create it or "
              "write the artifact elsewhere", file=sys.stderr)
        return 2
    try:
        loaded = load_model(args.model, trust_code=args.trust_model_code)
        loaded.image_layout = args.image_layout
        attach(loaded, args.vecnormalize)
        path = export(loaded, output, transform=args.action_transform)
    except (ModelLoadError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a transform that does not fit the policy
        print(f"error: --action-transform {args.action_transform}: {exc}", file=sys.stderr)
        return 2
    normalized = (f", normalizing observations with {loaded.normalization.path}"
                  if loaded.normalization and loaded.normalization.norm_obs else "")
    print(f"wrote {path} ({loaded.algorithm}, action_transform={args.action_transform}"
          f"{normalized})")
    return 0


def _check(args: argparse.Namespace) -> int:
    import pytest

    # pytest imports the conftest.py files of the folder it runs in: no __pycache__ of theirs
    # (or of anything else imported) is left in the user's folder.
    sys.dont_write_bytecode = True
    # The console script imported policy_onnx before pytest could register it for assertion
    # rewriting: pytest's warning about that says nothing to a user.
    command = ["--pyargs", "policy_onnx.conformance", "-p", "no:cacheprovider",
               "-W", "ignore::pytest.PytestAssertRewriteWarning",
               "--model", str(args.model), "--level", args.level]
    if args.onnx:
        command += ["--onnx", str(args.onnx)]
    if args.report:
        command += ["--report", str(args.report)]
    if args.html:
        command += ["--html", str(args.html)]
    if args.runtime:
        command += ["--runtime", args.runtime]
    if args.shard:
        command += ["--shard", args.shard]
    if args.vecnormalize:
        command += ["--vecnormalize", args.vecnormalize]
    if args.image_layout:
        command += ["--image-layout", args.image_layout]
    if args.trust_model_code:
        command.append("--trust-model-code")
    return int(pytest.main(command + args.pytest_args))


def _replay(args: argparse.Namespace) -> int:
    """Run a saved counterexample through predict() and the artifact again."""
    import json

    import numpy as np

    from . import engines
    from .artifact import Artifact, ArtifactError
    from .load import ModelLoadError, load_model
    from .model import Reference
    from .normalization import attach
    from .parity import ParityStats, compare_any, rollout_problem

    fix = "pass the counterexample .json that a failing parity clause names"
    try:
        saved = json.loads(args.counterexample.read_text())
    except FileNotFoundError:
        return _error(f"{args.counterexample}: no such file; {fix}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(f"{args.counterexample}: not readable as JSON ({exc}); {fix}")
    missing = [key for key in ("clause", "model", "artifact", "observations")
               if not isinstance(saved, dict) or key not in saved]
    if missing:
        return _error(f"{args.counterexample}: not a policy-onnx counterexample (no "
                      f"{', '.join(missing)}); {fix}")
    observations = np.asarray(saved["observations"], np.float32)
    try:
        loaded = load_model(saved["model"], trust_code=saved["trust_model_code"])
        artifact = Artifact(saved["artifact"], saved.get("engine", engines.ORT))
        artifact.adopt_layout(loaded)
        attach(loaded, saved.get("vecnormalize", "none"))
        reference = Reference(loaded)
        if "episode_starts" in saved:  # a recurrent policy's rollouts
            checked = (f"{observations.shape[0]}-step rollouts of {observations.shape[1]} "
                       "environments")
            initial = None
            if saved.get("initial_state_h") is not None:
                initial = (np.asarray(saved["initial_state_h"], np.float32),
                           np.asarray(saved["initial_state_c"], np.float32))
            problem = rollout_problem(reference, artifact, observations,
                                      np.asarray(saved["episode_starts"], np.float32),
                                      ParityStats(), saved["clause"], initial,
                                      saved.get("warm_up", 0))
        else:
            checked = f"{len(observations)} observations"
            masks = None if saved.get("masks") is None else np.asarray(saved["masks"], bool)
            problem = compare_any(reference, artifact, observations, ParityStats(),
                                  saved["clause"], masks, _batch_sizes(saved, len(observations)))
    except (ModelLoadError, ArtifactError) as exc:
        return _error(str(exc))
    print(f"[{saved['clause']}] {problem}" if problem else
          f"[{saved['clause']}] the {checked} now agree")
    return 1 if problem else 0


def _batch_sizes(saved: dict, rows: int) -> tuple[int, ...] | None:
    """The batches the failing run used: `batch_sizes`, or (files written before batches were
    drawn as a schedule) one `batch_size` for every batch."""
    if saved.get("batch_sizes"):
        return tuple(int(n) for n in saved["batch_sizes"])
    size = saved.get("batch_size")
    return tuple(min(size, rows - i) for i in range(0, rows, size)) if size else None


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare
    from .record import ReportError

    try:
        found = compare(args.old, args.new, args.max_growth)
    except ReportError as exc:
        return _error(str(exc))
    print("\n".join(found.lines))
    return 1 if found.regressions else 0


def _merge(args: argparse.Namespace) -> int:
    from .record import ReportError
    from .report import json_text, junit_xml, terminal_summary, write_whole
    from .shards import merge

    if args.html:
        from .html import INSTALL_HINT, available

        if not available():
            return _error(f"--html needs matplotlib, which is not installed: {INSTALL_HINT}")
    try:
        run, lines = merge(args.reports)
        several = len(run.policies) > 1
        terminal_summary(run, lines.append, lambda title: lines.append(f"{'-' * 8} {title} "
                                                                      f"{'-' * 8}"),
                         problems_only=several and not args.verbose, report_path=args.report,
                         html_path=args.html and str(args.html))
        if not several:
            lines.append(f"{len(run.policies)} policy judged; requested level "
                         f"{run.requested_level.label}: {'met' if run.level_met else 'NOT MET'}")
        # Everything rendered before anything is written: a report edited into what this
        # suite never writes is one line of error, and leaves no half-written files.
        written = {}
        if args.report:
            written[args.report] = json_text(run.document())
        if args.junitxml:
            written[args.junitxml] = junit_xml(run)
        if args.html:
            from .html import render

            written[args.html] = render(run)
    except ReportError as exc:
        return _error(str(exc))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        return _error(f"the reports hold what --report never writes ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); pass the files the shards wrote, unedited")
    print("\n".join(lines))
    for path, text in written.items():
        write_whole(path, text)
    return 0 if run.level_met else 1


def _growth(text: str) -> float:
    value = float(text)
    if not value >= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: a factor of at least 1 (2 fails when a worst "
                                         "ratio more than doubles)")
    return value


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _spec(args: argparse.Namespace) -> int:
    if args.write:
        if not spec_doc.in_checkout():
            print("error: spec --write regenerates the repository's POLICY_ONNX_SPEC.md: run it "
                  "in a checkout of policy-onnx, not on an installed copy", file=sys.stderr)
            return 2
        print(f"updated {spec_doc.write()}")
        return 0
    problems = spec_doc.problems()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{spec_doc.SPEC_PATH}: POLICY_ONNX_SPEC {spec.SPEC_VERSION}, its clause tables "
              f"match the registry of policy-onnx {__version__}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="policy-onnx", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"policy-onnx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export", help="export an SB3 model zip to a POLICY_ONNX_SPEC artifact",
        description="Export an SB3 model .zip to a POLICY_ONNX_SPEC artifact (the exporter the "
                    "conformance suite itself uses). Example: policy-onnx export m.zip "
                    "-o m.onnx")
    export.add_argument("model", type=Path, help="the SB3 model .zip")
    export.add_argument("-o", "--output", type=Path,
                        help="the .onnx file to write (default: the model path with .onnx)")
    export.add_argument("--action-transform", choices=TRANSFORMS, default="none",
                        help="'none' bakes predict()'s post-processing into the graph; 'clip' "
                             "(unsquashed policies) and 'tanh' (squash_output) leave it to the "
                             "runtime (default: none)")
    export.add_argument("--image-layout", choices=IMAGE_LAYOUTS, default=IMAGE_LAYOUTS[0],
                        help=IMAGE_LAYOUT_HELP + " (default: HWC)")
    export.add_argument("--trust-model-code", action="store_true",
                        help=TRUST_HELP)
    export.add_argument("--vecnormalize", metavar="PKL",
                        help=VECNORMALIZE_HELP)
    export.set_defaults(run=_export)

    check = commands.add_parser(
        "check", help="run the conformance suite on a model (and an artifact)",
        description="Run the conformance suite: the same as pytest --pyargs "
                    "policy_onnx.conformance --model MODEL [--onnx ONNX]. Exit status 0 when the "
                    "level is met. Further pytest arguments go after --. Example: policy-onnx "
                    "check m.zip a.onnx --report v.json -- -n auto")
    check.add_argument("model", type=Path,
                       help="the SB3 model .zip, or a folder: every .zip in it")
    check.add_argument("onnx", type=Path, nargs="?",
                       help="the artifact to check, or for a folder of models a folder holding "
                            "<model name>.onnx for each (default: the suite exports the model)")
    check.add_argument("--level", choices=("basic", "standard", "extended"), default="standard",
                       help="the level to reach (default: standard)")
    check.add_argument("--report", type=Path, help="write the JSON report here")
    check.add_argument("--html", type=Path,
                       help="write the run as one self-contained HTML page here (needs "
                            "pip install policy-onnx[report])")
    check.add_argument("--runtime", metavar="NAMES",
                       help="also run the artifact in these engines, comma-separated (tract, "
                            "openvino; needs pip install policy-onnx[runtimes])")
    check.add_argument("--shard", metavar="K/N",
                       help="check only the K-th of N parts of a folder's models (whole "
                            "models, dealt by name); policy-onnx merge joins the N --report "
                            "files")
    check.add_argument("--image-layout", choices=IMAGE_LAYOUTS,
                       help=IMAGE_LAYOUT_HELP + ", for the suite's own export (default: HWC; "
                            "with an artifact, its observation_space says)")
    check.add_argument("--trust-model-code", action="store_true",
                        help=TRUST_HELP)
    check.add_argument("--vecnormalize", metavar="PKL",
                        help=VECNORMALIZE_HELP)
    check.set_defaults(run=_check)

    replay = commands.add_parser(
        "replay", help="run a saved parity counterexample again",
        description="Run the observations a failing parity clause saved through predict() and "
                    "the artifact again; exit status 1 while they still disagree. Example: "
                    "policy-onnx replay counterexamples/m/PAR-01.json")
    replay.add_argument("counterexample", type=Path, help="the .json file the failure names")
    replay.set_defaults(run=_replay)

    compare = commands.add_parser(
        "compare", help="compare two JSON reports: outcomes and margins, release over release",
        description="Compare the JSON report of a new run (--report) with an old one, e.g. the "
                    "last release's: the clauses whose outcome changed, per parity clause how its "
                    "worst |final - predict| / tolerance moved (old -> new, xgrowth), the "
                    "policies in one report only. Policies are matched by name, clauses by ID. "
                    "Exit status 1 on a regression: a clause that passed (or did not apply) now "
                    "failed or errored, a policy reaches a lower level, or (with --max-growth) a "
                    "worst ratio grew more than FACTOR times; 2 when a file is not a report this "
                    "policy-onnx reads; 0 otherwise. Example: policy-onnx compare "
                    "reports/last-release.json conformance/report.json --max-growth 2")
    compare.add_argument("old", type=Path, help="the earlier report (e.g. the last release's)")
    compare.add_argument("new", type=Path, help="the report of the run to judge")
    compare.add_argument("--max-growth", type=_growth, metavar="FACTOR",
                         help="fail when a clause's worst ratio grew more than FACTOR times "
                              "(new / old, an old ratio below 1e-6 counted as 1e-6); default: "
                              "margins are shown, never fail")
    compare.set_defaults(run=_compare)

    merge = commands.add_parser(
        "merge", help="one verdict of the JSON reports of a zoo's shards (--shard K/N)",
        description="Merge the JSON reports of the N shards of one run (pytest ... --shard K/N "
                    "--report reports/shard-K.json on N machines) into one: the summary, "
                    "and with --report, --junitxml and --html one JSON report, JUnit file and "
                    "page, as one run of every policy would write them. Exit status 0 when "
                    "every policy meets the requested level, 1 when one does not, 2 when a "
                    "shard is missing or given twice, or the shards differ in suite version, "
                    "options or models. Example: policy-onnx merge reports/*.json --report "
                    "report.json --junitxml junit.xml --html report.html")
    merge.add_argument("reports", type=Path, nargs="*",
                       help="every shard's JSON report, once each")
    merge.add_argument("--report", type=Path, help="write the merged JSON report here")
    merge.add_argument("--junitxml", type=Path,
                       help="write the verdicts as JUnit XML here (a test case per clause of "
                            "each policy)")
    merge.add_argument("--html", type=Path,
                       help="write the merged page here (needs pip install "
                            "policy-onnx[report])")
    merge.add_argument("-v", "--verbose", action="store_true",
                       help="list every clause of every policy (default: with several "
                            "policies, only the clauses that stop one)")
    merge.set_defaults(run=_merge)

    spec_cmd = commands.add_parser(
        "spec", help="check or regenerate the clause tables of POLICY_ONNX_SPEC.md",
        description="The clause tables of POLICY_ONNX_SPEC.md are generated from the registry "
                    "in policy_onnx/spec.py.")
    mode = spec_cmd.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="exit 1 if the document differs from the registry (the default)")
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables")
    spec_cmd.set_defaults(run=_spec)

    argv = sys.argv[1:] if argv is None else list(argv)
    pytest_args = []
    if "--" in argv:
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1:]
    args = parser.parse_args(argv)
    if pytest_args and args.command != "check":
        parser.error(f"only check passes arguments after -- to pytest, not {args.command}")
    args.pytest_args = pytest_args
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
