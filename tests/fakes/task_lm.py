"""A deterministic "task model" for optimizer tests, served through the fake OpenAI server.

It answers support-desk messages with a JSON action, and answers better exactly when the prompt
carries what it needs: it knows which action a customer intent maps to only if the system prompt
states the mapping (``money back→REFUND``) or a demonstration earlier in the chat shows it, and it
includes the order id in ``params`` only if the system prompt or a demonstration does. So an
optimizer that really improves the prompt raises the score, and one that does nothing does not.
Asked with the instruction-search proposer's system prompt, it proposes a useless and a useful
rewrite.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from typing import Any

from trajforge.optimize.common import TaskExample
from trajforge.optimize.instruction_search import PROPOSER_SYSTEM

INTENTS = {
    "money back": "REFUND",
    "where is": "TRACK",
    "cancel": "CANCEL",
    "broken": "REPLACE",
    "manager": "ESCALATE",
}
PHRASES = {
    "money back": ["I want my money back for order {o}.", "Give me my money back, order {o}!"],
    "where is": ["Where is my package {o}?", "Hi, where is order {o}? It is late."],
    "cancel": ["Please cancel order {o}.", "I need to cancel {o} right now."],
    "broken": ["Order {o} arrived broken.", "The lamp in {o} is broken."],
    "manager": ["Let me talk to a manager about {o}.", "Get me your manager, order {o}."],
}
BASELINE = "You are a support agent. Answer with one JSON action."
GOOD_RULES = (
    "Answer with one JSON action. Map the customer's intent: "
    + ", ".join(f"{k}→{a}" for k, a in INTENTS.items())
    + ". Always include the orderId in params."
)


def examples(n: int, seed: int = 0) -> list[TaskExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        intent = list(INTENTS)[i % len(INTENTS)]
        order = f"A-{1000 + rng.randrange(9000)}"
        text = rng.choice(PHRASES[intent]).format(o=order)
        expected = json.dumps({"action": INTENTS[intent], "params": {"orderId": order}})
        out.append(TaskExample("support_reply", ({"role": "user", "content": text},), expected, BASELINE))
    return out


def answer(messages: list[dict[str, Any]], request: dict[str, Any]) -> str:
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    if system == PROPOSER_SYSTEM:
        return json.dumps({"instructions": ["Be polite and helpful.", GOOD_RULES]})
    known: dict[str, str] = {k: a for k, a in INTENTS.items() if f"{k}→{a}" in system}
    with_order = "orderId" in system
    # Demonstrations: a user turn followed by an assistant turn, before the last user message.
    for prev, nxt in itertools.pairwise(messages[:-1]):
        if prev.get("role") == "user" and nxt.get("role") == "assistant":
            for k in INTENTS:
                if k in prev["content"].lower():
                    try:
                        known[k] = json.loads(nxt["content"])["action"]
                        with_order = with_order or "orderId" in nxt["content"]
                    except (ValueError, KeyError, TypeError):
                        pass
    text = messages[-1]["content"]
    intent = next((k for k in INTENTS if k in text.lower()), None)
    action = known.get(intent, "REPLY") if intent else "REPLY"
    order = re.search(r"A-\d+", text)
    params = {"orderId": order.group(0)} if with_order and order else {}
    return json.dumps({"action": action, "params": params})


def answer_with_reflection(messages: list[dict[str, Any]], request: dict[str, Any]) -> str:
    """``answer``, plus GEPA's reflection prompt: the rewrite it proposes adds the mapping the
    feedback in the prompt names (``the right action is 'REFUND'``) and the order-id rule."""
    text = messages[-1]["content"] if messages else ""
    if "I provided an assistant with the following instructions" in text:
        # What the current instruction already maps, plus what this round's feedback names.
        learned = set(re.findall(r"the right action is '(\w+)'", text))
        learned |= {a for k, a in INTENTS.items() if f"{k}→{a}" in text}
        rules = [f"{k}→{a}" for k, a in INTENTS.items() if a in learned]
        return (
            "```\nAnswer with one JSON action. Map the customer's intent: "
            + ", ".join(rules)
            + ". Always include the orderId in params.\n```"
        )
    return answer(messages, request)


def fill_store(store: Any, n: int = 30) -> None:
    """Store ``n`` completed trajectories whose one call answered an example rightly."""
    from trajforge.records import LlmCall, Step, Trajectory, WriteBatch

    for i, ex in enumerate(examples(n)):
        t = Trajectory(
            agent_id="bot",
            status="completed",
            start_time=1_700_000_000_000 + i,
            scenario_id=f"s{i}",
            total_reward=1.0,
        )
        step = Step()
        step.llm_calls.append(
            LlmCall(
                system_prompt=ex.system,
                user_prompt=ex.input[0]["content"],
                response=ex.expected,
                action_type="support_reply",
            )
        )
        t.steps.append(step)
        store.write(WriteBatch.from_trajectory(t))


MODEL = "task"
"""The model name jobs ask the fake server for."""


def slow(fn: Any, delay_s: float) -> Any:
    """``fn`` answering only after ``delay_s`` (a job that runs long enough to be cancelled)."""
    import time

    def answer_slowly(messages: list[dict[str, Any]], request: dict[str, Any]) -> Any:
        time.sleep(delay_s)
        return fn(messages, request)

    return answer_slowly
