"""GPU instance prices: a dated table of list prices, and nothing guessed.

On-demand: Linux, shared tenancy, us-east-1, USD per instance-hour, as AWS's Price List
API gave them on 2026-01-19. They are copied from the table Karpenter generates from
that API, ``pkg/providers/pricing/zz_generated.pricing_aws.go`` in
aws/karpenter-provider-aws (header: "generated at 2026-01-19T13:23:24Z for us-east-1",
commit 031e72b6099630e960dacb88b48a7e9bb780945f). List prices at that date: check the
EC2 pricing page before you budget; other regions differ.

Spot: no published typical Spot price was found for these types, so none is listed;
Spot prices move with supply and demand (the EC2 Spot pricing page shows the current
ones). Pass your own with ``--price-per-hour`` and ``--spot``.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_DATE = "2026-01-19"
PRICES_REGION = "us-east-1"
PRICES_SOURCE = ("AWS Price List API via aws/karpenter-provider-aws "
                 "pkg/providers/pricing/zz_generated.pricing_aws.go "
                 "(generated 2026-01-19T13:23:24Z for us-east-1)")

ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6e.xlarge": 1.861,
    "g6e.2xlarge": 2.24208,
}
# Not found: left out rather than guessed (see the module docstring).
SPOT_USD_PER_HOUR: dict[str, float] = {}


@dataclass(frozen=True)
class HourlyPrice:
    usd: float
    source: str

    def line(self) -> str:
        return f"${self.usd:g}/h ({self.source})"


def list_price(instance_type: str, *, spot: bool) -> HourlyPrice | None:
    """The table's price for ``instance_type``, or None where it has none."""
    table = SPOT_USD_PER_HOUR if spot else ON_DEMAND_USD_PER_HOUR
    usd = table.get(instance_type)
    if usd is None:
        return None
    kind = "Spot" if spot else "on-demand"
    return HourlyPrice(usd, f"{kind} list price, {PRICES_REGION}, {PRICES_DATE}")


def price_for(instance_type: str, *, spot: bool,
              given_per_hour: float | None) -> HourlyPrice | None:
    """``given_per_hour`` when set (the caller's own price), else the table's."""
    if given_per_hour is not None:
        return HourlyPrice(given_per_hour, "given with --price-per-hour")
    return list_price(instance_type, spot=spot)
