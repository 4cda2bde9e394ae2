"""The capture part of the demo: a tiny scripted support-desk agent recorded through the SDK.

This is the first phase of the flywheel; later phases (datasets, optimization, fine-tuning) build
on what it records.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from trajforge.capture.recorder import Recorder

SYSTEM_PROMPT = (
    "You are a support-desk agent. Read the customer's message and the order record, then answer "
    'with exactly one JSON action: {"action": NAME, "params": {...}}. Actions: REFUND, REPLACE, '
    "TRACK, CANCEL, ESCALATE, ANSWER."
)
CASES = (
    ("My order {order} arrived broken, I want my money back.", "REFUND"),
    ("Where is my package? Order {order}.", "TRACK"),
    ("Please cancel order {order} before it ships.", "CANCEL"),
    ("The mug in order {order} is the wrong colour, send the right one.", "REPLACE"),
    ("I have been charged twice for {order}, this is outrageous, get me a manager!", "ESCALATE"),
)


def record_examples(rec: Recorder, n: int = 12, seed: int = 7) -> list[str]:
    """Run the scripted agent on ``n`` customer messages; returns the trajectory ids."""
    rng = random.Random(seed)
    ids = []

    @rec.wrap_action("SUPPORT_ACTION")
    def execute(action: dict[str, Any]) -> dict[str, Any]:
        if action["action"] == "ESCALATE":
            raise RuntimeError("no manager on duty")
        return {"status": "done", "action": action["action"]}

    for i in range(n):
        template, expected = rng.choice(CASES)
        order = f"A-{rng.randint(1000, 9999)}"
        message = template.format(order=order)
        with rec.trajectory(agent_id="support-bot", source="chat", scenario_id=f"demo-{i}") as t:
            with t.step() as s:
                record = {"orderId": order, "status": rng.choice(["shipped", "delivered", "processing"])}
                s.provider("orders", data=record, purpose="look up the order", query={"orderId": order})
                answer = json.dumps({"action": expected, "params": {"orderId": order}})
                started = time.perf_counter()
                s.llm_call(
                    model="scripted-expert",
                    system_prompt=SYSTEM_PROMPT,
                    user_prompt=f"Customer: {message}\nOrder: {json.dumps(record)}",
                    response=answer,
                    purpose="action",
                    action_type=expected,
                    latency_ms=(time.perf_counter() - started) * 1000 + rng.uniform(50, 400),
                    prompt_tokens=len(SYSTEM_PROMPT + message) // 4,
                    completion_tokens=len(answer) // 4,
                    temperature=0.0,
                )
                try:
                    execute(json.loads(answer))
                except RuntimeError:
                    pass  # recorded as a failed action with a negative reward
            ids.append(t.id)
    return ids
