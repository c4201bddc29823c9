"""Which chat a `%%ollama` cell's turn goes to (plain Python, no IPython).

`-c NAME` names it (a new name is made only when the turn is stored, so a
failed first turn leaves no empty chat behind); otherwise a re-run cell goes
back to the chat where its turn was asked, and that chat becomes active again,
as it was when the cell first ran (so the cells after it, a fork among them,
run where they ran before: Restart & Run All replays the notebook as written,
whichever chat the journal restored as active); otherwise the active chat.
A fork's copy of a turn is not where its cell was asked (`TurnMeta.forked`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OllamaMagicError, did_you_mean
from .store import Conversation, ConversationStore, Rerun

__all__ = ["Target", "asked_in", "refuse_near_miss", "target_chat"]


@dataclass(frozen=True)
class Target:
    conv: Conversation  # a draft (not in the store) when `create`
    create: bool = False  # the chat is made when the turn is stored
    activate: bool = False  # -c: the chat becomes active when the turn is stored
    note: str | None = None  # said in the footer (a re-run in another chat than the active one)

    @property
    def name(self) -> str:
        return self.conv.name


def refuse_near_miss(store: ConversationStore, name: str, create_hint: str, *, confirmed: bool) -> None:
    """A new chat named like an existing one is most likely a typo: refuse it, unless confirmed."""
    if confirmed or name in store:
        return
    hint = did_you_mean(name, store.names)
    if hint:
        raise OllamaMagicError(f"no chat {name!r}{hint}; to create it anyway, use {create_hint.format(name=name)}")


def target_chat(store: ConversationStore, chat: str | None, cell_id: str | None, *,
                rerun: Rerun = "rewind", confirmed: bool = False) -> Target:
    """The chat for this turn; changes nothing in the store."""
    if chat is not None and chat.strip():
        name = chat.strip()
        if name in store:
            return Target(store.get(name), activate=True)
        refuse_near_miss(store, name, "%%ollama -c {name} --new", confirmed=confirmed)
        return Target(store.draft(name), create=True, activate=True)
    holder = asked_in(store, cell_id) if rerun == "rewind" else None
    if holder is not None and holder != store.active_name:
        return Target(store.get(holder), activate=True,
                      note=f"re-run: replaced this cell's turn in chat {holder!r}, active again (was {store.active_name!r})")
    return Target(store.active)


def asked_in(store: ConversationStore, cell_id: str | None) -> str | None:
    """The chat holding `cell_id`'s turn as asked there, not as a fork's copy: the active chat first."""
    if not cell_id:
        return None
    chats: list[Conversation] = [store.active, *store]
    for conv in chats:
        i = conv.find_cell(cell_id)
        if i is not None and not conv.turns[i].meta.forked:
            return conv.name
    return None
