"""Property-based fuzzing of every public entry point (issue #13).

Every example ends in success or in a :class:`~xharmonise.HarmoniseError` whose message
names the problem and the fix, and never modifies its inputs; the strategies and the
property live in ``tests/fuzz_strategies.py`` (``benchmarks/fuzz.py`` runs thousands more).
"""

from __future__ import annotations

import pytest
from fuzz_strategies import ENTRY_POINTS, check, strategies
from hypothesis import HealthCheck, given, settings

# CI: a fixed seed, no example database, no deadline (first calls import and compile).
settings.register_profile(
    "xharmonise-fuzz",
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_SETTINGS = settings.get_profile("xharmonise-fuzz")
_STRATEGIES = strategies()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_point_refuses_bad_input_by_name(entry):
    outcomes: list[str] = []

    @_SETTINGS
    @given(case=_STRATEGIES[entry])
    def run(case):
        outcomes.append(check(case))

    run()
    # As many examples as the profile asks (none lost to an exhausted strategy), and
    # some of them accepted: the cases reach the deep code, not only the first check.
    assert len(outcomes) >= _SETTINGS.max_examples
    assert outcomes.count("ok") + outcomes.count("exit 0") >= _SETTINGS.max_examples // 20
