"""``BodyDeadlines``: a body that is late is a :class:`sts.errors.BodyTimeout` (a 408), found by
the periodic sweep; a body that arrives is returned; a cancellation that is not the sweep's (the
worker stopping) is not mistaken for a late body."""

from __future__ import annotations

import asyncio

import pytest

from sts.api import token as endpoint
from sts.errors import BodyTimeout


class Body:
    """An RSGI protocol whose body arrives when ``arrive`` is set (never, by default)."""

    def __init__(self, data: bytes = b"grant_type=x") -> None:
        self.data = data
        self.arrive = asyncio.Event()

    async def __call__(self) -> bytes:
        await self.arrive.wait()
        return self.data


HEADERS = {"content-length": "12"}
#: Only says "not stuck": what the tests wait for happens within a second.
NOT_STUCK = 30.0


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "BODY_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(endpoint, "SWEEP_SECONDS", 0.05)


async def reading(deadlines: endpoint.BodyDeadlines, count: int) -> None:
    """Until ``count`` reads have begun (each with its deadline set)."""
    while len(deadlines._reading) < count:
        await asyncio.sleep(0)


async def ended(task: asyncio.Task[bytes], what: str) -> BaseException | None:
    """How ``task`` ended (its exception, or None); fails the test if it is still running
    after :data:`NOT_STUCK` seconds instead of hanging it."""
    done, _ = await asyncio.wait({task}, timeout=NOT_STUCK)
    assert task in done, what
    return task.exception()


@pytest.mark.usefixtures("quick")
def test_a_late_body_is_a_timeout_and_an_arriving_one_is_read() -> None:
    async def main() -> tuple[object, bytes, float]:
        deadlines = endpoint.BodyDeadlines()
        loop = asyncio.get_running_loop()
        deadlines.start(loop)
        withheld, sent = Body(), Body()
        started = loop.time()
        late = asyncio.create_task(deadlines.read(withheld, HEADERS))
        on_time = asyncio.create_task(deadlines.read(sent, HEADERS))
        # Both are being read, each with its deadline: then one body arrives.
        await reading(deadlines, 2)
        sent.arrive.set()
        assert await ended(on_time, "the body that arrived was never returned") is None
        outcome = await ended(late, "the late body was never given up on")
        took = loop.time() - started
        assert not deadlines._reading  # nothing left behind
        assert not deadlines._late
        return outcome, on_time.result(), took

    outcome, body, took = asyncio.run(main())
    assert isinstance(outcome, BodyTimeout)
    assert outcome.status == 408
    assert body == b"grant_type=x"
    # It really waited for its deadline (0.3 s); no sooner.
    assert took >= 0.3


def test_a_cancellation_from_elsewhere_stays_a_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sweep runs often, the deadline is far away: only the cancellation below can end it.
    monkeypatch.setattr(endpoint, "BODY_TIMEOUT_SECONDS", 10 * NOT_STUCK)
    monkeypatch.setattr(endpoint, "SWEEP_SECONDS", 0.05)

    async def main() -> None:
        deadlines = endpoint.BodyDeadlines()
        deadlines.start(asyncio.get_running_loop())
        task = asyncio.create_task(deadlines.read(Body(), HEADERS))
        await reading(deadlines, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not deadlines._reading

    asyncio.run(main())


def test_without_the_sweep_a_timer_of_its_own_still_bounds_the_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoint, "BODY_TIMEOUT_SECONDS", 0.2)

    async def main() -> BaseException | None:
        task = asyncio.create_task(endpoint.BodyDeadlines().read(Body(), HEADERS))
        return await ended(task, "without the sweep, nothing ended the read")

    assert isinstance(asyncio.run(main()), BodyTimeout)
