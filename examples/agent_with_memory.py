"""An agent that remembers the user across runs, with the real OpenAI API.

    export OPENAI_API_KEY=sk-...
    python examples/agent_with_memory.py

Run it twice: the second time, the agent knows what you told it the first time. Memory is kept in
a SQLite file (``TIAMAT_HOOKS_DB`` or ``./memory.db`` here).
"""

from __future__ import annotations

import asyncio
import os

from agents import Agent, Runner

from tiamat_hooks import TiamatHooks

STORE = os.environ.get("TIAMAT_HOOKS_DB", "sqlite:///memory.db")


async def main() -> None:
    agent = Agent(
        name="assistant",
        instructions="You are a helpful assistant. Use what you remember about the user.",
        model=os.environ.get("OPENAI_MODEL", "gpt-4.1-mini"),
    )
    # One line of integration: hooks=. The store URL is opened lazily and closed on exit.
    async with TiamatHooks(STORE, user_id="example-user") as hooks:
        while True:
            try:
                message = (await asyncio.to_thread(input, "you> ")).strip()
            except EOFError:
                break
            if not message:
                break
            result = await Runner.run(agent, message, hooks=hooks)
            print(f"assistant> {result.final_output}")
            print(f"  (memory: {hooks.stats.injections} injections, {hooks.stats.recalls} recalls)")


if __name__ == "__main__":
    asyncio.run(main())
