"""A three-session conversation that shows memory at work, offline by default.

Session 1: the user tells a few facts. Sessions 2 and 3: new :class:`TiamatHooks` objects on the
same store (as a new process would have), new questions; the facts reach the model input as the
injected memory block. Every model call prints the block it received and its token count.

Offline, the model is :class:`agents.testing.ScriptedModel` whose replies are computed from the
input it actually received, so what it says depends on whether memory reached it. With
``OPENAI_API_KEY`` set and a ``model`` name given, the real model answers instead.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import Agent, RunConfig, RunContextWrapper, RunHooks, Runner
from agents.items import TResponseInputItem
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .hooks import TiamatHooks
from .items import item_text, to_jsonable
from .stores import open_store

__all__ = ["DemoCall", "DemoReport", "run_demo"]

SESSIONS: tuple[tuple[str, str], ...] = (
    (
        "session-1",
        "Hi, I'm Maya. I'm vegetarian, I'm allergic to peanuts, and I'm training for the "
        "Berlin marathon in September.",
    ),
    ("session-2", "Can you suggest a dinner for tonight? You know what I am allergic to."),
    ("session-3", "How should I plan my long runs for the marathon training?"),
)
FACTS: tuple[str, ...] = ("vegetarian", "peanuts", "marathon")
INSTRUCTIONS = "You are a friendly personal assistant. Use what you remember about the user."


@dataclass(frozen=True)
class DemoCall:
    """One model call: which session, and the memory block it received (``""`` if none)."""

    session: str
    memory: str
    memory_tokens: int


@dataclass
class DemoReport:
    """What the demo did. ``remembered`` is true when every later session's model input carried
    the facts told in session 1."""

    store_url: str
    user_id: str
    real_model: bool
    calls: list[DemoCall] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    @property
    def remembered(self) -> bool:
        later = [c for c in self.calls if c.session != SESSIONS[0][0]]
        return bool(later) and all(any(fact in c.memory for fact in FACTS) for c in later)


def _memory_of(items: list[TResponseInputItem]) -> str:
    for item in items:
        content = to_jsonable(item).get("content")
        if isinstance(content, str) and content.startswith("<memory>"):
            return content
    return ""


def _scripted_reply(call: ModelCall) -> list[Any]:
    """Answer from what reached the model: the memory block and the user's message."""
    texts = [item_text(to_jsonable(i)) for i in call.input]
    memory = _memory_of(list(call.input))
    question = texts[-1] if texts else ""
    if "Maya" in question:
        text = "Nice to meet you, Maya! I'll remember that."
    elif not memory:
        text = "I don't know anything about you yet. Tell me about yourself?"
    elif "dinner" in question:
        veg = "vegetarian " if "vegetarian" in memory else ""
        nuts = ", with no peanuts anywhere" if "peanuts" in memory else ""
        text = f"How about a {veg}chickpea and spinach curry{nuts}?"
    else:
        race = " for Berlin in September" if "Berlin" in memory else ""
        text = f"Add one long run a week{race}, growing it by about 10% each week."
    return [assistant_message(text, item_id=f"msg-{uuid.uuid4().hex[:8]}")]


class _Printer(RunHooks[Any]):
    """Receives the events TiamatHooks fans out; prints what each model call received."""

    def __init__(self, console: Console, hooks: TiamatHooks, session: str, report: DemoReport):
        self.console = console
        self.hooks = hooks
        self.session = session
        self.report = report

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        memory = _memory_of(input_items)
        tokens = self.hooks.recaller.counter.count(memory) if memory else 0
        self.report.calls.append(DemoCall(self.session, memory, tokens))
        title = f"model input of {self.session}: memory block, {tokens} tokens"
        body = Text(memory) if memory else Text("(no memory injected)", style="dim")
        self.console.print(Panel(body, title=title, border_style="cyan" if memory else "dim"))


async def run_demo(
    store_url: str | None = None,
    model: str | None = None,
    console: Console | None = None,
) -> DemoReport:
    """Run the three sessions and print what the model saw; returns a :class:`DemoReport`.

    Args:
        store_url: where memory lives (any :func:`~tiamat_hooks.stores.open_store` URL). Default:
            a SQLite file in a temporary directory, removed afterwards. On a given store the demo
            uses a fresh random user id, so it never mixes with other data.
        model: a model name for the real API; used only when ``OPENAI_API_KEY`` is set.
            Otherwise a scripted offline model answers.
        console: where to print (a ``rich`` console); default: a new one on stdout.

    Raises:
        TiamatError: the store failed (the demo runs with ``strict=True`` so problems show).
    """
    console = console or Console()
    real = bool(model) and bool(os.environ.get("OPENAI_API_KEY"))
    if model and not real:
        console.print("[yellow]OPENAI_API_KEY is not set: using the offline scripted model.[/]")
    with tempfile.TemporaryDirectory(prefix="tiamat-demo-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'memory.db'}"
        report = DemoReport(url, f"demo-{uuid.uuid4().hex[:8]}", real)
        store = open_store(url)
        console.print(f"store: [bold]{url}[/]   user: [bold]{report.user_id}[/]")
        try:
            for session, message in SESSIONS:
                console.rule(f"[bold]{session}[/] (new hooks object, same store)")
                console.print(f"[green]user:[/] {message}")
                hooks = TiamatHooks(store, user_id=report.user_id, session_id=session, strict=True)
                hooks.user_hooks = _Printer(console, hooks, session, report)
                agent_model: Any = (
                    model if real else ScriptedModel([ModelStep.respond(_scripted_reply)])
                )
                agent = Agent(name="assistant", instructions=INSTRUCTIONS, model=agent_model)
                result = await Runner.run(
                    agent,
                    message,
                    hooks=hooks,
                    run_config=RunConfig(tracing_disabled=not real),
                )
                await hooks.flush()
                reply = str(result.final_output)
                report.replies.append(reply)
                console.print(f"[magenta]assistant:[/] {reply}")
        finally:
            await store.close()
    verdict = "[green]remembered[/]" if report.remembered else "[red]did not remember[/]"
    console.rule(f"sessions 2 and 3 {verdict} what session 1 told")
    return report
