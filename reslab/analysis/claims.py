"""The paper's claims, checked on measured numbers: each function says whether a claim holds and
how clearly (by how much, against the spread between seeds). Pure functions of histories and
numbers, so a report can be rebuilt from committed metrics and the judgement is tested on its own.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

History = list[dict[str, Any]]


@dataclass(frozen=True)
class Spread:
    """Values of one quantity over seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self, scale: float = 100.0) -> str:
        """"24.80 +- 0.31 (n=3)" in percent by default."""
        if not self.values:
            return ""
        if len(self.values) == 1:
            return f"{scale * self.mean:.2f} (n=1)"
        return f"{scale * self.mean:.2f} +- {scale * self.std:.2f} (n={len(self.values)})"


def final(history: History, key: str) -> float | None:
    values = [row[key] for row in history if row.get(key) is not None]
    return values[-1] if values else None


def spread(histories: Sequence[History], key: str) -> Spread:
    """The last recorded ``key`` of each history (one per seed)."""
    values = [final(h, key) for h in histories]
    return Spread(tuple(v for v in values if v is not None))


def above_throughout(worse: Sequence[History], better: Sequence[History], key: str) -> tuple[int, int]:
    """Over seed-matched pairs, at every epoch both recorded: (epochs where ``worse`` is higher, epochs
    compared). Fig. 1's claim is that plain-56 is above plain-20 *throughout* training."""
    above = compared = 0
    for a, b in zip(worse, better):
        by_epoch = {row["epoch"]: row.get(key) for row in b}
        for row in a:
            other = by_epoch.get(row["epoch"])
            if row.get(key) is not None and other is not None:
                compared += 1
                above += row[key] > other
    return above, compared


@dataclass(frozen=True)
class Ordering:
    """Whether errors fall in the order given (e.g. by depth), and where a step is within the spread."""

    labels: tuple[str, ...]
    unclear: tuple[tuple[str, str], ...]  # adjacent pairs whose gap is smaller than their seeds' spread
    reversed: tuple[tuple[str, str], ...]  # adjacent pairs whose second mean is not below the first
    unjudged: tuple[tuple[str, str], ...] = ()  # adjacent pairs of one seed each: no spread to judge by

    @property
    def holds(self) -> bool:
        """Every mean strictly below the one before."""
        return not self.reversed

    def sentence(self, what: str = "error") -> str:
        chain = " > ".join(self.labels)
        if not self.holds:
            # Say which steps break the order and whether each break is larger than the seeds' spread:
            # a break within the spread means "not shown", one beyond it means "the other way round".
            breaks = "; ".join(f"{a} vs {b} " + self._size_of_break(a, b) for a, b in self.reversed)
            return f"The expected order of {what} ({chain}) does NOT hold in the means over seeds: {breaks}."
        text = f"The expected order of {what} ({chain}) holds in the means over seeds"
        caveats = []
        if self.unclear:
            caveats.append("these steps are within the spread between seeds (std): "
                           + ", ".join(f"{a} vs {b}" for a, b in self.unclear))
        if self.unjudged:
            caveats.append("these steps compare one seed with one seed, with no spread to judge them by: "
                           + ", ".join(f"{a} vs {b}" for a, b in self.unjudged))
        if not caveats:
            return text + ", and each step is larger than the spread between seeds."
        return text + "; but " + "; and ".join(caveats) + "."

    def _size_of_break(self, a: str, b: str) -> str:
        if (a, b) in self.unjudged:
            return "reversed (one seed each: no spread to judge by)"
        if (a, b) in self.unclear:
            return "within the spread between seeds"
        return "reversed by more than the spread between seeds"


def decreasing(spreads: dict[str, Spread]) -> Ordering:
    """Expect each spread's mean below the previous one's (dict order)."""
    labels = tuple(spreads)
    items = list(spreads.values())
    steps = list(zip(labels, labels[1:], items, items[1:]))
    reversed_steps = tuple((la, lb) for la, lb, a, b in steps if b.mean >= a.mean)
    # A single seed has no spread: a step between two of them is not judged (one side with seeds
    # lends the step its spread).
    unjudged = tuple((la, lb) for la, lb, a, b in steps if len(a.values) < 2 and len(b.values) < 2)
    unclear = tuple((la, lb) for la, lb, a, b in steps
                    if (la, lb) not in unjudged and abs(a.mean - b.mean) <= max(a.std, b.std))
    return Ordering(labels, unclear, reversed_steps, unjudged)


def mean_response(responses: Sequence[dict[str, Any]]) -> float:
    """The mean over layers of each layer's response std (Fig. 7's quantity, in one number)."""
    return statistics.mean(r["std"] for r in responses)
