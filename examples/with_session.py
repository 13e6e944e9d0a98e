"""Memory together with an SDK Session (short-term history) — each turn is stored once.

The SDK ``SQLiteSession`` replays the conversation so far as input on every run; TiamatHooks
recognises that replayed history and stores only the new turns, and does not "recall" what the
model already sees. Give the hooks the Session's id so both agree on the conversation.

    export OPENAI_API_KEY=sk-...
    python examples/with_session.py
"""

from __future__ import annotations

import asyncio
import os

from agents import Agent, Runner, SQLiteSession

from tiamat_hooks import TiamatHooks

STORE = os.environ.get("TIAMAT_HOOKS_DB", "sqlite:///memory.db")


async def main() -> None:
    agent = Agent(
        name="assistant",
        instructions="Reply briefly.",
        model=os.environ.get("OPENAI_MODEL", "gpt-4.1-mini"),
    )
    session = SQLiteSession("trip-planning", "sessions.db")
    async with TiamatHooks(STORE, user_id="example-user", session_id=session.session_id) as hooks:
        for message in (
            "I'm planning a trip to Japan in April.",
            "I prefer trains over planes.",
            "Suggest a route for my trip.",
        ):
            result = await Runner.run(agent, message, hooks=hooks, session=session)
            print(f"you> {message}\nassistant> {result.final_output}\n")
    session.close()


if __name__ == "__main__":
    asyncio.run(main())
