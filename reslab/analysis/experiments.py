"""The paper's CIFAR experiments: each is a list of members (training runs, see members.py) and a
report that states which of the paper's claims the numbers show (see claims.py).

- degradation: plain and residual nets of each depth over seeds (Fig. 1, Fig. 6), and the layer
  responses of each (Fig. 7)
- table6: residual nets of each depth over seeds (Table 6)
- shortcuts: options A, B, C and plain at one depth over seeds (Sec. 3.3 / Table 3, on CIFAR)

Members are named for what they train (``resnet20-seed0``, ``plain56-seed1``, ``resnet20B-seed0``),
so experiments given the same ``--out`` share the members they have in common: ResNet-20 seed 0
trains once for all three. Each experiment writes ``<name>.md`` (the report), ``<name>.json`` (its
table and every member's history) and its figures, named ``<name>-*.png``, beside ``members/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..models.registry import PAPER_ERRORS
from ..plots import error_curve_panels, error_curves
from ..tables import format_table
from ..train.config import resolve
from ..train.schedules import milestone_steps
from .claims import Spread, above_throughout, decreasing, mean_response, spread
from .members import ExperimentSettings, Member, arithmetic, family_net, member_dir, run_members
from .plots import errors_by_depth, response_figure
from .responses import LayerResponse

__all__ = ["ExperimentSettings", "degradation", "table6", "shortcuts"]

History = list[dict[str, Any]]


def resnet(depth: int, seed: int, option: str = "A") -> Member:
    suffix = "" if option == "A" else option  # option A is the paper's CIFAR default: plain "resnet20"
    return Member(f"resnet{depth}{suffix}-seed{seed}", "resnet" if option == "A" else option, depth, seed,
                  family_net("resnet", depth, **({} if option == "A" else {"shortcut": option})))


def plain(depth: int, seed: int) -> Member:
    return Member(f"plain{depth}-seed{seed}", "plain", depth, seed, family_net("plain", depth))


def _seeds(first: int, count: int) -> range:
    return range(first, first + count)


# ---------------------------------------------------------------------------------------------------
# Degradation (Fig. 1, Fig. 6) and layer responses (Fig. 7)


def degradation(settings: ExperimentSettings, depths: list[int], seeds: int = 1, first_seed: int = 0) -> Path:
    members = {(kind, d, s): make(d, s) for kind, make in (("plain", plain), ("resnet", resnet))
               for d in depths for s in _seeds(first_seed, seeds)}
    histories = run_members(settings, list(members.values()), on_done=_record_responses(settings))

    def runs(kind: str, depth: int) -> list[History]:
        return [histories[members[kind, depth, s].name] for s in _seeds(first_seed, seeds)
                if members[kind, depth, s].name in histories]

    figures = _degradation_figures(settings, depths, first_seed, members, histories)
    rows = []
    for d in depths:
        p, r = runs("plain", d), runs("resnet", d)
        paper = PAPER_ERRORS.get(f"resnet{d}", (None, None))[0]
        rows.append([d, spread(p, "train_error").text(), spread(p, "eval_error").text(),
                     spread(r, "train_error").text(), spread(r, "eval_error").text(),
                     "" if paper is None else f"{paper:.2f}"])
    responses = _responses_table(settings, depths, first_seed, seeds, members)
    claims = _degradation_claims(depths, runs) + _response_claims(depths, responses)
    return _write_report(
        settings, "degradation", "Degradation: plain vs residual (paper Fig. 1, Fig. 6, Fig. 7)",
        "Plain and residual networks of each depth, identical recipe and data order for a given seed. "
        "Errors are the last epoch's, mean +- std over seeds (n = seeds finished).",
        ["depth", "plain train err %", "plain val err %", "ResNet train err %", "ResNet val err %",
         "paper ResNet test err %"], rows, histories, members.values(), figures, claims,
        extra_tables=[("Layer responses (Fig. 7): the mean over 3x3 layers of each layer's response std, "
                       "mean +- std over seeds", ["depth", "plain", "ResNet"],
                       [[d, *(responses[k, d].text(1.0) for k in ("plain", "resnet"))] for d in depths])])


def _degradation_figures(settings: ExperimentSettings, depths: list[int], seed: int, members: dict,
                         histories: dict[str, History]) -> list[str]:
    """The paper's layouts, drawn for the first seed."""
    def pick(kind: str) -> dict[str, History]:
        return {f"{kind}-{d}": histories[members[kind, d, seed].name] for d in depths
                if members[kind, d, seed].name in histories}

    figures = []
    panels = [("plain networks", pick("plain")), ("ResNets", pick("resnet"))]
    if any(p for _, p in panels):
        error_curve_panels(panels, settings.out / "degradation-figure6.png")
        figures.append("degradation-figure6.png")
    shallow, deep = f"plain-{min(depths)}", f"plain-{max(depths)}"
    plain_runs = pick("plain")
    if len(depths) > 1 and shallow in plain_runs and deep in plain_runs:
        error_curves({shallow: plain_runs[shallow], deep: plain_runs[deep]}, settings.out / "degradation-figure1.png",
                     f"{shallow} vs {deep} (paper Fig. 1)")
        figures.append("degradation-figure1.png")
    figures += _responses_figure(settings, {f"{kind}-{d}": members[kind, d, seed]
                                            for kind in ("plain", "resnet") for d in depths},
                                 "degradation-responses.png")
    return figures


def _responses_figure(settings: ExperimentSettings, labelled: dict[str, Member], name: str) -> list[str]:
    """Fig. 7's layout drawn from the members' recorded responses (those that have them), as
    ``[name]``, or ``[]`` when none has."""
    curves = {}
    for label, member in labelled.items():
        path = member_dir(settings, member) / "responses.json"
        if path.exists():
            curves[label] = [LayerResponse(**r) for r in json.loads(path.read_text())]
    if not curves:
        return []
    response_figure(curves, settings.out / name)
    return [name]


def _degradation_claims(depths: list[int], runs) -> list[str]:
    lines = []
    shallow, deep = min(depths), max(depths)
    if deep != shallow:
        for key, what in (("train_error", "training"), ("eval_error", "validation")):
            above, compared = above_throughout(runs("plain", deep), runs("plain", shallow), key)
            if compared:
                verdict = ("throughout, the degradation problem of Fig. 1" if above == compared else
                           "NOT throughout" if above else "at NO point: the degradation did not show")
                lines.append(f"Fig. 1: plain-{deep}'s {what} error is above plain-{shallow}'s at {above} of "
                             f"{compared} epoch ends (seed-matched): {verdict}.")
    below = []
    for d in depths:
        p, r = spread(runs("plain", d), "eval_error"), spread(runs("resnet", d), "eval_error")
        if p.values and r.values:
            below.append(f"depth {d}: {r.text()} vs {p.text()}"
                         + ("" if r.mean < p.mean else " (NOT below)"))
    if below:
        lines.append("Fig. 6: each ResNet's validation error against its plain twin's (%): " + "; ".join(below) + ".")
    resnets = {f"ResNet-{d}": spread(runs("resnet", d), "eval_error") for d in depths}
    if len(resnets) > 1 and all(s.values for s in resnets.values()):
        lines.append("Fig. 6 / Table 6: " + decreasing(resnets).sentence("validation error"))
    return lines


def _record_responses(settings: ExperimentSettings):
    """An ``on_done`` that writes the member's layer responses (Fig. 7) on the evaluation split,
    from its final weights, once, whichever experiment trains it: metrics outlive checkpoints, so Fig. 7
    is rebuilt without them."""
    def record(member: Member, run_dir: Path) -> None:
        out = run_dir / "responses.json"
        if out.exists() or not (run_dir / "last.pt").exists():
            return
        from ..checkpoint import checkpoint_dataset, load_checkpoint
        from ..data import EvalLoader
        from .responses import layer_responses

        checkpoint = load_checkpoint(run_dir / "last.pt")
        arrays = checkpoint_dataset(checkpoint, None, settings.data_root, settings.eval_split)
        found = layer_responses(checkpoint.build_model(), EvalLoader(arrays, 500, checkpoint.normalizer))
        atomic_write_text(json.dumps([r.__dict__ for r in found]) + "\n", out)
    return record


def _response_spread(settings: ExperimentSettings, members: list[Member]) -> Spread:
    """The members' mean layer responses (Fig. 7), over those that recorded them."""
    paths = [member_dir(settings, m) / "responses.json" for m in members]
    return Spread(tuple(mean_response(json.loads(p.read_text())) for p in paths if p.exists()))


def _responses_table(settings: ExperimentSettings, depths: list[int], first_seed: int, seeds: int,
                     members: dict) -> dict[tuple[str, int], Spread]:
    return {(kind, d): _response_spread(settings, [members[kind, d, s] for s in _seeds(first_seed, seeds)])
            for kind in ("plain", "resnet") for d in depths}


def _response_claims(depths: list[int], responses: dict[tuple[str, int], Spread]) -> list[str]:
    lines = []
    pairs = [(d, responses["resnet", d], responses["plain", d]) for d in depths]
    known = [(d, r, p) for d, r, p in pairs if r.values and p.values]
    if known:
        larger = [d for d, r, p in known if r.mean >= p.mean]
        lines.append(f"Fig. 7: the ResNet's responses are smaller than its plain twin's at "
                     f"{len(known) - len(larger)} of {len(known)} depths"
                     + (f" (NOT at depth {', '.join(map(str, larger))})." if larger else "."))
    resnets = {f"ResNet-{d}": responses["resnet", d] for d in depths}
    if len(resnets) > 1 and all(s.values for s in resnets.values()):
        lines.append("Fig. 7: " + decreasing(resnets).sentence("response (deeper ResNets smaller)"))
    return lines


# ---------------------------------------------------------------------------------------------------
# Table 6 and the shortcut options


def table6(settings: ExperimentSettings, depths: list[int], seeds: int, first_seed: int = 0) -> Path:
    members = {d: [resnet(d, s) for s in _seeds(first_seed, seeds)] for d in depths}
    every = [m for at_depth in members.values() for m in at_depth]
    histories = run_members(settings, every, on_done=_record_responses(settings))
    found = {d: [histories[m.name] for m in members[d] if m.name in histories] for d in depths}
    # Fig. 7's comparison between depths comes with Table 6: the same members, more depths and seeds
    # than the degradation experiment has.
    responses = {d: _response_spread(settings, members[d]) for d in depths}
    errors = {d: spread(found[d], "eval_error") for d in depths}
    rows = []
    for d in depths:
        paper = PAPER_ERRORS.get(f"resnet{d}", (None, None))[0]
        rows.append([f"ResNet-{d}", len(errors[d].values), errors[d].text(),
                     ", ".join(f"{100 * v:.2f}" for v in errors[d].values), "" if paper is None else f"{paper:.2f}",
                     responses[d].text(1.0)])
    figures = []
    if any(e.values for e in errors.values()):
        seed_errors = {d: errors[d].values for d in depths if errors[d].values}
        errors_by_depth(seed_errors, {d: PAPER_ERRORS[f"resnet{d}"][0] for d in seed_errors
                                      if f"resnet{d}" in PAPER_ERRORS}, settings.out / "table6-errors.png")
        figures.append("table6-errors.png")
    figures += _responses_figure(settings, {f"resnet-{d}": members[d][0] for d in depths}, "table6-responses.png")
    claims = []
    if len(depths) > 1 and all(e.values for e in errors.values()):
        claims.append(decreasing({f"ResNet-{d}": errors[d] for d in depths}).sentence("validation error"))
    if len(depths) > 1 and all(r.values for r in responses.values()):
        claims.append("Fig. 7: " + decreasing({f"ResNet-{d}": responses[d] for d in depths})
                      .sentence("layer response (deeper ResNets smaller)"))
    return _write_report(settings, "table6", "Table 6: CIFAR-10 error of ResNets by depth",
                         "ResNets of each depth over several seeds, identical recipe. Layer response (Fig. 7): "
                         "the mean over 3x3 layers of each layer's response std on the evaluation split.",
                         ["network", "seeds", "val err % (mean +- std)", "per seed", "paper test err %",
                          "layer response"], rows, histories, every, figures, claims)


SHORTCUT_OPTIONS = {"A": "zero-padding identity", "B": "projection when the shape changes",
                    "C": "projection everywhere"}
# Paper Table 3 (ImageNet ResNet-34, top-1 10-crop error %): the only published A/B/C comparison.
PAPER_TABLE3 = {"plain": 28.54, "A": 25.03, "B": 24.52, "C": 24.19}


def shortcuts(settings: ExperimentSettings, depth: int, seeds: int = 1, first_seed: int = 0) -> Path:
    members = {(o, s): resnet(depth, s, o) for o in SHORTCUT_OPTIONS for s in _seeds(first_seed, seeds)}
    members.update({("plain", s): plain(depth, s) for s in _seeds(first_seed, seeds)})
    histories = run_members(settings, list(members.values()), on_done=_record_responses(settings))
    groups = [*SHORTCUT_OPTIONS, "plain"]
    found = {g: [histories[members[g, s].name] for s in _seeds(first_seed, seeds)
                 if members[g, s].name in histories] for g in groups}
    first = {g: histories[members[g, first_seed].name] for g in groups if members[g, first_seed].name in histories}
    figures = []
    if first:
        error_curves(first, settings.out / "shortcuts.png", f"shortcut options at depth {depth}")
        figures.append("shortcuts.png")
    from ..summary import summarize

    rows = []
    for g in groups:
        m = members[g, first_seed]
        params = summarize(m.overrides["model"], **m.overrides["model_options"]).params
        label = "plain (no shortcut)" if g == "plain" else f"{g} ({SHORTCUT_OPTIONS[g]})"
        rows.append([label, f"{params:,}", spread(found[g], "train_error").text(),
                     spread(found[g], "eval_error").text(), f"{PAPER_TABLE3[g]:.2f}"])
    return _write_report(settings, "shortcuts", f"Shortcut options A/B/C at depth {depth}",
                         "The paper compares the options on ImageNet ResNet-34 only (Table 3); its numbers are "
                         "beside ours for their order, not their size.",
                         ["shortcut", "params", "train err %", "val err %", "paper Table 3 top-1 err %"], rows,
                         histories, members.values(), figures, _shortcut_claims(found))


def _shortcut_claims(found: dict[str, list[History]]) -> list[str]:
    errors = {g: spread(h, "eval_error") for g, h in found.items()}
    if not all(s.values for s in errors.values()):
        return []
    plain_error = errors.pop("plain")
    lines = []
    for g, s in errors.items():
        gap = plain_error.mean - s.mean
        clear = gap > max(plain_error.std, s.std)
        lines.append(f"Option {g}: {100 * gap:.2f} points below plain"
                     + (", more than the spread between seeds." if clear and gap > 0 else
                        " (NOT below plain)." if gap <= 0 else ", within the spread between seeds."))
    lines.append("A/B/C (the paper's ImageNet order is A > B > C in error): "
                 + decreasing({f"option {g}": errors[g] for g in "ABC"}).sentence("validation error"))
    return lines


# ---------------------------------------------------------------------------------------------------
# The report


def _budget_note(settings: ExperimentSettings) -> str:
    note = _length_note(settings)
    if settings.extra:  # a reader should see what --set changed, an override of the protocol included
        note += " Set for every member: " + ", ".join(f"{k}={v}" for k, v in settings.extra.items()) + "."
    if settings.protocol:
        from .protocols import protocol

        return f"Protocol: {settings.protocol} ({protocol(settings.protocol).about}). " + note
    return note


def _length_note(settings: ExperimentSettings) -> str:
    config = resolve(settings.recipe, overrides=settings.overrides())
    explicit = "iterations" in settings.extra or "epochs" in settings.extra  # then the budget did not apply
    budget = f" (budget {settings.budget:g})" if settings.budget < 1 and not explicit else ""
    if settings.recipe == "paper" and config.iterations and not explicit:
        drops = " and ".join(f"{m:,}" for m in milestone_steps(config.milestones, config.iterations))
        return (f"Schedule: the paper's (Sec. 4.2) at budget {settings.budget:g}: {config.iterations:,} iterations, "
                f"lr /10 at {drops}"
                + (" (REDUCED BUDGET: the paper trains 64,000 iterations)" if settings.budget < 1 else "")
                + f". Data: {settings.data}, evaluated on its {settings.eval_split} split.")
    length = f"{config.iterations:,} iterations" if config.iterations else f"{config.epochs:g} epochs"
    return (f"Recipe: {settings.recipe}, {length}{budget}. "
            f"Data: {settings.data}, evaluated on its {settings.eval_split} split.")


def _arithmetic_note(settings: ExperimentSettings, members, histories: dict[str, History]) -> str:
    """How the finished members computed (their run.json), one line: members completed on other
    machines or sessions may differ, and a reader should see that beside the numbers."""
    groups: dict[str, list[str]] = {}
    for m in members:
        if m.name in histories:
            groups.setdefault(arithmetic(member_dir(settings, m)), []).append(m.name)
    if not groups:
        return "Arithmetic: no member finished yet."
    if len(groups) == 1:
        (kind, names), = groups.items()
        return f"Arithmetic: every member ({len(names)}) trained in {kind}."
    parts = [f"{kind}: " + (", ".join(names) if len(names) <= 4 else f"{len(names)} members")
             for kind, names in sorted(groups.items(), key=lambda item: -len(item[1]))]
    return "Arithmetic DIFFERS between members (as each member's run.json records): " + "; ".join(parts) + "."


def _write_report(settings: ExperimentSettings, key: str, title: str, intro: str, headers: list[str],
                  rows: list[list[Any]], histories: dict[str, History], members, figures: list[str],
                  claims: list[str], extra_tables: list[tuple[str, list[str], list[list[Any]]]] = ()) -> Path:
    missing = [m.name for m in members if m.name not in histories]
    report = [f"# {title}", "", intro, "", _budget_note(settings), "",
              _arithmetic_note(settings, members, histories), "", format_table(headers, rows, markdown=True), ""]
    for caption, extra_headers, extra_rows in extra_tables:
        report += [caption + ":", "", format_table(extra_headers, extra_rows, markdown=True), ""]
    report += [f"![{f}]({f})" for f in figures]
    if claims:
        report += ["", "What the numbers show:", "", *(f"- {line}" for line in claims)]
    if missing:
        report += ["", f"NOT FINISHED ({len(missing)} of {len(missing) + len(histories)} members): "
                   + ", ".join(missing) + ". Rerun the same command to train them."]
    settings.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text("\n".join(report) + "\n", settings.out / f"{key}.md")
    atomic_write_text(json.dumps({"experiment": key, "settings": {k: str(v) for k, v in settings.__dict__.items()},
                                  "headers": headers, "rows": rows, "claims": claims, "missing": missing,
                                  "histories": histories}, indent=1) + "\n", settings.out / f"{key}.json")
    return settings.out / f"{key}.md"
