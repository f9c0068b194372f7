"""pytest-xdist scheduling for the suite: each policy's clause tests are one unit of work, so a
policy is opened, exported and prepared on one worker only.

pytest-xdist's own grouping (`--dist loadgroup`) renames each test with an `@group` suffix, which
pytest 9 no longer reads, so the suite names the scope of a test itself.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from . import spec

TEST_IDS = tuple(c.test_id for c in spec.CLAUSES)


def policy_scope(nodeid: str, keys: list[str]) -> str:
    """The key of the policy a clause test checks; any other test is a scope of its own."""
    params = nodeid.rpartition("::")[2].partition("[")[2].removesuffix("]")
    if len(keys) == 1 and params in TEST_IDS:
        return keys[0]
    for test_id in TEST_IDS:  # several policies: "<key>-<clause test id>"
        key = params.removesuffix(f"-{test_id}")
        if key != params and key in keys:
            return key
    return nodeid


class LoadPolicyScheduling(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with the policy as the scope."""

    def __init__(self, config, log, keys: list[str]) -> None:
        super().__init__(config, log)
        self.keys = keys

    def _split_scope(self, nodeid: str) -> str:
        return policy_scope(nodeid, self.keys)
