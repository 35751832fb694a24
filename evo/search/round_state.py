"""A growth round's bookkeeping, free of Ray and Optuna: budget, spend, candidates in flight, duplicates,
the infeasible streak and admission. The driver asks it what to do; tests check its rules in milliseconds.

Rules:
- a candidate starts only if its price fits the room left: budget − spent − prices of those in flight;
- a candidate that repeats one already evaluated (same computation) is skipped, using no slot or budget;
  so is one whose growth changes nothing its training reads (the driver checks; `skip`);
- one that does not fit is pruned and uses no slot; after `max_streak` skips or prunes in a row with
  nothing running and nothing done, the round cannot afford any candidate (BudgetError); a candidate
  that comes back below its price returns room, and the streak starts again;
- one priced out only by the running candidates' prices is kept (`defer`) and proposed again, cheapest
  first, once room returns (`take_deferred`);
- `reserved` is held back for the chosen candidate's learning of the held-out images
  (`evo.search.absorb`) from sampled candidates; a standard one may use it, and a round that cannot
  afford a single candidate releases it;
- work lost to a killed driver is not spent (see `evo.search.driver.spent_flops`).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

Admission = Literal["start", "duplicate", "over_budget"]


@dataclass
class InFlight:
    """A started candidate: its Optuna trial (opaque here), candidate, price and start time."""

    trial: Any
    candidate: Any
    price: int
    started: float


@dataclass
class RoundState:
    budget: float
    slots: int  # candidates the round may run to the end
    concurrency: int
    max_streak: int
    spent: int = 0
    started: int = 0  # candidates that used a slot (finished, failed, or running now)
    streak: int = 0  # skips and prunes since the last start
    seen: dict[str, int] = field(default_factory=dict)  # candidate key → trial number that evaluated it
    in_flight: dict[Hashable, InFlight] = field(default_factory=dict)
    reserved: int = 0  # held back for the winner's learning of the held-out images, after the choice
    deferred: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)  # (price, trial, params)

    def room(self) -> float:
        """Budget not yet spent nor reserved (by a running candidate, or for after the choice)."""
        return self.budget - self.spent - self.reserved - sum(f.price for f in self.in_flight.values())

    def defer(self, price: int, number: int, params: dict[str, Any], standard: bool = False) -> bool:
        """Keep a proposal that was priced out only by the running candidates' prices (it fits once they
        are back at no cost) to be proposed again when room returns; returns whether it was kept."""
        idle = self.budget - self.spent - self.reserved + (self.reserved if standard else 0)
        if not self.in_flight or price > idle:
            return False
        self.deferred.append((price, number, params))
        return True

    def take_deferred(self) -> list[tuple[int, dict[str, Any]]]:
        """The kept proposals that fit the room now, cheapest first, no more than the slots left: (trial
        number, parameters); the others stay kept."""
        room, slots, taken = self.room(), self.slots - self.started, []
        for item in sorted(self.deferred, key=lambda d: d[0]):
            price, number, params = item
            if price <= room and slots > 0:
                self.deferred.remove(item)
                taken.append((number, params))
                room, slots = room - price, slots - 1
        return taken

    def release(self) -> bool:
        """Give the reserve back to the candidates (a round that cannot afford one otherwise); returns
        whether there was one. The proposals start counting again."""
        had, self.reserved, self.streak = self.reserved > 0, 0, 0
        return had

    def can_start(self) -> bool:
        return (self.started < self.slots and len(self.in_flight) < self.concurrency
                and self.streak < self.max_streak)

    def admit(self, key: str, price: int, standard: bool = False) -> Admission:
        """Whether a proposed candidate starts; updates the counters either way. A `standard` candidate
        (one the round enqueues on purpose, such as the fast path) may use the reserve: the round must
        be able to run it, and the held-out images are then learned only if room is left.

        The reserve is priced on the round's base graph, and a grown winner's larger head costs more to
        learn them; that is not reserved as well. Prices are upper bounds (the GCV walk at its cap), the
        winner learns them if their price fits the room left after the choice, spent as measured, and
        reserving more priced out growth that went on to win (BENCHMARKS.md, "A regression, found and
        mended")."""
        if key in self.seen:
            self.streak += 1
            return "duplicate"
        if price > self.room() + (self.reserved if standard else 0):
            self.streak += 1
            return "over_budget"
        self.streak = 0
        self.started += 1
        return "start"

    def skip(self, key: str, number: int) -> None:
        """A proposal skipped before admission because it computes what trial `number` does: no slot, no
        budget; a repeat of it is then a duplicate of that trial (no second check)."""
        self.streak += 1
        self.seen[key] = number

    def stuck(self) -> bool:
        """Nothing running, nothing done, and the last `max_streak` proposals could not start."""
        return not self.in_flight and self.started == 0 and self.streak >= self.max_streak

    def launch(self, handle: Hashable, flight: InFlight, key: str, number: int) -> None:
        self.seen[key] = number
        self.in_flight[handle] = flight

    def finish(self, handle: Hashable, flops: int) -> InFlight:
        """A candidate came back (done or failed): its measured (or priced) cost is spent. Where that is
        below its price the room grew, and proposals priced out against the price may fit now: the
        streak starts again (prices are upper bounds; measured: the main job's last round ended with
        only the fast path run, its 12 proposals priced out beside the fast path's 47 GFLOPs price,
        which then spent 16)."""
        flight = self.in_flight.pop(handle)
        self.spent += int(flops)
        if int(flops) < flight.price:
            self.streak = 0
        return flight

    def invalid(self) -> None:
        """A proposal that could not even be built (an invalid growth) uses its slot."""
        self.started += 1
