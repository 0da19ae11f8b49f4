"""Mutation testing on request: inject each listed bug, run the tests meant to catch it, restore the source.

    python tools/mutants.py                 # every mutant; exit status 1 if one survives
    python tools/mutants.py --list          # the mutants and their killing tests
    python tools/mutants.py pac-quarter avg-stderr-sqrt    # some of them
    python tools/mutants.py --fast          # skip the mutants whose tests take minutes (the gallery's)

Each mutant is one plausible wrong number (a factor, an off-by-one, a missing square root, the wrong
reference point), written as an exact edit ``before -> after`` of one source file; ``before`` must occur
exactly once, so a mutant that no longer applies is reported (``stale``) instead of passing silently. For
each: the tests are first run on the clean tree (they must pass), then on the mutated one (they must
fail: the mutant is *killed*), and the file is restored byte for byte (and its mtime, so no stale
bytecode survives; the test runs write none). Add a mutant here with every bug a review finds, and a
test that kills it. Not part of the default test suite: run it before merging a change to a measure.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    before: str
    after: str
    tests: tuple[str, ...]
    slow: bool = False


CORR = "landscape/study/correlation.py"
PAC = "landscape/sharpness/pac_bayes.py"
AVG = "landscape/sharpness/average_case.py"
T_CORR = "tests/test_study_correlation.py::test_bootstrap_intervals_equal_a_plain_loop_over_resamples"
T_PAC = ("tests/test_sharpness_robustness.py::test_pac_bayes_bounds_worked_by_hand",
         "tests/test_sharpness_robustness.py::test_pac_bayes_bounds_use_the_sigmas_found")
T_AVG = ("tests/test_sharpness.py::test_average_case_is_reproducible_and_matches_its_expectation",
         "tests/test_sharpness.py::test_average_case_standard_error_is_the_sample_formula")
T_GNR = ("tests/test_gallery_gnr_lets.py::test_gnr_fig2_quick",)
T_FIG3 = ("tests/test_gallery_gasam.py::test_fig3_eigenvalues",)

MUTANTS = [
    # bootstrap intervals (correlation.py)
    Mutant("bootstrap-index-high", CORR, "idx = rng.integers(0, len(x), size=(n_boot, len(x)))",
           "idx = rng.integers(0, len(x) - 1, size=(n_boot, len(x)))", (T_CORR,)),
    Mutant("bootstrap-index-low", CORR, "idx = rng.integers(0, len(x), size=(n_boot, len(x)))",
           "idx = rng.integers(1, len(x), size=(n_boot, len(x)))", (T_CORR,)),
    Mutant("bootstrap-mean-index", CORR, "v[rng.integers(0, len(v), size=(n_boot, len(v)))]",
           "v[rng.integers(0, len(v) - 1, size=(n_boot, len(v)))]", (T_CORR,)),
    Mutant("interval-one-sided", CORR, "a = (1.0 - confidence) / 2.0", "a = 1.0 - confidence", (T_CORR,)),
    Mutant("Psi-draws-first-axis", CORR, "_interval(np.mean(draws, axis=0), confidence)",
           "_interval(draws[0], confidence)", (T_CORR,)),
    # magnitude-aware PAC-Bayes bound (pac_bayes.py)
    Mutant("pac-quarter", PAC, "return 0.25 * float(torch.log(num / den).sum())",
           "return 0.5 * float(torch.log(num / den).sum())", T_PAC),
    Mutant("pac-sigma-plus-one", PAC, "num = e2 + (sm * sm + 1) * float", "num = e2 + (sm * sm) * float", T_PAC),
    Mutant("pac-den-always-w", PAC, "den = e2 + sm * sm * (w if dist is None else dist).pow(2)",
           "den = e2 + sm * sm * w.pow(2)", T_PAC),
    Mutant("pac-den-reference", PAC, "den = e2 + sm * sm * (w if dist is None else dist).pow(2)",
           "den = e2 + sm * sm * v.pow(2)", T_PAC),
    Mutant("pac-log-plain-sigma", PAC, "+ math.log(m / sm) + 10", "+ math.log(m / s) + 10", T_PAC),
    Mutant("pac-init-uses-w", PAC, "bound_init=None if dist is None else bound(dist)",
           "bound_init=None if dist is None else bound(w)", T_PAC),
    # average-case sharpness (average_case.py, geometry.py)
    Mutant("avg-stderr-sqrt", AVG, "float(losses.std(ddof=1)) / math.sqrt(samples)",
           "float(losses.std(ddof=1)) / samples", T_AVG),
    Mutant("avg-stderr-ddof", AVG, "float(losses.std(ddof=1)) / math.sqrt(samples)",
           "float(losses.std()) / math.sqrt(samples)", T_AVG),
    Mutant("avg-stderr-double", AVG, "float(losses.std(ddof=1)) / math.sqrt(samples)",
           "2 * float(losses.std(ddof=1)) / math.sqrt(samples)", T_AVG),
    Mutant("avg-noise-sqrt2", AVG, "draw_perturbations(region, rho, samples, distribution, seed, chunk_size)",
           "draw_perturbations(region, rho * math.sqrt(2), samples, distribution, seed, chunk_size)", T_AVG),
    Mutant("gaussian-noise-sqrt2", "landscape/geometry.py", "a = [t * radius for t in z]",
           "a = [t * radius * math.sqrt(2) for t in z]", T_AVG),
    # gallery figures (the scripts' numbers against dense references)
    Mutant("gnr-fig2-trace-plus-stderr", "gallery/gnr_fig2.py", '"trace": tr["trace"], "trace_stderr"',
           '"trace": tr["trace"] + tr["stderr"], "trace_stderr"', T_GNR, slow=True),
    Mutant("gnr-fig2-test-split", "gallery/gnr_fig2.py", "top_k=top_k, residuals=False,",
           'top_k=top_k, residuals=False, split="test",', T_GNR, slow=True),
    Mutant("gasam-fig3-test-split", "gallery/gasam_fig3_eigenvalues.py", 'device="cpu", top_k=0,',
           'device="cpu", split="test", top_k=0,', T_FIG3, slow=True),
    Mutant("fisher-gram-n-minus-1", "landscape/curvature/fisher.py", "torch.linalg.eigvalsh(K / N)",
           "torch.linalg.eigvalsh(K / (N - 1))", T_FIG3, slow=True),
]


def pytest(tests: tuple[str, ...], timeout: float) -> tuple[int, float]:
    """Exit status and seconds of ``pytest -x`` on ``tests`` (no bytecode written, no cache)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = -1
    return rc, time.perf_counter() - start


def run(mutant: Mutant, timeout: float) -> tuple[str, float]:
    """``killed`` (the tests fail), ``SURVIVED``, ``stale`` (``before`` is not in the file once) or
    ``timeout`` (the mutated tests ran past ``timeout`` seconds: an infinite loop counts as killed)."""
    path = ROOT / mutant.path
    source = path.read_bytes()
    stat = path.stat()
    text = source.decode()
    if text.count(mutant.before) != 1:
        return "stale", 0.0
    try:
        path.write_text(text.replace(mutant.before, mutant.after))
        rc, seconds = pytest(mutant.tests, timeout)
    finally:
        path.write_bytes(source)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return ("timeout" if rc == -1 else "SURVIVED" if rc == 0 else "killed"), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="mutants to run [default: all]")
    p.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    p.add_argument("--fast", action="store_true", help="skip the slow (gallery) mutants")
    p.add_argument("--timeout", type=float, default=900, help="seconds per test run [default: 900]")
    args = p.parse_args(argv)
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        p.error(f"no mutant {', '.join(sorted(unknown))}; see --list")
    chosen = [m for m in MUTANTS if (not args.names or m.name in args.names) and not (args.fast and m.slow)]
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.path}: {m.before!r} -> {m.after!r}\n{'':28s} killed by {', '.join(m.tests)}")
        return 0
    suites = sorted({m.tests for m in chosen})
    for tests in suites:  # a mutant only counts as killed by tests that pass without it
        rc, seconds = pytest(tests, args.timeout)
        if rc != 0:
            print(f"the clean tree fails {' '.join(tests)} (exit {rc}): fix that first", file=sys.stderr)
            return 2
        print(f"clean: {' '.join(t.split('::')[-1] for t in tests)} pass ({seconds:.0f} s)", flush=True)
    results = []
    for m in chosen:
        status, seconds = run(m, args.timeout)
        results.append((m, status))
        print(f"{status:8s} {m.name:28s} {seconds:6.1f} s  {', '.join(t.split('::')[-1] for t in m.tests)}",
              flush=True)
    killed = sum(s in ("killed", "timeout") for _, s in results)
    print(f"\nmutation score: {killed}/{len(results)} killed")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
