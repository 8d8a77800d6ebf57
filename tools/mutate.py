"""Mutation testing of the decision code: `make mutation` (docs/MUTATION.md).

A small AST mutator, written for this repository because the package maps
`carboncp.runtime` onto `runtime/` (mutmut 3 expects a src/ layout) and because several
people share one working tree: NO FILE IS EVER CHANGED. Each mutant is compiled in memory
and served to a forked pytest run by an import hook for that one module; everything else
imports from the tree as usual.

Mutations (the classic focused set):
  arithmetic   + -> -, - -> +, * -> /, / -> *, // -> *, % -> //, ** -> *  (also in +=, -=, ...)
  comparison   < -> <=, <= -> <, > -> >=, >= -> >, == -> !=, != -> ==, in <-> not in, is <-> is not
  boolean      and <-> or, `not x` -> x, True <-> False
  constants    int n -> n + 1; float x -> x + 1 when |x| < 1, else 2x; -x -> x
  extremes     min <-> max, np.minimum <-> np.maximum
Never mutated: strings, annotations, f-strings, the arguments of `raise` (messages).

A mutant is KILLED when its module's tests fail (or time out, or do not import); it
SURVIVES when they pass. Survivors judged equivalent (no test can tell them from the
original) are listed with a reason in tools/mutation_equivalents.txt and do not count in
the score: the last line printed is `killed K of N (P%)` with N = mutants not judged
equivalent.

Usage:
  python tools/mutate.py                     # every module, report to docs/MUTATION.md
  python tools/mutate.py --module costs      # one module (no report unless --report)
  python tools/mutate.py --list              # enumerate mutants only
  python tools/mutate.py --target runtime/device/wiring.py --tests tests/runtime/test_e2e_table.py \\
      --only "online=settings.online"        # plant chosen mutants in any module (hand checks)
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENTS = REPO / "tools" / "mutation_equivalents.txt"
REPORT = REPO / "docs" / "MUTATION.md"
RESULTS = REPO / ".cache" / "mutation-results.json"  # the last full run, for --again

# module file -> (import name, the tests that guard it: fast, no subprocess servers)
_RT = "tests/runtime/"
MODULES: dict[str, tuple[str, list[str]]] = {
    "runtime/decision/conformal.py": (
        "carboncp.runtime.decision.conformal",
        [_RT + "test_conformal_exact.py", _RT + "test_conformal.py", _RT + "test_policy.py"],
    ),
    "runtime/decision/costs.py": (
        "carboncp.runtime.decision.costs",
        [
            _RT + "test_costs_expected.py",
            _RT + "test_costs_boundaries.py",
            _RT + "test_costs.py",
            _RT + "test_expected_rule.py",
            _RT + "test_objective_default.py",
            _RT + "test_probe_value.py",
        ],
    ),
    "runtime/decision/policy.py": (
        "carboncp.runtime.decision.policy",
        [_RT + "test_policy_exact.py", _RT + "test_policy.py", _RT + "test_expected_rule.py"],
    ),
    "runtime/decision/table.py": (
        "carboncp.runtime.decision.table",
        [
            _RT + "test_table_exact.py",
            _RT + "test_cell_index.py",
            _RT + "test_bundle_faults.py",
            _RT + "test_policy_exact.py",
            _RT + "test_policy.py",
        ],
    ),
    "runtime/decision/probe_value.py": (
        "carboncp.runtime.decision.probe_value",
        [_RT + "test_probe_value.py", _RT + "test_loop_probe_gate.py"],
    ),
    "runtime/signals/carbon.py": (
        "carboncp.runtime.signals.carbon",
        [
            _RT + "test_carbon_boundaries.py",
            _RT + "test_carbon_signals.py",
            _RT + "test_signal_faults.py",
        ],
    ),
}

_BINOPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
}  # fmt: skip
_CMPOPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
_SWAP_NAMES = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum"}


@dataclass
class Mutant:
    path: str  # repository-relative module file
    node_index: int  # preorder index of the mutated node
    variant: int  # which mutation of that node
    line: int
    qualname: str
    before: str
    after: str
    key: str = ""  # stable id: path::qualname::before -> after#occurrence

    def label(self) -> str:
        return f"{self.path}:{self.line} {self.qualname}: `{self.before}` -> `{self.after}`"


# -- enumeration --------------------------------------------------------------------------
def _preorder(tree: ast.AST):
    """(index, node, qualname, skipped) in a deterministic preorder."""
    counter = [0]

    def rec(node: ast.AST, qual: str, skip: bool):
        idx = counter[0]
        counter[0] += 1
        yield idx, node, qual, skip
        for field, value in ast.iter_fields(node):
            for ch in value if isinstance(value, list) else [value]:
                if not isinstance(ch, ast.AST):
                    continue
                s = (
                    skip
                    or field in ("annotation", "returns")
                    or isinstance(node, ast.Raise)
                    or isinstance(ch, ast.JoinedStr)
                )
                q = qual
                if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    q = f"{qual}.{ch.name}" if qual else ch.name
                yield from rec(ch, q, s)

    yield from rec(tree, "", False)


def _const_variant(v: object) -> object | None:
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v + 1.0 if abs(v) < 1 else v * 2.0
    return None


def _variants(node: ast.AST) -> list[tuple[str, object]]:
    """The mutations of one node: (kind, argument) pairs, applied by _apply."""
    out: list[tuple[str, object]] = []
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOPS:
        out.append(("binop", _BINOPS[type(node.op)]))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _CMPOPS:
                out.append(("cmp", (i, _CMPOPS[type(op)])))
    elif isinstance(node, ast.BoolOp):
        out.append(("boolop", ast.Or if isinstance(node.op, ast.And) else ast.And))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append(("drop_unary", None))
    elif isinstance(node, ast.Constant) and _const_variant(node.value) is not None:
        out.append(("const", _const_variant(node.value)))
    elif isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in _SWAP_NAMES:
            out.append(("swap_call", _SWAP_NAMES[name]))
    return out


def _apply(node: ast.AST, kind: str, arg: object) -> ast.AST:
    """Mutate `node` in place (or return its replacement)."""
    if kind == "binop":
        node.op = arg()  # type: ignore[attr-defined,operator]
    elif kind == "cmp":
        i, op = arg  # type: ignore[misc]
        node.ops[i] = op()  # type: ignore[attr-defined]
    elif kind == "boolop":
        node.op = arg()  # type: ignore[attr-defined,operator]
    elif kind == "drop_unary":
        return node.operand  # type: ignore[attr-defined]
    elif kind == "const":
        node.value = arg  # type: ignore[attr-defined]
    elif kind == "swap_call":
        f = node.func  # type: ignore[attr-defined]
        if isinstance(f, ast.Name):
            f.id = arg
        else:
            f.attr = arg
    return node


def _short(node: ast.AST) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= 90 else text[:87] + "..."


def enumerate_mutants(path: str, src: str) -> list[Mutant]:
    out: list[Mutant] = []
    seen: Counter[str] = Counter()
    for idx, node, qual, skip in _preorder(ast.parse(src)):
        if skip:
            continue
        for v, (kind, arg) in enumerate(_variants(node)):
            import copy

            mutated = _apply(copy.deepcopy(node), kind, arg)
            m = Mutant(path, idx, v, getattr(node, "lineno", 0), qual or "<module>",
                       _short(node), _short(mutated))  # fmt: skip
            base = f"{path}::{m.qualname}::{m.before} -> {m.after}"
            m.key = f"{base}#{seen[base]}"
            seen[base] += 1
            out.append(m)
    return out


def mutant_code(m: Mutant, src: str):
    """The mutant compiled from `src`, the module's text read once at the start of its run
    (others may edit the file meanwhile: every mutant of a run comes from one snapshot)."""
    tree = ast.parse(src)
    for idx, node, _q, _s in _preorder(tree):
        if idx == m.node_index:
            kind, arg = _variants(node)[m.variant]
            new = _apply(node, kind, arg)
            if new is not node:
                _replace(tree, node, new)
            break
    ast.fix_missing_locations(tree)
    return compile(tree, str(REPO / m.path), "exec")


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if v is old:
                        value[i] = new
                        return


# -- running ------------------------------------------------------------------------------
class _Loader(importlib.abc.Loader):
    def __init__(self, code, path: str) -> None:
        self.code, self.path = code, path

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = self.path
        exec(self.code, module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, code, path: str) -> None:
        self.name, self.loader, self.path = name, _Loader(code, path), path

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self.loader, origin=self.path)


def run_tests(module: str | None, code, path: str | None, tests: list[str], timeout: float) -> str:
    """'passed', 'failed' or 'timeout': pytest in a forked child, the mutant served by an
    import hook (module None: the unmutated code)."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            if module is not None:
                sys.meta_path.insert(0, _Finder(module, code, path))
            import pytest

            rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                              "-W", "ignore", *tests])  # fmt: skip
            os._exit(0 if rc == 0 else 1)
        except BaseException:
            os._exit(1)
    t0 = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.01)


def load_equivalents() -> dict[str, str]:
    out: dict[str, str] = {}
    if EQUIVALENTS.is_file():
        for line in EQUIVALENTS.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, reason = line.partition("\t")
                out[key.strip()] = reason.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--module", action="append", help="a module's stem (conformal, costs, ...)")
    ap.add_argument("--target", help="any module file (with --tests): hand checks")
    ap.add_argument("--tests", nargs="+", help="the tests for --target")
    ap.add_argument("--only", help="only mutants whose label contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument(
        "--again",
        action="store_true",
        help=f"rerun only the survivors of the last full run ({RESULTS.name}), then report",
    )
    ap.add_argument(
        "--plant", metavar="OLD=>NEW", help="with --target/--tests: one hand-written bug (text)"
    )
    ap.add_argument("--report", help=f"write the report here (default {REPORT} for a full run)")
    args = ap.parse_args(argv)
    sys.dont_write_bytecode = True
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(REPO)

    if args.target:
        name = "carboncp." + args.target.removesuffix(".py").replace("/", ".")
        targets = {args.target: (name, args.tests or [])}
    else:
        targets = {
            p: v for p, v in MODULES.items()
            if not args.module or Path(p).stem in args.module
        }  # fmt: skip
    full_run = not args.module and not args.target and not args.only
    report = Path(args.report) if args.report else (REPORT if full_run else None)
    equivalents = load_equivalents()

    if args.plant:
        return plant(targets, args.plant)
    import numpy  # noqa: F401  (forked children start with numpy and pytest loaded)
    import pytest  # noqa: F401

    t_start = time.monotonic()
    rows: list[tuple[Mutant, str]] = []
    previous: dict[str, str] = {}
    if args.again:
        import json

        saved = json.loads(RESULTS.read_text())
        previous = saved["outcomes"]
        t_start -= saved["elapsed_s"]
    for path, (module, tests) in targets.items():
        tests = [t for t in tests if (REPO / t).is_file()]
        src = (REPO / path).read_text()
        mutants = enumerate_mutants(path, src)
        if args.only:
            mutants = [m for m in mutants if args.only in m.label()]
        if args.list:
            for m in mutants:
                print(m.label())
            continue
        t0 = time.monotonic()
        if run_tests(None, None, None, tests, 600) != "passed":
            print(f"{path}: its tests fail WITHOUT a mutant; fix them first", file=sys.stderr)
            return 2
        base = time.monotonic() - t0
        timeout = max(20.0, 4 * base)
        print(f"{path}: {len(mutants)} mutants; tests {base:.1f} s unmutated", flush=True)
        for i, m in enumerate(mutants, 1):
            if i % 25 == 0:
                print(f"  ... {i}/{len(mutants)}", flush=True)
            if previous.get(m.key, "passed") != "passed":  # killed last time: stays killed
                rows.append((m, previous[m.key]))
                continue
            outcome = run_tests(module, mutant_code(m, src), str(REPO / path), tests, timeout)
            rows.append((m, outcome))
            if outcome == "passed":
                tag = "EQUIVALENT" if m.key in equivalents else "SURVIVED"
                print(f"  {tag}: {m.label()}\n      key: {m.key}", flush=True)
    if args.list:
        return 0
    elapsed = time.monotonic() - t_start
    survived = [m for m, o in rows if o == "passed" and m.key not in equivalents]
    equiv = [m for m, o in rows if o == "passed" and m.key in equivalents]
    n = len(rows) - len(equiv)
    killed = n - len(survived)
    if full_run or args.again:
        import json

        RESULTS.parent.mkdir(exist_ok=True)
        outcomes = {m.key: o for m, o in rows}
        RESULTS.write_text(json.dumps({"elapsed_s": elapsed, "outcomes": outcomes}))
        report = report or REPORT
    if report is not None:
        write_report(report, rows, equivalents, elapsed)
    print(f"{len(rows)} mutants, {len(equiv)} judged equivalent, {len(survived)} survived; "
          f"{elapsed / 60:.1f} min")  # fmt: skip
    print(f"killed {killed} of {n} ({100.0 * killed / n if n else 100.0:.1f}%)")
    return 0


def plant(targets: dict[str, tuple[str, list[str]]], spec: str) -> int:
    """Run the tests against one hand-written bug: KILLED or SURVIVED."""
    old, _, new = spec.partition("=>")
    ((path, (module, tests)),) = targets.items()
    src = (REPO / path).read_text()
    if src.count(old) != 1:
        print(f"{path}: {old!r} occurs {src.count(old)} times, not once", file=sys.stderr)
        return 2
    code = compile(src.replace(old, new), str(REPO / path), "exec")
    outcome = run_tests(module, code, str(REPO / path), tests, 900)
    print(f"{'SURVIVED' if outcome == 'passed' else 'KILLED'}: {path}: {old!r} -> {new!r}")
    return 0


def write_report(path: Path, rows, equivalents: dict[str, str], elapsed: float) -> None:
    per: dict[str, Counter[str]] = {}
    for m, o in rows:
        c = per.setdefault(m.path, Counter())
        c["n"] += 1
        c["equivalent" if o == "passed" and m.key in equivalents else o] += 1
    lines = [
        "# Mutation testing of the decision code",
        "",
        "`make mutation` (`python tools/mutate.py`) plants one small bug at a time in the decision",
        "code and runs that module's tests against it; a mutant the tests do not notice",
        "*survives*. The tool, its mutations and the tests per module are described in",
        "`tools/mutate.py`; no file is changed while it runs (each mutant is served to a forked",
        "pytest by an import hook). Survivors that no test can tell from the original are listed",
        "in `tools/mutation_equivalents.txt` with the reason and are left out of the score.",
        "",
        f"Last full run: {time.strftime('%Y-%m-%d')}, {elapsed / 60:.1f} min on the 2-core "
        "development host (one worker).",
        "",
        "| module | mutants | killed | timed out | equivalent | survived |",
        "|---|---|---|---|---|---|",
    ]
    for p, c in per.items():
        lines.append(
            f"| {p} | {c['n']} | {c['failed']} | {c['timeout']} | {c['equivalent']} | "
            f"{c['passed']} |"
        )
    tot = Counter()
    for c in per.values():
        tot.update(c)
    n = tot["n"] - tot["equivalent"]
    k = tot["failed"] + tot["timeout"]
    lines += ["", f"**killed {k} of {n} ({100.0 * k / n if n else 100.0:.1f}%)**", ""]
    lines += ["## Surviving mutants (not judged equivalent)", ""]
    surv = [m for m, o in rows if o == "passed" and m.key not in equivalents]
    lines += [f"- {m.label()}" for m in surv] or ["None."]
    lines += ["", "## Equivalent mutants", ""]
    eq = [m for m, o in rows if o == "passed" and m.key in equivalents]
    lines += [f"- {m.label()}: {equivalents[m.key]}" for m in eq] or ["None."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
