"""The context window, sized before a turn and checked after it.

Ollama drops the oldest messages silently when a prompt passes `num_ctx`
(`server/prompt.go` chatPrompt); the only trace is a `prompt_eval_count`
smaller than what was sent. So before a turn the next prompt is estimated
and, when it would pass ~90% of the window in force, the request carries a
larger `num_ctx`: the next power of two that fits it with headroom, never
above the model's trained length or `OllamaMagics.max_num_ctx`, never smaller
than a value this chat already sent (each change makes Ollama reload the
model, so the window grows in few steps). A `num_ctx` the user chose is never
touched. After the turn, a prompt that was cut is said so, even when Ollama's
count stays under 90% after cutting.

Plain functions over numbers and messages: no client, no IPython.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .store import message_size

__all__ = ["IMAGE_TOKENS", "Plan", "Sizer", "after_notes", "calibration", "estimate", "estimate_history", "estimate_size", "plan", "ways_out"]

CHARS_PER_TOKEN = 4.0  # a usual rate for English text with BPE tokenizers
MESSAGE_TOKENS = 4  # role and template tokens around each message
IMAGE_TOKENS = 768  # what Ollama budgets per image (server/prompt.go)
NEAR = 0.9  # grow (or warn) past this share of the window
FILL = 0.75  # a grown window holds the prompt at most this full: room for the reply and a few turns
FAR = 0.25  # a prompt under this share of the smallest plausible window needs no lookup at all


def estimate_size(chars: int, messages: int, images: int) -> float:
    """Tokens of messages with these totals (see `store.message_size`)."""
    return chars / CHARS_PER_TOKEN + MESSAGE_TOKENS * messages + IMAGE_TOKENS * images


def estimate(messages: Iterable[Mapping[str, Any]]) -> float:
    """Tokens these messages cost, by length (the server's tokenizer is not at hand)."""
    chars = images = count = 0
    for msg in messages:
        c, im = message_size(msg)
        chars, images, count = chars + c, images + im, count + 1
    return estimate_size(chars, count, images)


def estimate_history(conv: Any, upto: int, system: str | None) -> float:
    """`estimate(conv.history(upto, system=system))` in O(1), from the store's prefix sums."""
    chars, count, images = conv.size(upto)
    if system:
        chars, count = chars + len(system), count + 1
    return estimate_size(chars, count, images)


def calibration(known_tokens: int | None, estimated: float) -> float | None:
    """Server tokens per estimated token, from a history whose real count is known.

    A history that was itself cut gives too low a rate (bounded below); that
    errs towards missing a cut, never towards a false alarm. None without a count.
    """
    if not known_tokens or estimated <= 0:
        return None
    return min(max(known_tokens / estimated, 0.5), 2.0)


@dataclass
class Plan:
    """What to send for one turn and what to say about it."""

    window: int  # the window this request runs in
    num_ctx: int | None = None  # send this num_ctx (an automatic value), or leave the options alone
    raised: bool = False  # the automatic value grew for this turn
    prompt: int = 0  # the estimated prompt, in server tokens
    notes: list[str] = field(default_factory=list)
    sent: float = 0.0  # estimate of what this request sends, in server tokens
    calibrated: bool = False  # `sent` is scaled by a known count of this chat
    explicit: bool = False  # the window is the user's num_ctx
    can_grow: bool = False  # automatic sizing may still raise the window


def _fmt(n: float) -> str:
    return f"{int(n):,}"


def ways_out() -> str:
    return ("start afresh with %ollama reset, delete old turns in the panel (%ollama history), "
            "or continue from a later turn with %ollama fork NEW --from N")


def plan(*, prompt: float, window: int, explicit: int | None, auto: int | None,
         trained: int | None, max_num_ctx: int, enabled: bool = True) -> Plan:
    """The window for the next request.

    `prompt`: the estimated prompt in server tokens; `window`: what the server
    would use with no `num_ctx` sent; `explicit`: the user's own `num_ctx`;
    `auto`: the value this chat sent automatically so far; `trained`: the
    model's trained length (Ollama clamps any `num_ctx` to it).
    """
    cap = min(c for c in (trained, max_num_ctx) if c and c > 0) if (trained or max_num_ctx) else 0

    def clamp(n: int) -> int:
        return min(n, trained) if trained else n

    p = int(math.ceil(prompt))
    if explicit:
        return Plan(clamp(explicit), prompt=p, explicit=True)  # the user's; the after-turn notes warn
    if not enabled:
        return Plan(clamp(window), prompt=p)
    current = clamp(auto) if auto else clamp(window)
    keep = auto  # once sent, keep sending it: without it Ollama would reload at its default
    if p <= NEAR * current:
        return Plan(current, num_ctx=keep, prompt=p, can_grow=not cap or current < cap)
    target = 1 << max(0, math.ceil(math.log2(max(p / FILL, 1))))
    target = min(target, cap) if cap else target
    if target <= current:
        note = (f"⚠ context ~{_fmt(p)} tokens in a {_fmt(current)}-token window that cannot grow "
                f"({_limit(current, trained, max_num_ctx)}): Ollama drops the oldest messages; {ways_out()}")
        return Plan(current, num_ctx=keep, prompt=p, notes=[note])
    out = Plan(target, num_ctx=target, raised=True, prompt=p,
               notes=[f"window raised to {_fmt(target)} tokens; the model reloads once"])
    if p > NEAR * target:
        out.notes.append(f"⚠ context ~{_fmt(p)} tokens nearly fills even that "
                         f"({_limit(target, trained, max_num_ctx)}); {ways_out()}")
    return out


def _limit(window: int, trained: int | None, max_num_ctx: int) -> str:
    if trained and window >= trained:
        return f"the model's trained length is {_fmt(trained)}"
    if window >= max_num_ctx:
        return f"OllamaMagics.max_num_ctx is {_fmt(max_num_ctx)}"
    return "the server's own limit"


def after_notes(plan: Plan, prompt_eval_count: int | None, prior: int, *, auto_enabled: bool) -> list[str]:
    """What to say once the reply is in: messages already dropped, or a window nearly full.

    `prior`: the largest prompt of the history as it was, when it only grew
    (a smaller prompt now means Ollama cut it). With automatic sizing a
    nearly full window that can still grow needs no warning: the next turn grows it.
    """
    pec, window = prompt_eval_count, plan.window
    if not pec:
        return []
    warned = any(n.startswith("⚠") for n in plan.notes)  # the ways out are in the footer already
    if warned:
        fix = "see above"
    elif auto_enabled and not plan.explicit:
        fix = ways_out()
    else:
        fix = f"raise it with %ollama options num_ctx={max(2 * window, 8192)}, or %ollama reset"
    # After a cut Ollama's count is at most the window, though more was sent. An
    # estimate not yet scaled by a real count of this chat needs a clearer margin.
    margin = 1.0 if plan.calibrated else 1.25
    if plan.sent > margin * window and pec < NEAR * plan.sent:
        return [f"⚠ old messages were dropped: ~{_fmt(plan.sent)} tokens were sent to a {_fmt(window)}-token "
                f"window and Ollama read {_fmt(pec)}" + ("" if warned else f"; {fix}")]
    if pec < prior:
        return [f"⚠ prompt shrank to {pec} tokens from {prior}: Ollama is dropping old messages; {fix}"]
    if pec >= NEAR * window and not (plan.can_grow or plan.raised or warned):
        return [f"⚠ context {pec}/{window} tokens: Ollama drops the oldest messages past this; {fix}"]
    return []


class Sizer:
    """Automatic `num_ctx` per chat, with the lookups it needs passed in.

    `window_of(model)`: the server's window for the model when no num_ctx is
    sent (None if unknown: then `default`); `trained_of(model)`: its trained
    length (None if unknown); `learn(model)`: find that window out by loading
    the model (None if it cannot), asked only when an unknown window matters:
    the server's default may be larger than `default`, and a num_ctx sized
    from `default` would then shrink the window and reload the model. The automatic values live here, per chat name:
    never in the chat's options, so a new chat does not inherit them and
    nothing mistakes them for the user's.
    """

    def __init__(self, window_of: Callable[[str], int | None], trained_of: Callable[[str], int | None],
                 learn: Callable[[str], int | None] = lambda model: None) -> None:
        self._window_of = window_of
        self._trained_of = trained_of
        self._learn = learn
        self.auto: dict[str, int] = {}  # chat name -> the num_ctx it sends automatically
        self._seen: dict[str, int] = {}  # model -> the last window the server reported

    def _window(self, model: str, default: int) -> int:
        return self._known(model) or default

    def _known(self, model: str) -> int | None:
        window = self._window_of(model)
        if window:
            self._seen[model] = window
        return window or None

    def before(self, conv: Any, base: int, system: str | None, user: Mapping[str, Any],
               model: str, explicit: Any, *, enabled: bool, max_num_ctx: int, default: int) -> Plan:
        """Plan the window for a request of `conv.history(base, system=system)` + `user`."""
        user_ctx = explicit if isinstance(explicit, int) and not isinstance(explicit, bool) and explicit > 0 else None
        auto = self.auto.get(conv.name) if enabled and user_ctx is None else None
        new = estimate([user])
        history = estimate_history(conv, base, system)  # O(1): the store's prefix sums
        turns = conv.turns
        # The last turn's real count covers this history when nothing was removed or edited since.
        known = conv.context_tokens if (base == len(turns) and turns and not conv.edited) else 0
        smallest = min(default, self._seen.get(model, default))
        if known and user_ctx is None and auto is None and known + new < FAR * smallest:
            # Far from any window: no lookup before the first token, no O(history) estimate.
            return Plan(0, prompt=int(known + new), sent=known + new, calibrated=True, can_grow=enabled)
        if not known and user_ctx is None and auto is None:
            # No count yet (a new chat, an edited history): the same test on the estimate,
            # so the first turn of a chat asks nothing either.
            if history + new < FAR * smallest:
                return Plan(0, prompt=int(history + new), sent=history + new, can_grow=enabled)
        # What the server runs with no num_ctx sent: asked only when it matters.
        known_window = user_ctx or auto or self._known(model)
        window = known_window or default
        trained = self._trained_of(model) if (user_ctx or enabled) else None
        out = self._plan(known, new, history, window, user_ctx, auto, trained, max_num_ctx, enabled)
        if enabled and not known_window and out.num_ctx:
            # Sized from an assumed default: learn the server's real window first,
            # so the request never carries a num_ctx below what it would use.
            learned = self._learn(model)
            if learned:
                self._seen[model] = learned
                out = self._plan(known, new, history, learned, user_ctx, auto, trained, max_num_ctx, enabled)
        if out.raised and out.num_ctx:
            self.auto[conv.name] = out.num_ctx
        return out

    @staticmethod
    def _plan(known: int, new: float, history: float, window: int, user_ctx: int | None,
              auto: int | None, trained: int | None, max_num_ctx: int, enabled: bool) -> Plan:
        if known and known + new < FAR * window:
            sent, rate = known + new, 1.0
        else:
            rate = calibration(known, history) or 1.0
            sent = (history + new) * rate
        prompt = max(known + new * rate, sent)
        out = plan(prompt=prompt, window=window, explicit=user_ctx, auto=auto, trained=trained,
                   max_num_ctx=max_num_ctx, enabled=enabled)
        out.sent, out.calibrated = sent, bool(known)
        return out

    def after(self, plan: Plan, prompt_eval_count: int | None, prior: int, model: str, *,
              enabled: bool, default: int) -> list[str]:
        """The footer's context notes once the reply is in (the model is loaded now)."""
        if prompt_eval_count and plan.window == 0:
            plan.window = self._window(model, default)
        return after_notes(plan, prompt_eval_count, prior, auto_enabled=enabled)

    def describe(self, chat: str) -> str:
        """`num_ctx=16384 (auto)` for a chat whose window grew, else ''."""
        value = self.auto.get(chat)
        return f"num_ctx={value} (auto)" if value else ""
