"""Builders for test data."""

from __future__ import annotations

from trajforge.records import ActionResult, LlmCall, ProviderAccess, Step, Trajectory


def make_trajectory(
    *,
    n_steps: int = 2,
    calls_per_step: int = 2,
    agent_id: str = "agent-1",
    source: str = "chat",
    status: str = "completed",
    start_time: int = 1_700_000_000_000,
    scenario_id: str | None = "sc-1",
    batch_id: str | None = None,
    reward: float | None = 1.0,
    prompt: str = "Customer asks for a refund of order A-1042",
    system: str = "You are a support agent. Answer with one JSON action.",
    model: str = "m-1",
    latency_ms: float = 100.0,
    metadata: dict | None = None,
    is_training_data: bool = False,
) -> Trajectory:
    t = Trajectory(
        agent_id=agent_id,
        source=source,
        status=status,
        start_time=start_time,
        end_time=start_time + 1000 if status != "active" else None,
        scenario_id=scenario_id,
        batch_id=batch_id,
        total_reward=reward,
        metadata=metadata if metadata is not None else {"env": "test"},
        is_training_data=is_training_data,
    )
    for i in range(n_steps):
        step = Step(step_number=i, timestamp=start_time + 10 * i)
        for j in range(calls_per_step):
            step.llm_calls.append(
                LlmCall(
                    timestamp=start_time + 10 * i + j,
                    model=model,
                    system_prompt=system,
                    user_prompt=f"{prompt} (step {i} call {j})",
                    response='{"action": "REFUND", "params": {"orderId": "A-1042"}}',
                    reasoning="The customer wants money back.",
                    latency_ms=latency_ms,
                    prompt_tokens=100,
                    completion_tokens=20,
                    purpose="action",
                    action_type="REFUND",
                )
            )
        step.provider_accesses.append(
            ProviderAccess(
                provider_name="orders", data={"orderId": "A-1042", "total": 42.5}, purpose="lookup"
            )
        )
        step.action = ActionResult(
            action_type="REFUND", parameters={"orderId": "A-1042"}, immediate_reward=0.5
        )
        t.steps.append(step)
    return t
