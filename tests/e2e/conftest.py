"""Fixtures that start real supervisords and check their logs afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.support import Supervisord


@pytest.fixture
def supervisord() -> Iterator[Callable[..., Supervisord]]:
    """Factory: ``supervisord(programs, clean_log=True)`` starts one; teardown stops it.

    With ``clean_log`` (the default) the test fails if supervisord logged UNKNOWN, a bad
    result line or a buffer overflow: a listener that breaks the protocol fails every test.
    """
    made: list[tuple[Supervisord, bool]] = []

    def make(
        programs: str, *, clean_log: bool = True, start: bool = True, **kwargs: object
    ) -> Supervisord:
        sup = Supervisord(programs, **kwargs)  # type: ignore[arg-type]
        made.append((sup, clean_log))
        return sup.start() if start else sup

    yield make
    failures = []
    for sup, clean in made:
        sup.kill_fast()
        bad = sup.bad_log_lines() if clean else []
        if bad:
            failures.append(f"{sup.conf}: " + "\n".join(bad[:10]))
        else:
            sup.cleanup()
    if failures:
        pytest.fail("supervisord logged protocol trouble:\n" + "\n".join(failures))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
