"""The capture SDK: ``Recorder``, trajectory and step scopes, ``wrap_action``.

Three lines in an agent::

    rec = trajforge.Recorder()
    with rec.trajectory(agent_id="a1", source="chat") as t, t.step() as s:
        s.llm_call(model="m", system_prompt=sp, user_prompt=up, response=r)

The current trajectory and step travel in ``contextvars``, so each thread and each asyncio task
sees its own. Every public method catches and logs its own failures: capture never raises into the
agent, and the agent's own exceptions are recorded and re-raised untouched.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from trajforge import settings
from trajforge.capture.transport import Sink, StoreSink, check_store_url
from trajforge.capture.writer import BackgroundWriter
from trajforge.errors import InvalidInput
from trajforge.records import (
    AccessRow,
    ActionResult,
    CallRow,
    LlmCall,
    ProviderAccess,
    Score,
    StepHeader,
    TrajectoryHeader,
    new_id,
    now_ms,
)
from trajforge.validation import check_item, check_value

if TYPE_CHECKING:
    from trajforge.store import Store

log = logging.getLogger("trajforge.capture")

_current_trajectory: contextvars.ContextVar[TrajectoryScope | None] = contextvars.ContextVar(
    "trajforge_trajectory", default=None
)
_current_step: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar(
    "trajforge_step", default=None
)

F = TypeVar("F", bound=Callable[..., Any])


def _safe(fn: F) -> F:
    """Run an SDK method; on an internal failure log it and return None instead of raising."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("trajforge: %s failed (the agent continues)", fn.__qualname__)
            return None

    return wrapper  # type: ignore[return-value]


class StepScope:
    """One step of a trajectory. Use as a context manager (``with t.step() as s``)."""

    __slots__ = (
        "_action",
        "_closed",
        "_done",
        "_metadata",
        "_observation",
        "_reward",
        "_token",
        "number",
        "step_id",
        "trajectory",
    )

    def __init__(self, trajectory: TrajectoryScope, number: int, step_id: str | None = None) -> None:
        self.trajectory = trajectory
        self.number = number
        self.step_id = step_id or new_id()
        self._action: ActionResult | None = None
        self._reward: float | None = None
        self._done: bool | None = None
        self._observation: Any = None
        self._metadata: dict[str, Any] | None = None
        self._closed = False
        self._token: contextvars.Token[StepScope | None] | None = None
        trajectory._submit(StepHeader(trajectory.id, self.step_id, step_number=number, timestamp=now_ms()))

    @_safe
    def provider(
        self,
        provider_name: str,
        data: Any = None,
        purpose: str = "",
        query: Any = None,
        provider_id: str | None = None,
    ) -> str:
        """Record a read of context (memory, knowledge base, a customer record). Returns its id."""
        access = ProviderAccess(
            provider_name=provider_name, data=data, purpose=purpose, query=query, provider_id=provider_id
        )
        self.trajectory._submit(AccessRow(self.trajectory.id, self.step_id, access))
        return access.access_id

    @_safe
    def llm_call(self, **fields: Any) -> str:
        """Record one model call; keyword arguments are :class:`LlmCall` fields. Returns its id."""
        call = LlmCall(**fields)
        self.trajectory._submit(CallRow(self.trajectory.id, self.step_id, call))
        return call.call_id

    def record_call(self, call: LlmCall) -> str:
        """Record an already built :class:`LlmCall` (used by the instrumentations)."""
        self.trajectory._submit(CallRow(self.trajectory.id, self.step_id, call))
        return call.call_id

    @_safe
    def action(
        self,
        action_type: str,
        params: Any = None,
        result: Any = None,
        success: bool = True,
        error: str | None = None,
        reward: float | None = None,
        *,
        action_name: str | None = None,
        reasoning: str | None = None,
        llm_call_id: str | None = None,
    ) -> None:
        """Record what the agent did and how it went; ``reward`` is the immediate reward."""
        action = ActionResult(
            action_type=action_type,
            action_name=action_name or action_type,
            parameters=params,
            reasoning=reasoning,
            llm_call_id=llm_call_id,
            success=success,
            result=result,
            error=error,
            immediate_reward=reward,
        )
        check_item(action)
        self._action = action

    @_safe
    def reward(self, value: float) -> None:
        self._reward = check_value("reward", float(value), "step.reward")

    @_safe
    def set(self, *, done: bool | None = None, observation: Any = None, **metadata: Any) -> None:
        """Mark the step done, attach an observation, or merge metadata."""
        if done is not None:
            self._done = done
        if observation is not None:
            self._observation = check_value("observation", observation, "step.observation")
        if metadata:
            self._metadata = check_value("metadata", {**(self._metadata or {}), **metadata}, "step.metadata")

    @property
    def effective_reward(self) -> float | None:
        if self._reward is not None:
            return self._reward
        if self._action is not None:
            return self._action.immediate_reward
        return None

    @_safe
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.trajectory._step_closed(self)
        self.trajectory._submit(
            StepHeader(
                self.trajectory.id,
                self.step_id,
                action=self._action,
                reward=self._reward,
                done=self._done,
                observation=self._observation,
                metadata=self._metadata,
            )
        )

    def __enter__(self) -> StepScope:
        self._token = _current_step.set(self)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            try:
                _current_step.reset(self._token)
            except ValueError:  # exited in another context (e.g. a generator): just clear it
                _current_step.set(None)
        self.close()

    async def __aenter__(self) -> StepScope:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)


class TrajectoryScope:
    """One agent episode. Use as a context manager; an exception inside marks it ``error``."""

    def __init__(self, recorder: Recorder, header: TrajectoryHeader) -> None:
        self.recorder = recorder
        self.id = header.id
        self.header = header
        self._steps = 0
        self._open_step: StepScope | None = None
        self._step_rewards: list[float] = []
        self._reward: float | None = None
        self._closed = False
        self._token: contextvars.Token[TrajectoryScope | None] | None = None
        self._step_token: contextvars.Token[StepScope | None] | None = None
        self._submit(header)

    def _submit(self, item: Any) -> None:
        self.recorder._submit(item)

    def _step_closed(self, step: StepScope) -> None:
        r = step.effective_reward
        if r is not None:
            self._step_rewards.append(r)
        if self._open_step is step:
            self._open_step = None

    def step(self, step_id: str | None = None) -> StepScope:
        """Open the next step (a context manager)."""
        try:
            if self._open_step is not None and self._open_step.trajectory is self:
                self._open_step.close()  # steps are sequential: opening one closes the last
            step = StepScope(self, self._steps, step_id)
            self._steps += 1
            self._open_step = step
            return step
        except Exception:
            log.exception("trajforge: opening a step failed (the agent continues)")
            return _NullStep()  # type: ignore[return-value]

    def _implicit_step(self) -> StepScope:
        current = _current_step.get()
        if current is not None and current.trajectory is self and not current._closed:
            return current
        if self._open_step is not None and not self._open_step._closed:
            return self._open_step
        return self.step()

    # Shortcuts that record into the open step (opening one if needed).
    def llm_call(self, **fields: Any) -> str:
        return self._implicit_step().llm_call(**fields)

    def provider(self, provider_name: str, **kwargs: Any) -> str:
        return self._implicit_step().provider(provider_name, **kwargs)

    def action(self, action_type: str, **kwargs: Any) -> None:
        self._implicit_step().action(action_type, **kwargs)

    @_safe
    def reward(self, value: float) -> None:
        """Set the trajectory's total reward (otherwise the sum of its step rewards)."""
        self._reward = check_value("total_reward", float(value), "trajectory.totalReward")

    @_safe
    def set_metadata(self, **metadata: Any) -> None:
        merged = {**(self.header.metadata or {}), **metadata}
        self.header.metadata = check_value("metadata", merged, "trajectory.metadata")

    @_safe
    def end(self, status: str = "completed", error: str | None = None) -> None:
        """Close the trajectory (the context manager does this for you)."""
        if self._closed:
            return
        self._closed = True
        if self._open_step is not None:
            self._open_step.close()
        reward = self._reward
        if reward is None and self._step_rewards:
            reward = float(sum(self._step_rewards))
        metadata = self.header.metadata
        if error is not None:
            metadata = {**(metadata or {}), "error": error}
        end = TrajectoryHeader(
            self.id, status=status, end_time=now_ms(), total_reward=reward, metadata=metadata
        )
        try:
            check_item(end)
        except InvalidInput as exc:
            # A summed reward or an error message over the limits must not leave it active forever.
            log.error("trajforge: trajectory %s ends without its reward and metadata: %s", self.id, exc)
            end = TrajectoryHeader(self.id, status=status, end_time=end.end_time)
        self._submit(end)

    def __enter__(self) -> TrajectoryScope:
        self._token = _current_trajectory.set(self)
        self._step_token = _current_step.set(None)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        _reset(_current_trajectory, self._token)
        _reset(_current_step, self._step_token)
        if ev is None:
            self.end("completed")
        else:
            self.end("error", error=f"{type(ev).__name__}: {ev}")

    async def __aenter__(self) -> TrajectoryScope:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any] | None) -> None:
    if token is None:
        return
    try:
        var.reset(token)
    except ValueError:  # exited in another context (e.g. a generator): just clear it
        var.set(None)


class _NullStep:
    """What a disabled recorder hands out: the same methods, recording nothing."""

    step_id = ""
    number = 0
    _closed = True

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None

    def __enter__(self) -> _NullStep:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    async def __aenter__(self) -> _NullStep:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


class _NullTrajectory(_NullStep):
    id = ""

    def step(self, step_id: str | None = None) -> _NullStep:
        return _NullStep()

    def _implicit_step(self) -> _NullStep:
        return _NullStep()

    def __enter__(self) -> _NullTrajectory:
        self._token = _current_trajectory.set(self)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            _current_trajectory.reset(self._token)
        except ValueError:
            _current_trajectory.set(None)

    async def __aenter__(self) -> _NullTrajectory:
        return self.__enter__()


_live_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for rec in list(_live_recorders):
        try:
            rec.close(timeout_s=10)
        except Exception:
            log.exception("trajforge: flush at exit failed")


class Recorder:
    """Captures trajectories into a store (SQLite by default, PostgreSQL) or a trajforge server.

    ``target``: ``None`` (the default SQLite file in ``$TRAJFORGE_HOME``), a path,
    ``sqlite:///…``, ``postgresql://…``, ``http(s)://host:port`` or an open :class:`Store`.
    ``sink`` replaces the destination entirely (tests pass a loopback server's sink here).
    ``writer`` replaces the background writer itself, sink and spool included: one built with
    other limits (``BackgroundWriter(sink, spool_dir, max_pending=10)``; tests make its queue
    overflow this way). It is then the writer's own ``max_pending`` and interval that apply; the
    recorder owns it and :meth:`close` closes it.
    """

    def __init__(
        self,
        target: str | Path | Store | None = None,
        *,
        token: str | None = None,
        sink: Sink | None = None,
        spool_dir: str | Path | None = None,
        reward_on_success: float = 0.1,
        reward_on_error: float = -0.1,
        max_pending: int = 200_000,
        flush_interval_s: float = 0.1,
        writer: BackgroundWriter | None = None,
    ) -> None:
        if writer is not None and (target is not None or sink is not None or spool_dir is not None):
            raise InvalidInput("a writer brings its own sink and spool: pass it without a target", "writer")
        self.disabled_by_env = settings.logging_disabled()
        self.reward_on_success = reward_on_success
        self.reward_on_error = reward_on_error
        self._writer: BackgroundWriter | None = None
        self._final_stats: dict[str, Any] | None = None
        if self.disabled_by_env:
            if writer is not None:
                writer.close()  # ours, and never used: its thread must not outlive the recorder
            return
        if writer is None:
            if sink is None:
                sink = _make_sink(target, token)
            spool = Path(spool_dir) if spool_dir is not None else settings.home() / "spool"
            writer = BackgroundWriter(sink, spool, max_pending=max_pending, interval_s=flush_interval_s)
        self._writer = writer
        _live_recorders.add(self)

    @property
    def enabled(self) -> bool:
        """False when ``TRAJFORGE_DISABLE_LOGGING=1`` or the store's logging setting is off."""
        return self._writer is not None and self._writer.enabled

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: submitted, written, spilled (to the spool), replayed, rejected, lost, pending."""
        if self._writer is not None:
            return self._writer.counters()
        if self._final_stats is not None:
            return dict(self._final_stats)  # after close(): what the writer did in its life
        return {"submitted": 0, "written": 0, "disabled": True}

    def _submit(self, item: Any) -> None:
        if self._writer is not None:
            # Refused here, naming the field, rather than failing the whole batch in the store.
            check_item(item)
            self._writer.submit(item)

    def trajectory(
        self,
        agent_id: str = "",
        source: str = "chat",
        *,
        scenario_id: str | None = None,
        batch_id: str | None = None,
        group_index: int | None = None,
        is_training_data: bool = False,
        metadata: dict[str, Any] | None = None,
        trajectory_id: str | None = None,
    ) -> TrajectoryScope:
        """Open a trajectory (a context manager; or call ``.end()`` yourself)."""
        if not self.enabled:
            return _NullTrajectory()  # type: ignore[return-value]
        try:
            header = TrajectoryHeader(
                id=trajectory_id or new_id(),
                agent_id=agent_id,
                source=source,
                status="active",
                start_time=now_ms(),
                scenario_id=scenario_id,
                batch_id=batch_id,
                group_index=group_index,
                is_training_data=is_training_data,
                metadata=dict(metadata) if metadata else None,
            )
            return TrajectoryScope(self, header)
        except Exception:
            log.exception("trajforge: opening a trajectory failed (the agent continues)")
            return _NullTrajectory()  # type: ignore[return-value]

    @staticmethod
    def current_trajectory() -> TrajectoryScope | None:
        return _current_trajectory.get()

    @staticmethod
    def current_step() -> StepScope | None:
        return _current_step.get()

    @_safe
    def score(
        self, trajectory_id: str, name: str, value: float, comment: str | None = None, source: str = "api"
    ) -> None:
        """Attach a late outcome or score to a trajectory (replaces the same name+source)."""
        self._submit(
            Score(trajectory_id=trajectory_id, name=name, value=float(value), comment=comment, source=source)
        )

    def wrap_action(
        self,
        action_type: str,
        *,
        reward_on_success: float | None = None,
        reward_on_error: float | None = None,
        source: str = "api",
    ) -> Callable[[F], F]:
        """Decorate an action handler (sync or async) so each call is recorded as the step's action.

        Opens a step if none is open (and a trajectory of its own, ``source``, outside any), records
        the arguments, result, success, error and an immediate reward (success ``+0.1``, exception
        ``-0.1`` by default), and re-raises the handler's exception unchanged.
        """
        ok_reward = self.reward_on_success if reward_on_success is None else reward_on_success
        err_reward = self.reward_on_error if reward_on_error is None else reward_on_error

        def decorate(fn: F) -> F:
            try:
                signature: inspect.Signature | None = inspect.signature(fn)
            except (TypeError, ValueError):
                signature = None

            def params_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if signature is None:
                    return {"args": list(args), "kwargs": kwargs}
                try:
                    bound = signature.bind_partial(*args, **kwargs).arguments
                except TypeError:
                    return {"args": list(args), "kwargs": kwargs}
                return {k: v for k, v in bound.items() if k not in ("self", "cls")}

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    scope = _ActionScope(self, action_type, source)
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        scope.finish(params_of(args, kwargs), None, exc, err_reward)
                        raise
                    scope.finish(params_of(args, kwargs), result, None, ok_reward)
                    return result

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                scope = _ActionScope(self, action_type, source)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    scope.finish(params_of(args, kwargs), None, exc, err_reward)
                    raise
                scope.finish(params_of(args, kwargs), result, None, ok_reward)
                return result

            return wrapper  # type: ignore[return-value]

        return decorate

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything recorded so far is written (or safely spooled)."""
        try:
            return self._writer.flush(timeout_s) if self._writer is not None else True
        except Exception:
            log.exception("trajforge: flush failed")
            return False

    def close(self, timeout_s: float = 30.0) -> bool:
        """Flush and stop the background writer; the recorder records nothing afterwards."""
        writer, self._writer = self._writer, None
        _live_recorders.discard(self)
        if writer is None:
            return True
        try:
            ok = writer.close(timeout_s)
            self._final_stats = writer.counters()
            writer.sink.close()
            return ok
        except Exception:
            log.exception("trajforge: close failed")
            return False

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _ActionScope:
    """The step (and maybe trajectory) a wrapped action records into, opened if none is current."""

    __slots__ = ("action_type", "own_step", "own_traj", "step")

    def __init__(self, rec: Recorder, action_type: str, source: str) -> None:
        self.action_type = action_type
        self.own_traj: TrajectoryScope | None = None
        self.own_step = False
        self.step: StepScope | None = None
        try:
            traj = _current_trajectory.get()
            if traj is None:
                traj = rec.trajectory(source=source, metadata={"action": action_type})
                self.own_traj = traj
            step = _current_step.get()
            if step is None or step.trajectory is not traj or step._closed:
                step = traj.step()
                self.own_step = True
            self.step = step
        except Exception:
            log.exception("trajforge: wrap_action could not open its scope (the agent continues)")

    def finish(self, params: Any, result: Any, exc: BaseException | None, reward: float) -> None:
        try:
            if self.step is None:
                return
            self.step.action(
                self.action_type,
                params=params,
                result=result,
                success=exc is None,
                error=None if exc is None else f"{type(exc).__name__}: {exc}",
                reward=reward,
            )
            if self.own_step:
                self.step.close()
            if self.own_traj is not None:
                if exc is None:
                    self.own_traj.end("completed")
                else:
                    self.own_traj.end("error", error=f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("trajforge: wrap_action could not record (the agent continues)")


def _make_sink(target: str | Path | Store | None, token: str | None) -> Sink:
    if target is not None and not isinstance(target, str | Path):
        return StoreSink(target, owns_store=False)
    url = str(target) if target is not None else settings.database_url()
    if url.startswith(("http://", "https://")):
        from trajforge.capture.http import HttpSink

        return HttpSink(url, token=token if token is not None else settings.api_token())
    # A malformed URL raises here, where the mistake is made. The store itself is opened by the
    # writer thread: one that is down, unreachable or locked (a SQLite file another connection
    # writes to waits out its busy timeout, then fails) must not hold up or break the agent.
    check_store_url(url)
    return StoreSink(url=url)


def current_step() -> StepScope | None:
    """The step open in this thread / task, if any (what instrumentations record into)."""
    return _current_step.get()


def current_trajectory() -> TrajectoryScope | None:
    return _current_trajectory.get()
