"""Link learning: a per-direction, per-medium estimate of a link's delivery probability.

Each directed link (``src`` sends, ``dst`` receives, over ``plc`` or ``rf``) keeps a Beta
posterior over its delivery probability ``p``:

* the **prior** comes from the signal quality the module reports (0..15, Q/GDW 1376.2 R4, or
  the R4 of an AFN06 F4 search report) mapped to a prior mean by ``quality_prior`` and worth
  ``prior_weight`` pseudo-observations — a fresh link heard at quality 12 starts near 0.96, one
  heard at quality 3 near 0.14;
* the **evidence** is the (possibly fractional) count of successes and failures, decayed with
  a half-life so that old evidence fades when new evidence arrives (links change with the
  evening load, PV inverters switching, a meter box being opened ...);
* ``p`` is the posterior mean and ``std`` its standard deviation, which the route planner uses
  to decide where a probe is worth its airtime.

A link is marked **down** after ``down_after`` consecutive failures (the HPLC "route failure
limit 3", field-figures.md §1.1) or explicitly; a down link is not used for routing until a
real success or a fresh quality report brings it back.

When a multi-hop exchange fails the engine does not know which hop failed. ``distribute_blame``
gives each hop its *expected* share: the posterior probability that the exchange died exactly
there, given the current estimates (weak hops take most of the blame, and hops before the
failure point are credited with an expected success). Because a hop with little evidence moves
more per unit of evidence, the least certain hops also move most.

**By time of day.** PLC noise follows the day (the evening load, pumps and workshops that
run by day only), so a hop that carries every read at 3 a.m. may lose most frames at noon
and again every noon after. Besides the all-day evidence each estimate keeps the evidence
of each ``PERIOD_HOURS``-hour period of the (local) day, fading with ``period_half_life``
(days: the same hours come back once a day). ``p_worst`` is the posterior of the worst
period seen, and the planner counts on it (``p_plan``): a primary must stay good at every
hour a read may come, and night successes no longer outvote the noon failures. Blame for a
failed exchange is shared by the posteriors of the period it failed in (``p_at``): a
well-trodden hop that dies by day takes its share instead of leaving it all to the least
known hop of the path.

Everything here is pure: time is passed in as wall seconds (``clock.now().timestamp()``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "LinkConfig",
    "LinkEstimate",
    "quality_prior",
    "distribute_blame",
    "MEDIA",
]

#: Media a hop may use; a ``dual`` district has both.
MEDIA = ("plc", "rf")

#: hours of the day one period of the by-time-of-day evidence spans (6 periods a day)
PERIOD_HOURS = 4
PERIODS = 24 // PERIOD_HOURS
#: evidence of a period below which the period is not counted as seen (``p_worst``)
PERIOD_MIN_EVIDENCE = 0.5


def period_of(t: float) -> int:
    """Period of the local day (0..PERIODS-1) that wall time ``t`` falls in."""
    return time.localtime(t).tm_hour // PERIOD_HOURS


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Tuning of the link estimator (defaults are starting values, see module docstring)."""

    #: pseudo-observations the quality prior is worth
    prior_weight: float = 4.0
    #: prior mean used when no quality was ever reported for the link
    unknown_prior: float = 0.5
    #: evidence half-life in seconds (12 h: a day's reading round and its make-up round)
    half_life: float = 12 * 3600.0
    #: consecutive failures (fractional counts add up) that mark a link down
    down_after: float = 3.0
    #: how much a new quality report moves the prior mean (exponential moving average)
    quality_alpha: float = 0.3
    #: half-life of the by-time-of-day evidence: 3 days, so yesterday's noon failures still
    #: count at tonight's route choice and are confirmed or forgiven by tomorrow's noon
    period_half_life: float = 3 * 24 * 3600.0
    #: keep the by-time-of-day evidence at all (the topology turns it on with
    #: ``RouteConfig.worst_period``): off, a link carries no per-period lists, which on a
    #: 2,040-node district's ~78,000 links is tens of MB the HPLC routes would never read
    by_period: bool = False


def quality_prior(quality: int | None, unknown: float = 0.5) -> float:
    """Signal quality 0..15 -> prior mean delivery probability.

    A logistic curve with its cliff around quality 6 (PLC links are either good or bad; the
    middle is narrow). 0 -> ~0.04, 6 -> 0.5, 10 -> ~0.92, 15 -> ~0.98. Values outside 0..15
    are clamped (a logged rejection is the caller's business; the estimate stays usable).
    """
    if quality is None:
        return unknown
    p = _QUALITY_PRIOR.get(quality)  # the 16 qualities 1376.2 can report, worked out once
    if p is not None:
        return p
    return _quality_curve(min(15, max(0, int(quality))))


def _quality_curve(q: int) -> float:
    return 0.02 + 0.96 / (1.0 + math.exp(-(q - 6) / 1.5))


_QUALITY_PRIOR: dict[int, float] = {q: _quality_curve(q) for q in range(16)}


class LinkEstimate:
    """Beta posterior of one directed link's delivery probability (mutable, owned by a Topology)."""

    __slots__ = ("prior_mean", "prior_weight", "succ", "fail", "t_last", "down", "consec_fail",
                 "quality", "periods", "standby")

    def __init__(
        self,
        prior_mean: float = 0.5,
        prior_weight: float = 4.0,
        succ: float = 0.0,
        fail: float = 0.0,
        t_last: float | None = None,
        down: bool = False,
        consec_fail: float = 0.0,
        quality: int | None = None,
        periods: Sequence[Sequence[float]] | None = None,
        standby: bool = False,
    ) -> None:
        # Keep the prior strictly inside (0, 1) so ln(p) is always finite.
        self.prior_mean = min(0.999, max(0.001, prior_mean))
        self.prior_weight = prior_weight
        self.succ = succ
        self.fail = fail
        self.t_last = t_last
        self.down = down
        self.consec_fail = consec_fail
        self.quality = quality
        #: only heard in a survey's search, no outcome of ours yet (``Topology.hear``): the
        #: route planner charges it ``RouteConfig.standby_cost``; the first outcome clears it
        self.standby = standby
        #: [successes, failures] per period of the day (see module docstring); None until
        #: the first outcome recorded with ``LinkConfig.by_period``
        self.periods: list[list[float]] | None = None
        if periods:
            self.periods = [[0.0, 0.0] for _ in range(PERIODS)]
            for k, row in enumerate(periods[:PERIODS]):
                self.periods[k] = [float(row[0]), float(row[1])]

    # --- what the planner reads -------------------------------------------------------------

    @property
    def alpha(self) -> float:
        return self.prior_mean * self.prior_weight + self.succ

    @property
    def beta(self) -> float:
        return (1.0 - self.prior_mean) * self.prior_weight + self.fail

    @property
    def p(self) -> float:
        """Posterior mean delivery probability (ignores ``down``; see ``p_usable``)."""
        return self.p_given(self.succ, self.fail)

    def p_given(self, succ: float, fail: float) -> float:
        """Posterior mean on this link's prior with the evidence ``succ``/``fail`` instead of
        its own (a period of the day's; its successes alone, to judge a dead node's link)."""
        a = self.prior_mean * self.prior_weight + succ
        b = (1.0 - self.prior_mean) * self.prior_weight + fail
        return a / (a + b)

    @property
    def p_usable(self) -> float:
        """Delivery probability the router may count on: 0 while the link is down."""
        return 0.0 if self.down else self.p

    def _period_p(self, k: int) -> float:
        s, f = self.periods[k] if self.periods is not None else (0.0, 0.0)
        return self.p_given(s, f)

    def p_at(self, t: float | None) -> float:
        """Posterior for the period of the day of ``t``: the quality prior and that period's
        evidence only (the all-day ``p`` when ``t`` is None). Reads at other hours say
        little about this one: 300 night reads must not make a hop look sure at noon."""
        if t is None:
            return self.p
        return self._period_p(period_of(t))

    @property
    def p_worst(self) -> float:
        """Posterior of the worst period of the day with evidence (``p`` when none has)."""
        worst = self.p
        if self.periods is None:
            return worst
        for k in range(PERIODS):
            if sum(self.periods[k]) >= PERIOD_MIN_EVIDENCE:
                worst = min(worst, self._period_p(k))
        return worst

    @property
    def p_plan(self) -> float:
        """What the planner counts on: the worst period's posterior, 0 while down."""
        return 0.0 if self.down else self.p_worst

    @property
    def std(self) -> float:
        """Posterior standard deviation of ``p``: how unsure we are."""
        a, b = self.alpha, self.beta
        n = a + b
        return math.sqrt(a * b / (n * n * (n + 1.0)))

    def usable_p_std(self) -> tuple[float, float]:
        """(``p_usable``, ``std``) in one call, the same values (the route pricing's pair)."""
        pw, pm = self.prior_weight, self.prior_mean
        a = pm * pw + self.succ
        b = (1.0 - pm) * pw + self.fail
        n = a + b
        return (0.0 if self.down else a / n), math.sqrt(a * b / (n * n * (n + 1.0)))

    @property
    def evidence(self) -> float:
        """Decayed number of observations behind the estimate."""
        return self.succ + self.fail

    # --- learning ---------------------------------------------------------------------------

    def decay(self, t: float | None, half_life: float, period_half_life: float = 0.0) -> None:
        """Fade the evidence gathered before ``t`` (no-op when time did not move forward);
        the by-time-of-day evidence fades with ``period_half_life`` (0: kept)."""
        if t is None:
            return
        if self.t_last is not None and t > self.t_last and half_life > 0:
            k = 0.5 ** ((t - self.t_last) / half_life)
            self.succ *= k
            self.fail *= k
            if period_half_life > 0 and self.periods is not None:
                kp = 0.5 ** ((t - self.t_last) / period_half_life)
                for row in self.periods:
                    row[0] *= kp
                    row[1] *= kp
        if self.t_last is None or t > self.t_last:
            self.t_last = t

    def observe(
        self,
        ok: bool,
        t: float | None,
        cfg: LinkConfig,
        weight: float = 1.0,
        quality: int | None = None,
    ) -> bool:
        """Add one (possibly fractional) outcome; return True when ``down`` changed."""
        self.standby = False
        self.decay(t, cfg.half_life, cfg.period_half_life)
        was_down = self.down
        if quality is not None:
            self.note_quality(quality, cfg)
        if t is not None and cfg.by_period:
            if self.periods is None:
                self.periods = [[0.0, 0.0] for _ in range(PERIODS)]
            self.periods[period_of(t)][0 if ok else 1] += weight
        if ok:
            self.succ += weight
            self.consec_fail *= max(0.0, 1.0 - weight)
            # Only a real success (not a share of blame-free credit) proves the link is back.
            if weight >= 0.5:
                self.down = False
        else:
            self.fail += weight
            self.consec_fail += weight
            if self.consec_fail >= cfg.down_after - 1e-9:
                self.down = True
        return was_down != self.down

    def note_quality(self, quality: int, cfg: LinkConfig) -> bool:
        """A fresh signal-quality report: moves the prior mean; a heard link is not down."""
        q = min(15, max(0, int(quality)))
        target = quality_prior(q, cfg.unknown_prior)
        if self.quality is None:
            self.prior_mean = target
        else:
            self.prior_mean += cfg.quality_alpha * (target - self.prior_mean)
        self.prior_mean = min(0.999, max(0.001, self.prior_mean))
        self.quality = q
        was_down = self.down
        self.down = False
        self.consec_fail = 0.0
        return was_down

    def as_dict(self) -> dict:
        return {
            "prior_mean": self.prior_mean,
            "prior_weight": self.prior_weight,
            "succ": self.succ,
            "fail": self.fail,
            "t_last": self.t_last,
            "down": self.down,
            "consec_fail": self.consec_fail,
            "quality": self.quality,
            "periods": None if self.periods is None else
            [[round(s, 4), round(f, 4)] for s, f in self.periods],
            "standby": self.standby,
        }

    def __repr__(self) -> str:
        return (f"LinkEstimate(p={self.p:.3f}, std={self.std:.3f}, n={self.evidence:.1f}, "
                f"down={self.down}, q={self.quality})")


def distribute_blame(ps: Sequence[float]) -> list[tuple[float, float]]:
    """Expected (success, failure) weights for each directed hop of a failed exchange.

    ``ps`` are the delivery probabilities of the directed hops *in the order the exchange
    used them* (down the relay list, then back up). The exchange failed at the first hop that
    dropped the frame; the probability it died at hop k is ``prod(ps[:k]) * (1 - ps[k])``.
    Normalised by the failure probability, that is hop k's failure weight, and every earlier
    hop gets the probability that the failure came after it as a success weight. Hops after
    the failure point learn nothing. The failure weights sum to 1.
    """
    n = len(ps)
    if n == 0:
        return []
    first_fail = []
    reach = 1.0
    for p in ps:
        p = min(1.0, max(0.0, p))
        first_fail.append(reach * (1.0 - p))
        reach *= p
    total = sum(first_fail)
    if total <= 1e-12:
        # Every estimate says certain success, yet it failed: share the blame equally.
        return [(0.0, 1.0 / n)] * n
    fail_w = [x / total for x in first_fail]
    out = []
    after = 1.0
    for k in range(n):
        after -= fail_w[k]
        out.append((max(0.0, after), fail_w[k]))
    return out
