"""``sts.rsgi.BodyDeadlines``: a body that is late is a TimeoutError (then 408), found by the
periodic sweep; a body that arrives is returned; a cancellation that is not the sweep's (the
worker stopping) is not mistaken for a late body."""

from __future__ import annotations

import asyncio

import pytest

from sts import rsgi


class Body:
    """An RSGI protocol whose body arrives when ``arrive`` is set (never, by default)."""

    def __init__(self, data: bytes = b"grant_type=x") -> None:
        self.data = data
        self.arrive = asyncio.Event()

    async def __call__(self) -> bytes:
        await self.arrive.wait()
        return self.data


HEADERS = {"content-length": "12"}


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rsgi, "BODY_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(rsgi, "SWEEP_SECONDS", 0.05)


@pytest.mark.usefixtures("quick")
def test_a_late_body_is_a_timeout_and_an_arriving_one_is_read() -> None:
    async def main() -> tuple[object, bytes, float]:
        deadlines = rsgi.BodyDeadlines()
        deadlines.start(asyncio.get_running_loop())
        withheld, sent = Body(), Body()
        loop = asyncio.get_running_loop()
        started = loop.time()
        late = asyncio.create_task(deadlines.read(withheld, HEADERS))
        on_time = asyncio.create_task(deadlines.read(sent, HEADERS))
        await asyncio.sleep(0.1)
        sent.arrive.set()
        body = await on_time
        outcome: object
        try:
            await late
        except TimeoutError as error:
            outcome = error
        took = loop.time() - started
        assert not deadlines._reading  # nothing left behind
        assert not deadlines._late
        return outcome, body, took

    outcome, body, took = asyncio.run(main())
    assert isinstance(outcome, TimeoutError)
    assert body == b"grant_type=x"
    assert 0.3 <= took < 0.6


@pytest.mark.usefixtures("quick")
def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def main() -> None:
        deadlines = rsgi.BodyDeadlines()
        deadlines.start(asyncio.get_running_loop())
        task = asyncio.create_task(deadlines.read(Body(), HEADERS))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not deadlines._reading

    asyncio.run(main())


def test_without_the_sweep_a_timer_of_its_own_still_bounds_the_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rsgi, "BODY_TIMEOUT_SECONDS", 0.2)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await rsgi.BodyDeadlines().read(Body(), HEADERS)

    asyncio.run(main())
