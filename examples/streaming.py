"""Memory with ``Runner.run_streamed``: the same hooks, nothing else changes.

export OPENAI_API_KEY=sk-...
python examples/streaming.py "What do you remember about me?"
"""

from __future__ import annotations

import asyncio
import os
import sys

from agents import Agent, Runner
from openai.types.responses import ResponseTextDeltaEvent

from tiamat_hooks import TiamatHooks

STORE = os.environ.get("TIAMAT_HOOKS_DB", "sqlite:///memory.db")


async def main(message: str) -> None:
    agent = Agent(
        name="assistant",
        instructions="You are a helpful assistant. Use what you remember about the user.",
        model=os.environ.get("OPENAI_MODEL", "gpt-4.1-mini"),
    )
    async with TiamatHooks(STORE, user_id="example-user", session_id="streaming") as hooks:
        result = Runner.run_streamed(agent, message, hooks=hooks)
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(
                event.data, ResponseTextDeltaEvent
            ):
                print(event.data.delta, end="", flush=True)
        print()
    # Leaving the block waited for the run's turns to be stored.


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Hello! What do you remember about me?"))
