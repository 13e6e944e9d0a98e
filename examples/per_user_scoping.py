"""One hooks object serving many users: the user id comes from the run context.

The application decides whose memory a run reads and writes (here: the ``user`` of the request
context); the model never chooses it. Runs for different users may be concurrent.

    python examples/per_user_scoping.py            # offline, scripted model
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from agents import Agent, RunContextWrapper, Runner
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message

from tiamat_hooks import TiamatHooks


@dataclass
class Request:
    """What your web framework knows about the caller."""

    user: str
    conversation: str


def user_of(ctx: RunContextWrapper[Any]) -> str:
    return str(ctx.context.user)


def conversation_of(ctx: RunContextWrapper[Any]) -> str:
    return str(ctx.context.conversation)


def echo_memory(call: ModelCall) -> list[Any]:
    """A stand-in model that says which remembered lines reached it."""
    lines = [
        line
        for item in call.input
        if isinstance(item, dict) and str(item.get("content", "")).startswith("<memory>")
        for line in str(item["content"]).splitlines()
        if line.startswith("> user:")
    ]
    return [assistant_message("I remember: " + (" | ".join(lines) or "nothing yet"))]


async def main() -> None:
    db = os.path.join(tempfile.mkdtemp(), "memory.db")
    async with TiamatHooks(f"sqlite:///{db}", user_id=user_of, session_id=conversation_of) as hooks:
        agent = Agent(name="assistant", model=ScriptedModel([ModelStep.respond(echo_memory)] * 4))
        # Two users tell something, concurrently, through the same hooks object.
        await asyncio.gather(
            Runner.run(
                agent, "My favourite city is Kyoto.", hooks=hooks, context=Request("ana", "c1")
            ),
            Runner.run(
                agent, "My favourite city is Lagos.", hooks=hooks, context=Request("ben", "c2")
            ),
        )
        await hooks.flush()
        for user in ("ana", "ben"):
            result = await Runner.run(
                agent, "What is my favourite city?", hooks=hooks, context=Request(user, "c3")
            )
            print(f"{user}: {result.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
