"""The demo's agent environment: a support desk, with a checkable reward.

A customer writes in; the agent looks the customer up through the ``crm`` provider (recorded as a
provider access) and answers with one JSON action out of six, e.g.
``{"action": "REFUND", "params": {"orderId": "A-1042"}}``. The right order is often not in the
message ("the lamp", "my last order"): it has to be read from the customer record.

Reward (:func:`reward`): 1 for the right action with the right params, 0.5 for the right action,
0 for a wrong or unparseable answer. Cases come from a seeded generator (templates × customers ×
products × phrasing); a case's scenario id encodes its seed and index, so the reward function can
regenerate the expected answer from a stored trajectory, and training and held-out cases (different
seeds, checked disjoint) never share a scenario.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trajforge.optimize.common import TaskExample, action_match
from trajforge.records import Trajectory
from trajforge.rewards import reward_function

TASK = "support_plan"
ACTIONS = ("REFUND", "TRACK", "CANCEL", "REPLACE", "UPDATE_ADDRESS", "ESCALATE")
TRAIN_SEED = 1
HELDOUT_SEED = 2

SYSTEM_PROMPT = (
    "You are a support-desk agent for an online shop. Read the customer's message and their record, "
    "pick the one action that resolves it, and reply with only a JSON object: "
    '{"action": ACTION, "params": {"orderId": ORDER_ID}}. ORDER_ID is the id of the order the '
    "customer means, from their record. Actions: REFUND (item damaged or money back), TRACK (where "
    "is my order), CANCEL (stop an order that has not shipped), REPLACE (wrong or defective item, "
    "wants another), UPDATE_ADDRESS (deliver to a new address), ESCALATE (angry, wants a manager, "
    "legal threat)."
)

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "REFUND": (
        "{ref} arrived smashed. I want my money back.",
        "The {item} from {ref} is broken. Please refund me.",
        "I'd like a refund for {ref}, the {item} was damaged in transit.",
        "Money back please: {ref} came cracked.",
    ),
    "TRACK": (
        "Where is {ref}? It has been ages.",
        "Can you tell me where {ref} is right now?",
        "Any tracking update on {ref}? Still waiting for the {item}.",
        "My {item} hasn't shown up. Where is {ref}?",
    ),
    "CANCEL": (
        "Please cancel {ref}, I changed my mind.",
        "I don't need the {item} anymore, cancel {ref} before it ships.",
        "Cancel {ref} please, ordered it by mistake.",
        "Stop {ref}! I no longer want it.",
    ),
    "REPLACE": (
        "{ref} is the wrong colour. Send me the right {item}.",
        "I got the wrong size in {ref}, please send a replacement.",
        "The {item} in {ref} doesn't work, I want a new one, not a refund.",
        "Please replace {ref}, you sent me someone else's {item}.",
    ),
    "UPDATE_ADDRESS": (
        "I moved last week. Please ship {ref} to 12 Harbour Road instead.",
        "Change the delivery address for {ref} to my office, 4 Mill Lane.",
        "Can {ref} go to my new flat at 9 Elm Street?",
        "New address for {ref}: 77 King Street. Please update it.",
    ),
    "ESCALATE": (
        "This is the third time {ref} went wrong. Get me a manager NOW.",
        "I'm contacting my lawyer about {ref} unless a supervisor calls me.",
        "Unacceptable service on {ref}. I demand to speak to your manager.",
        "Your staff were rude about {ref}. Escalate this immediately.",
    ),
}
_OPENERS = ("", "Hi, ", "Hello. ", "Good morning! ", "Hey there, ", "Dear support, ")
_CLOSERS = ("", " Thanks.", " Thank you!", " Regards.", " Cheers.")
_FIRST = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam")
_LAST = ("Silva", "Okafor", "Meyer", "Novak", "Rossi", "Tanaka", "Dubois", "Larsen", "Khan", "Moreau")
_ITEMS = (
    "lamp",
    "kettle",
    "backpack",
    "desk chair",
    "headphones",
    "teapot",
    "rug",
    "blender",
    "jacket",
    "monitor",
)
_STATUS = {
    "REFUND": "delivered",
    "TRACK": "shipped",
    "CANCEL": "processing",
    "REPLACE": "delivered",
    "UPDATE_ADDRESS": "processing",
    "ESCALATE": "delivered",
}


@dataclass(frozen=True, slots=True)
class Case:
    scenario_id: str
    message: str
    record: dict[str, Any]
    """What the ``crm`` provider returns for the customer."""
    action: str
    order_id: str

    @property
    def expected(self) -> dict[str, Any]:
        return {"action": self.action, "params": {"orderId": self.order_id}}

    @property
    def expected_json(self) -> str:
        return json.dumps(self.expected)

    def user_prompt(self) -> str:
        return f"Customer message: {self.message}\nCustomer record: {json.dumps(self.record)}"

    def messages(self, system: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": self.user_prompt()}]

    def example(self) -> TaskExample:
        return TaskExample(
            TASK, ({"role": "user", "content": self.user_prompt()},), self.expected_json, SYSTEM_PROMPT
        )


def case(seed: int, index: int) -> Case:
    """Case ``index`` of the generator seeded ``seed`` (the same case every time)."""
    rng = random.Random(f"support-desk:{seed}:{index}")
    action = ACTIONS[rng.randrange(len(ACTIONS))]
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    items = rng.sample(_ITEMS, rng.randint(1, 3))
    orders = []
    for n, item in enumerate(items):
        orders.append(
            {
                "orderId": f"A-{rng.randint(1000, 9999)}",
                "item": item,
                "status": rng.choice(("delivered", "shipped", "processing")),
                "placed": f"2026-{10 + n // 2:02d}-{rng.randint(1, 28):02d}",
            }
        )
    orders.sort(key=lambda o: o["placed"])
    target = rng.randrange(len(orders))
    orders[target]["status"] = _STATUS[action]
    order = orders[target]
    # How the customer refers to the order: by id, by item, or as the latest one.
    style = rng.choice(("id", "id", "item", "latest") if target == len(orders) - 1 else ("id", "id", "item"))
    ref = {
        "id": f"order {order['orderId']}",
        "item": f"my {order['item']} order",
        "latest": "my last order",
    }[style]
    template = rng.choice(_TEMPLATES[action])
    body = template.format(ref=ref, item=order["item"])
    body = body[0].upper() + body[1:]
    message = f"{rng.choice(_OPENERS)}{body}{rng.choice(_CLOSERS)}"
    record = {
        "customerId": f"C-{rng.randint(10000, 99999)}",
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "orders": orders,
    }
    return Case(f"sd-{seed}-{index}", message, record, action, order["orderId"])


def cases(seed: int, n: int) -> list[Case]:
    return [case(seed, i) for i in range(n)]


def split(n_train: int, n_heldout: int) -> tuple[list[Case], list[Case]]:
    """Training and held-out cases, from different seeds, with no shared customer message."""
    train = cases(TRAIN_SEED, n_train)
    seen = {c.message for c in train}
    heldout = [c for c in cases(HELDOUT_SEED, n_heldout * 2) if c.message not in seen][:n_heldout]
    return train, heldout


def case_for(scenario_id: str) -> Case | None:
    """The case a scenario id names (``sd-<seed>-<index>``), or None for other scenarios."""
    parts = scenario_id.split("-")
    if len(parts) != 3 or parts[0] != "sd" or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return case(int(parts[1]), int(parts[2]))


def reward(answer: str, c: Case) -> float:
    """1 right action and params, 0.5 right action, 0 otherwise (the optimizers' action_match)."""
    return action_match(answer, c.expected_json)


@reward_function("support_desk")
def support_desk_reward(t: Trajectory) -> float | None:
    """The task's reward of a stored trajectory (its last planner answer against the case its
    scenario id names); None for trajectories that are not support-desk cases."""
    c = case_for(t.scenario_id or "")
    answers = [call.response or "" for step in t.steps for call in step.llm_calls if call.action_type == TASK]
    if c is None or not answers:
        return None
    return reward(answers[-1], c)


def heldout_examples(n: int = 100) -> list[TaskExample]:
    return [c.example() for c in split(0, n)[1]] if n else []


def expert(c: Case) -> str:
    """The teacher policy: a scripted expert that reads the record as a careful human would."""
    return c.expected_json


def execute(action: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Carry an action out against the record: unknown actions and orders are errors, as in a
    real back office."""
    name = action.get("action")
    if name not in ACTIONS:
        raise ValueError(f"unknown action {name!r}")
    order_id = (action.get("params") or {}).get("orderId")
    if order_id not in {o["orderId"] for o in record["orders"]}:
        raise ValueError(f"no order {order_id!r} for this customer")
    return {"status": "done", "action": name, "orderId": order_id}


def batch_answers(
    model: Any,
    batch: Sequence[Case],
    system: Any = SYSTEM_PROMPT,
    max_tokens: int = 48,
) -> list[str]:
    """The model's answers to ``batch`` (one batched generation when the model supports it).
    ``system`` is a prompt string or a :class:`trajforge.prompts.Prompt` (with demonstrations)."""
    convs = [
        system.messages([{"role": "user", "content": c.user_prompt()}])
        if hasattr(system, "messages")
        else c.messages(str(system))
        for c in batch
    ]
    if hasattr(model, "chat_batch"):
        return list(model.chat_batch(convs, max_tokens=max_tokens, json_object=True))
    return [model.chat(m, max_tokens=max_tokens) for m in convs]
