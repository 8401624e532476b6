"""Upstream's per-variant GPT-2 training budgets for AdamWPrune state runs.

Upstream gave some bitter variants more steps "to use the compute that
state pruning saves": bitter2 21% more (12,100 instead of 10,000), bitter3,
4, 5, 6, 8 and 9 30% more (13,000) (upstream gpt2/Kconfig help texts,
adamwprune_variants.md, seed 003). This module owns that table and turns a
run's model hyper-parameters into the budgeted ones; lib/matrix applies it
once per run, so the dry run, run.json and the trainer see the same number.
It reads no configuration itself.

Upstream extended only a budget of exactly its default 10,000 iterations;
here any GPT2_MAX_ITERS is scaled by the same factor (rounded down), so a
short run keeps the variants' proportions. At 10,000 both agree.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from lib.spec import RunSpec, VariantBudget

# Extra training steps in percent of the configured budget, by upstream variant name.
EXTRA_PCT: dict[str, int] = {"bitter2": 21, "bitter3": 30, "bitter4": 30, "bitter5": 30, "bitter6": 30,
                             "bitter8": 30, "bitter9": 30}


def extra_pct(variant: str | None) -> int:
    """The variant's extra budget in percent; `-upstream` forms ran under upstream's name, so they share it."""
    return EXTRA_PCT.get((variant or "").removesuffix("-upstream"), 0)


def budgeted_iters(max_iters: int, variant: str | None) -> int:
    """GPT2_MAX_ITERS scaled by the variant's factor: 10000 -> 12100 for bitter2."""
    return max_iters * (100 + extra_pct(variant)) // 100


def variant_budget(model_params: Mapping[str, Any],
                   variant: Optional[str]) -> tuple[Mapping[str, Any], Optional[VariantBudget]]:
    """The run's model parameters with its variant's budget applied (max_iters), and the budget.

    Unchanged (and no budget) when the option is off, the variant has no extra
    budget, or the run is bounded by epochs (max_iters 0). The ramp end
    (ADAMWPRUNE_RAMP_END_STEP) stays where it was configured, as upstream set it
    before extending.
    """
    base, pct = model_params.get("max_iters") or 0, extra_pct(variant)
    if not (model_params.get("variant_budgets") and base and pct):
        return model_params, None
    return ({**model_params, "max_iters": budgeted_iters(base, variant)},
            VariantBudget(base_max_iters=base, extra_pct=pct, variant=variant))


def budget_label(spec: RunSpec) -> str | None:
    """'12100 iters (bitter2 +21%)' for a budgeted run, else None (for the dry run)."""
    budget = spec.variant_budget
    if budget is None:
        return None
    return f"{spec.model_params['max_iters']} iters ({budget.variant} +{budget.extra_pct}%)"
