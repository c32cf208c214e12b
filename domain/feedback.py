"""Usefulness: users' verdicts on notifications and how a rule adapts to them.

Every notification can be rated ``useful``, ``not_useful`` or ``too_many`` (the latest verdict on a
notification wins). A rule adapts to the verdicts on its own notifications:

- **Less sensitive** when at least :data:`NEGATIVE_TO_STEP` (3) of its last :data:`WINDOW` (5) verdicts,
  counted since its last change, are negative (``not_useful`` or ``too_many``): one step.
- **Back one step** when its last :data:`WINDOW` verdicts since the last change are all ``useful``.
- A step widens the rule's trigger by :data:`FACTOR` (x1.5), never past :data:`MAX_FACTOR` (x4) of the
  user's own setting (:data:`MAX_STEP` steps): ``relative_change`` by its ``pct`` (a 20 % rule becomes
  30 %, 45 %, 67.5 %, then 80 %), ``anomaly`` by its ``z``. Rules without such a width (``threshold``,
  ``trend_reversal``, ``new_risk``) go to the user's digest instead (their critical alerts still go out
  at once); without a digest their cooldown widens by the same factor (at least an hour to start from).
- The user's own rule is kept (``original_rules``); resetting puts it back (and may pin it, so that it no
  longer adapts). The next notification of an adapted rule explains what changed and links to the reset.

Pure: stdlib and pydantic, no I/O and no clock reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from nftpulse.domain.rules import MAX_RATIO, MAX_SECONDS, MAX_Z, Rule, RuleKind

Verdict = Literal["useful", "not_useful", "too_many"]
VERDICTS: tuple[str, ...] = ("useful", "not_useful", "too_many")
NEGATIVE = frozenset({"not_useful", "too_many"})

#: Verdicts considered, newest first, since the rule last changed.
WINDOW = 5
#: Negative verdicts among them that make the rule one step less sensitive.
NEGATIVE_TO_STEP = 3
#: Useful verdicts among them (all of them) that step back towards the user's setting.
POSITIVE_TO_STEP_BACK = 5
#: Widening per step and its bound, relative to the user's own setting.
FACTOR = 1.5
MAX_FACTOR = 4.0
MAX_STEP = 4
#: The cooldown a "cooldown" adaptation widens when the rule's own is shorter.
MIN_COOLDOWN_S = 3600.0

Mode = Literal["widen", "digest", "cooldown"]
Reason = Literal["not_useful", "too_many", "useful", "reset"]

_WIDENABLE = {RuleKind.RELATIVE_CHANGE: "pct", RuleKind.ANOMALY: "z"}


def factor(step: int) -> float:
    """How much wider than the user's own setting a rule is at ``step`` (1.0 at step 0)."""
    return min(FACTOR ** max(step, 0), MAX_FACTOR)


class RuleAdaptation(BaseModel):
    """The adaptive state of one rule of a subscription."""

    step: int = Field(default=0, ge=0, le=MAX_STEP)
    mode: Mode = "widen"
    reason: Reason | None = None
    #: When the rule last changed (verdicts before it do not count again).
    since: datetime | None = None
    #: The next notification of this rule explains the change.
    announce: bool = False
    #: The user reset the rule and asked it not to adapt any more.
    pinned: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for storage."""
        return self.model_dump(mode="json")


def mode_for(rule: Rule, has_digest: bool) -> Mode:
    """How a rule becomes less sensitive: a wider trigger where it has one, else the digest, else a
    longer cooldown."""
    if rule.kind in _WIDENABLE:
        return "widen"
    return "digest" if has_digest else "cooldown"


def next_step(verdicts: Sequence[str], step: int) -> int:
    """The rule's step after these verdicts (newest first, only those since its last change)."""
    recent = list(verdicts[:WINDOW])
    if sum(v in NEGATIVE for v in recent) >= NEGATIVE_TO_STEP:
        return min(step + 1, MAX_STEP)
    if step > 0 and len(recent) >= POSITIVE_TO_STEP_BACK and all(v == "useful" for v in recent):
        return step - 1
    return step


def dominant_reason(verdicts: Sequence[str]) -> Reason:
    """Why a step was taken, in the user's words: the commoner negative verdict, or ``useful``."""
    recent = list(verdicts[:WINDOW])
    too_many, not_useful = recent.count("too_many"), recent.count("not_useful")
    if too_many + not_useful < NEGATIVE_TO_STEP:
        return "useful"
    return "too_many" if too_many > not_useful else "not_useful"


def adapted_rule(original: dict[str, Any], step: int, mode: Mode) -> dict[str, Any]:
    """The rule (as stored JSON) that detection evaluates at ``step``: the user's own one widened."""
    rule = Rule.model_validate(original)
    f = factor(step)
    if step == 0 or mode == "digest":
        return rule.model_dump(mode="json")
    changes: dict[str, Any] = {}
    if mode == "widen" and rule.kind is RuleKind.RELATIVE_CHANGE:
        pct = min(rule.pct * f, MAX_RATIO)
        changes["pct"] = round(pct, 6)
        if rule.rearm_pct is not None:
            changes["rearm_pct"] = round(min(rule.rearm_pct * f, MAX_RATIO), 6)
        if rule.critical_pct is not None:
            changes["critical_pct"] = max(rule.critical_pct, changes["pct"])
    elif mode == "widen" and rule.kind is RuleKind.ANOMALY:
        z = min(rule.z * f, MAX_Z)
        changes["z"] = round(z, 6)
        if rule.rearm_z is not None:
            changes["rearm_z"] = round(min(rule.rearm_z * f, MAX_Z), 6)
        if rule.critical_z is not None:
            changes["critical_z"] = max(rule.critical_z, changes["z"])
    else:
        changes["cooldown_s"] = min(max(rule.cooldown_s, MIN_COOLDOWN_S) * f, MAX_SECONDS)
    return Rule.model_validate({**rule.model_dump(mode="json"), **changes}).model_dump(mode="json")


class Notice(BaseModel):
    """What a notification tells its user about the rule's adaptation (template context)."""

    rule_id: str
    step: int
    mode: Mode
    reason: Reason
    #: The widened parameter (``pct``, ``z``, ``cooldown_s``) with the user's value and the current one;
    #: None for a rule that now goes to the digest.
    parameter: str | None = None
    original: float | None = None
    current: float | None = None
    factor: float = 1.0
    settings_url: str | None = None
    reset_url: str | None = None


def notice(
    original: dict[str, Any],
    current: dict[str, Any],
    state: RuleAdaptation,
    *,
    settings_url: str | None = None,
    reset_url: str | None = None,
) -> Notice:
    """The explanation for the next notification of a rule whose sensitivity changed."""
    rule = Rule.model_validate(original)
    parameter: str | None = None
    if state.mode == "widen":
        parameter = _WIDENABLE.get(rule.kind)
    elif state.mode == "cooldown":
        parameter = "cooldown_s"
    before = original.get(parameter) if parameter else None
    if parameter == "cooldown_s":
        before = rule.cooldown_s
    return Notice(
        rule_id=rule.id,
        step=state.step,
        mode=state.mode,
        reason=state.reason or "reset",
        parameter=parameter,
        original=float(before) if isinstance(before, (int, float)) else None,
        current=float(current[parameter]) if parameter and parameter in current else None,
        factor=factor(state.step),
        settings_url=settings_url,
        reset_url=reset_url,
    )
