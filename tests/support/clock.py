"""A clock the test moves by hand: inject it where the code takes ``clock=time.monotonic``."""


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
