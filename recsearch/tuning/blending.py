"""The sweep's blend (``search.blend``): its families' winners, weighted on validation.

On a small catalogue no single family is best for every user, and a weighted sum of the
winners' scores beats each of them (``bench/small_catalogue.py``). After the trials and the
re-evaluation, the winner of each family that can be blended (ranking, not sequential:
``recsearch.models.blend``), chosen as the sweep chooses its own (by the mean over fresh seeds
among the family's re-evaluated configurations, else the best-ranked trial), is restored at its
best epoch and scores every user; the scores are
standardised per user and kept in memory. Greedy forward selection with replacement (Caruana et
al. 2004) then starts from the best single member and repeatedly adds the member and weight (from
``search.blend.weights``) that raise validation most, until none does or ``max_steps`` are taken.

If it added anything, the blend replaces the sweep's winner: with ``search.refit`` its members
are refitted on train + valid (``recsearch.tuning.refit``), and ``export`` builds the
``Blend`` model, tests it, once, and saves it as ``best/``. The choice is written to
``blend.json`` before anything else runs, so a resumed sweep keeps it. Nothing here reads the
test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from recsearch.data.dataset import Split
from recsearch.models.blend import Blend, standardised, weighted_sum
from recsearch.output import write_json
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.reevaluation import best_candidate
from recsearch.tuning.results import Trial

BLEND_FILE = "blend.json"
SCORE_BUDGET_BYTES = 2 << 30  # the members' standardised scores for every user, held at once
SCORE_BATCH = 512  # users scored at a time while the members' scores are gathered


def settings(plan: SweepPlan) -> dict[str, Any] | None:
    """``search.blend`` when it is on (plans saved before it existed: off)."""
    chosen = plan.first["search"].get("blend")
    return chosen if chosen and chosen["enabled"] else None


def recorded(plan: SweepPlan) -> dict[str, Any] | None:
    """What ``choose`` wrote (None before it ran)."""
    path = Path(plan.out) / BLEND_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def chosen(plan: SweepPlan) -> dict[str, Any] | None:
    """The blend, when it replaced the sweep's winner."""
    record = recorded(plan)
    return record if record and record["chosen"] else None


def blendable(plan: SweepPlan, board: list[dict[str, Any]],
              reevaluated: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The winner of every family a blend can hold, best first: the family's configuration with
    the best mean over fresh seeds when some were re-evaluated (as the sweep chooses its own
    winner), else its best-ranked row."""
    from recsearch.models.factory import target_class

    rows, seen = [], set()
    for row in board:
        family = row["family"]
        if row["rank"] is None or family in seen:
            continue
        seen.add(family)
        if not Blend.accepts(target_class(plan.configs[family]["model"])):
            continue
        candidates = [c for c in (reevaluated or {}).get("candidates", []) if c["family"] == family]
        best = best_candidate(candidates, plan.first["task"]["metric"])
        rows.append(next(r for r in board if r["trial"] == best["trial"]) if best else row)
    return rows


def choose(plan: SweepPlan, split: Split, board: list[dict[str, Any]], trials: dict[str, Trial],
           reevaluated: dict[str, Any] | None = None) -> dict[str, Any]:
    """Search the blend of the families' winners (``blendable``) on validation; writes and
    returns its record."""
    from recsearch.evaluation import Evaluator

    blend, config = settings(plan), plan.first
    metric = config["task"]["metric"]
    rows = blendable(plan, board, reevaluated)
    record: dict[str, Any] = {"chosen": False, "metric": metric, "candidates": [r["trial"] for r in rows], "members": [], "steps": []}
    needed = len(rows) * split.n_users * split.n_items * 4
    if len(rows) < 2:
        record["why"] = f"{len(rows)} family with a finished trial can be blended; a blend needs two"
    elif needed > SCORE_BUDGET_BYTES:
        record["why"] = (f"the members' scores for every user need {needed / 2**30:.1f} GiB, over the "
                         f"{SCORE_BUDGET_BYTES / 2**30:.0f} GiB a blend search may hold")
    else:
        print(f"\n== blend: searching weights for {', '.join(record['candidates'])} on validation", flush=True)
        evaluator = Evaluator.for_task(config["task"], batch_size=config["train"]["eval_batch_size"])
        scores = [member_scores(plan, trials[row["trial"]], split) for row in rows]

        def valid(weights: Sequence[float]) -> float:
            return evaluator.evaluate_scores(weighted_sum(scores, weights), split, "valid")[metric]

        weights, singles, steps = greedy(valid, len(rows), blend["weights"], blend["max_steps"])
        record["members"] = [{"trial": row["trial"], "family": row["family"], "weight": weight,
                              "epoch": row["best_epoch"], "valid": single}
                             for row, weight, single in zip(rows, weights, singles, strict=True) if weight]
        record["steps"] = [{"added": rows[step["member"]]["trial"], "weight": step["weight"],
                            "valid": step["valid"]} for step in steps]
        record["chosen"] = len(record["members"]) > 1
        record["valid"] = evaluator.evaluate_scores(weighted_sum(scores, weights), split, "valid")
        if not record["chosen"]:
            record["why"] = "no member added to the best single model raised validation"
    write_json(Path(plan.out) / BLEND_FILE, record)
    print(f"blend: {describe(record)}", flush=True)
    return record


def greedy(valid: Callable[[Sequence[float]], float], n_members: int, weights: Sequence[float],
           max_steps: int) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    """Forward selection with replacement, for a metric where higher is better: from the best
    single member at weight 1, add at each step the (member, weight) that raises ``valid`` most,
    while one does, at most ``max_steps`` times. Returns the members' summed weights, each
    member's own validation and the steps taken (ties go to the earlier member and weight)."""
    singles = [valid([float(m == n) for m in range(n_members)]) for n in range(n_members)]
    first = max(range(n_members), key=lambda n: singles[n])
    current, best, steps = [float(m == first) for m in range(n_members)], singles[first], []
    for _ in range(max_steps):
        step = None
        for member in range(n_members):
            for weight in weights:
                value = valid([w + weight * (m == member) for m, w in enumerate(current)])
                if value > (step["valid"] if step else best):
                    step = {"member": member, "weight": weight, "valid": value}
        if step is None:
            break
        current[step["member"]] += step["weight"]
        best = step["valid"]
        steps.append(step)
    return current, singles, steps


def member_scores(plan: SweepPlan, trial: Trial, split: Split) -> torch.Tensor:
    """Every user's standardised scores by ``trial``'s model at its best epoch."""
    from recsearch.tuning import checkpoint
    from recsearch.tuning.selection import restored

    return standardised_scores(restored(plan, trial, split, checkpoint.newest(trial.path).best_state), split.n_users)


def standardised_scores(model, n_users: int) -> torch.Tensor:
    """``model``'s standardised scores of every user (``n_users``, n_items), on the CPU."""
    return torch.cat([standardised(model.score(torch.arange(start, min(start + SCORE_BATCH, n_users))))
                      for start in range(0, n_users, SCORE_BATCH)]).cpu()


def export(plan: SweepPlan, record: dict[str, Any], split: Split, trials: dict[str, Trial],
           refits: dict[str, Trial]) -> dict[str, Any]:
    """Build the chosen blend from its members' best states (their refits' with ``refits``), test
    it once, save it as ``best/``; returns the summary's ``best``."""
    import shutil

    from recsearch.evaluation import Evaluator
    from recsearch.models.base import model_class
    from recsearch.models.factory import create, hparams_of
    from recsearch.training import load_serialized, refit_record
    from recsearch.tuning import checkpoint
    from recsearch.tuning.selection import selection

    config = plan.first
    data = split.train_and_valid() if refits else split
    saved = [checkpoint.newest(refits.get(m["trial"], trials[m["trial"]]).path) for m in record["members"]]
    specs = [{"family": m["family"], "weight": m["weight"],
              # the recipe: each iterative member's epochs, its chosen epoch or its refit's count
              "epochs": state.best_epoch if model_class(m["family"]).iterative else None,
              "hparams": {**hparams_of(plan.configs[m["family"]]["model"]), **trials[m["trial"]].hparams}}
             for m, state in zip(record["members"], saved, strict=True)]
    blend = create(Blend, {"members": specs}, seed=config["seed"], device=config["device"],
                   task=config["task"]["name"])
    blend.prepare(data.train)
    for member, state in zip(blend.members, saved, strict=True):
        load_serialized(member, state.best_state)
    test = Evaluator.for_task(config["task"], batch_size=config["train"]["eval_batch_size"]).evaluate(blend, data, "test")
    best = {"trial": "blend", "family": "blend", "hparams": blend.hparams, "model": blend.hparams, "epoch": None,
            "valid": record["valid"], "test": test, "model_dir": "best", "blend": recipe(record)}
    metadata = {"sweep": plan.name, "trial": "blend", "data": config["data"]["name"],
                "selected_by": f"{selection(config)}, member weights searched greedily", "valid": record["valid"],
                "test": test, "blend": record}
    if refits:  # each member trained its own epoch count (hparams.members[].epochs)
        best["refit"] = metadata["refit"] = {**refit_record(data, None), "trials": sorted(t.name for t in refits.values())}
    target = Path(plan.out) / "best"
    shutil.rmtree(target, ignore_errors=True)
    blend.save(target, metadata=metadata)
    return best


def recipe(record: dict[str, Any]) -> str:
    """The chosen blend as ``1.1 ease_00000 + 0.3 mf_00002``."""
    return " + ".join(f"{m['weight']:g} {m['trial']}" for m in record["members"])


def describe(record: dict[str, Any]) -> str:
    """One line: the recipe and its validation, or why there is no blend."""
    if not record["chosen"]:
        return f"none ({record['why']})"
    return f"{recipe(record)}: valid {record['metric']} {record['valid'][record['metric']]:.4f}"
