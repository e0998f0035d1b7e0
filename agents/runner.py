"""The responder the daemon hands to the connectors: message -> agent turn -> model ->
streamed reply, plus the chat commands and the answers scheduled jobs ask for.

The gateway has already decided the sender may talk to the box (and refused admin
commands to everyone but the owner and admins), and the inbox has stored the message.
Here the chat's agent is chosen (its own pick with /use, else the default), the prompt
is built from its session memory, the model is picked (the agent's pin, else the
router's decision when the daemon has a router, else the default model) and the answer
streams back. When the agent has tools, the sampling grammar lets the model answer in
prose or with one JSON tool call; calls run (at most a few per turn) and their results
go back to the model before it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from agents import tools
from agents.registry import Registry, RegistryError
from agents.schedule import ScheduleError, is_job_request
from agents.sessions import Sessions, TokenCounter
from agents.spec import AgentSpec
from connectors.base import InboundMessage
from connectors.policy import command_name
from models.chat_template import Message
from models.catalog import CatalogError
from models.pool import BusyError, ModelUnavailableError
from models.runtime import SamplingParams

if TYPE_CHECKING:
    from agents.inbox import Inbox
    from agents.jobs import Jobs
    from agents.tables import JobInfo
    from aibox.daemon import Daemon

log = logging.getLogger(__name__)

COMMANDS = ("agents", "use", "model", "reset", "remember", "forget", "history", "jobs", "cancel", "remind", "schedule", "help")
SUMMARY_PROMPT = (
    "Summarise this conversation in at most six sentences for your own memory. Keep names, facts, "
    "numbers, decisions and open tasks; drop greetings and small talk."
)
HELP = (
    "Commands: /agents, /use NAME, /model [NAME|auto], /reset, /remember TEXT, /forget [ID|all], /history [N], "
    "/remind WHEN WHAT, /jobs, /cancel ID. Or just say \"remind me every weekday at 8:00 to stretch\"."
)


class AgentRunner:
    def __init__(self, daemon: "Daemon", registry: Registry, sessions: Sessions, timezone: str) -> None:
        self.daemon = daemon
        self.registry = registry
        self.sessions = sessions
        self.timezone = timezone
        self.jobs: "Jobs | None" = None
        self.inbox: "Inbox | None" = None

    def __call__(self, msg: InboundMessage) -> AsyncIterator[str]:
        return self.respond(msg)

    async def respond(self, msg: InboundMessage) -> AsyncIterator[str]:
        command = command_name(msg.text)
        if command in COMMANDS:
            yield await self.command(command, msg)
            return
        spec = await self.agent_for(msg.platform, msg.chat_id)
        if self.jobs is not None and is_job_request(msg.text):
            try:
                created = await self.jobs.create_from_text(msg.text, msg.platform, msg.chat_id, msg.sender_id, spec.name, self.timezone)
            except ScheduleError:
                pass  # not a schedule after all: an ordinary message
            else:
                yield created.confirmation
                return
        async for piece in self.turn(spec, msg.platform, msg.chat_id, msg.sender_id, msg.text, source=msg.platform, inbound=msg):
            yield piece

    async def agent_for(self, platform: str, chat_id: str) -> AgentSpec:
        chosen = await self.sessions.chosen_agent(platform, chat_id)
        spec = self.registry.enabled(chosen) if chosen else None
        if spec is not None and spec.serves(platform, chat_id):
            return spec
        return self.registry.default(self.daemon.config.agents.default_agent)

    # -- one turn ------------------------------------------------------------------

    async def turn(
        self, spec: AgentSpec, platform: str, chat_id: str, sender_id: str | None, text: str, source: str,
        inbound: InboundMessage | None = None,
    ) -> AsyncIterator[str]:
        await self._add_user_turn(spec.name, platform, chat_id, text)
        override = await self.sessions.chosen_model(platform, chat_id)
        model, decision, note = self.pick_model(spec, text, f"{platform}:{sender_id}" if sender_id else None, override)
        if note:
            yield note + "\n\n"
        try:
            window, count = await self._measure([model, *(decision.fallbacks if decision is not None else [])])
        except BusyError as e:
            yield f"The box is busy right now; please try again in {e.retry_after:.0f} s."
            return

        now = datetime.now(ZoneInfo(self.timezone))
        extra = f"It is {now:%A %Y-%m-%d %H:%M} ({self.timezone})."
        if spec.tools:
            extra += "\n" + tools.describe(spec.tools)
        messages = await self.sessions.build_context(spec, platform, chat_id, extra, count, window, self._summariser(spec))
        ack = await self._start_long_job(decision, spec, messages, platform, chat_id, sender_id, source, inbound)
        if ack is not None:
            yield ack
            return
        ctx = tools.ToolContext(platform, chat_id, sender_id, spec.name, self.timezone, notes=self.sessions, jobs=self.jobs)
        answer: list[str] = []
        try:
            for step in range(tools.MAX_CALLS_PER_TURN + 1):
                may_call = bool(spec.tools) and step < tools.MAX_CALLS_PER_TURN
                params = SamplingParams(
                    max_tokens=min(spec.model.max_tokens, self.daemon.config.runtime.max_tokens),
                    temperature=spec.model.temperature,
                    grammar=tools.call_grammar(spec.tools) if may_call else None,
                    grammar_trigger=tools.CALL_TRIGGER if may_call else None,
                )
                call_text = None
                try:
                    async for piece, is_call in self._generate(model, decision, messages, params, sender_id, spec.name, source):
                        if is_call:
                            call_text = piece
                        else:
                            answer.append(piece)
                            yield piece
                except BusyError as e:
                    yield f"The box is busy right now; please try again in {e.retry_after:.0f} s."
                    return
                if call_text is None:
                    return
                result = await self.run_tool(call_text, spec, ctx)
                messages = [*messages, {"role": "assistant", "content": call_text},
                            {"role": "user", "content": f"Tool result: {result}\nNow answer the user."}]
        finally:
            if answer:
                await self.sessions.add_turn(platform, chat_id, spec.name, "assistant", "".join(answer))

    async def _start_long_job(
        self, decision: Any, spec: AgentSpec, messages: list[Message], platform: str, chat_id: str,
        sender_id: str | None, source: str, inbound: InboundMessage | None = None,
    ) -> str | None:
        """A long answer to a chat message runs in the background (aibox/router/jobs.py): the
        reply is a short acknowledgement, a status message is edited as it grows, the answer
        is posted when done, and /cancel stops it. Returns the acknowledgement, or None when
        the turn should stream as usual (short answers, scheduled jobs, no connector). A long
        answer is written without tool calls: tools serve short actions, not long writing."""
        router = getattr(self.daemon, "router", None)
        connectors = self.daemon.connectors
        if (decision is None or decision.length_class != "long" or router is None or source != platform
                or connectors is None or platform not in connectors.connectors):
            return None
        from aibox.router.jobs import connector_delivery

        params = SamplingParams(max_tokens=min(spec.model.max_tokens, self.daemon.config.runtime.max_tokens),
                                temperature=spec.model.temperature)
        stream = router.serve(decision, messages, params, on_finished=lambda m, stats: self.daemon.record(
            m, stats, source=source, sender=sender_id, agent=spec.name))

        tracked = inbound is not None and self.inbox is not None
        if tracked:
            self.inbox.hold(inbound)
            stream = self._settle_when_stopped(stream, inbound)

        async def keep(answer: str) -> None:
            await self.sessions.add_turn(platform, chat_id, spec.name, "assistant", answer)
            if tracked:
                await self.inbox.settle(inbound)

        delivery = connector_delivery(connectors.connectors[platform], chat_id,
                                      answer=lambda text: connectors.gateway.deliver(platform, chat_id, text))
        expected = next((c.expected_s for c in decision.candidates if c.model == decision.model), 0.0)
        try:
            await router.jobs.start(f"{platform}:{chat_id}", decision.model, stream, delivery, expected, on_done=keep)
        except BaseException:
            if tracked:
                self.inbox.unhold(inbound)
            raise
        return "On it: that is a long answer, so I'm writing it in the background and will post it here."

    async def _settle_when_stopped(self, stream: AsyncIterator[str], inbound: InboundMessage) -> AsyncIterator[str]:
        """A background answer that fails or that the user cancels still answered the
        message (the chat was told); one cut by the daemon stopping stays pending and is
        written again after the restart."""
        try:
            async for piece in stream:
                yield piece
        except BaseException as e:
            if self.daemon.ready or not isinstance(e, asyncio.CancelledError):
                assert self.inbox is not None
                await self.inbox.settle(inbound)
            raise

    async def _measure(self, order: list[str]) -> tuple[int, TokenCounter]:
        """The context window and a token counter of the first model in `order` that loads,
        so a chosen model that cannot load leaves the turn to the router's fallback chain;
        for a remote model, its card's window and an estimate of four characters per token."""
        for i, model in enumerate(order):
            card = self.daemon.catalog.get(model)
            if not card.is_local:
                return card.context_length, lambda t: len(t) // 4 + 1
            try:
                worker = await self.daemon.pool.worker(model)
            except ModelUnavailableError:
                if i == len(order) - 1:
                    raise
                continue
            return worker.model.n_ctx, lambda t, w=worker: len(w.model.tokenize(t, special=False))
        raise ValueError("no model to measure the context with")

    async def _generate(
        self, model: str, decision: Any, messages: list[Message], params: SamplingParams, sender: str | None,
        agent: str, source: str,
    ) -> AsyncIterator[tuple[str, bool]]:
        """Text pieces as they come, or one whole tool call (`is_call`) when the answer
        starts with "{" under the tool grammar. With a router, its fallback chain serves."""
        router = getattr(self.daemon, "router", None)
        if decision is not None and router is not None and router.backends is not None:
            stream = router.serve(decision, messages, params)
        else:
            stream = await self.daemon.pool.stream(model, messages, params)
        head = ""
        decided = not params.grammar
        call: list[str] | None = None
        try:
            async for piece in stream:
                if call is not None:
                    call.append(piece)
                    continue
                if not decided:
                    head += piece
                    if not head.strip():
                        continue
                    decided = True
                    if head.lstrip().startswith("{"):
                        call = [head]
                        continue
                    piece = head
                yield piece, False
        finally:
            if stream.stats is not None:
                self.daemon.record(stream.model or model, stream.stats, source=source, sender=sender, agent=agent)
        if call is not None:
            yield "".join(call), True

    async def run_tool(self, call_text: str, spec: AgentSpec, ctx: tools.ToolContext) -> str:
        parsed = tools.parse_call(call_text)
        if isinstance(parsed, str) or parsed is None:
            return parsed or "error: empty tool call"
        result = await tools.run_call(parsed, spec.tools, ctx)
        log.info("tool call", extra={"agent": spec.name, "tool": parsed.tool, "ok": not result.startswith("error:")})
        return result

    def pick_model(
        self, spec: AgentSpec, text: str, sender: str | None, override: str | None = None
    ) -> tuple[str, Any, str]:
        """The model for this turn, the router's decision when there is a router, and a
        note for the chat when the model the chat (`/model`) or the agent asked for cannot
        serve. The chat's choice wins over the agent's pin."""
        default = self.daemon.config.default_model
        pinned = spec.model.name if spec.model.policy == "pinned" else None
        wanted = override or pinned
        router = getattr(self.daemon, "router", None)
        if router is not None:
            try:
                decision = router.decide(text, agent=spec.name, sender=sender, pinned=pinned, override=override)
            except LookupError as e:
                log.warning("router could not decide, using the default model: %s", e)
            else:
                note = f"({wanted} is not on this box; answering with {decision.model}.)" if wanted and decision.model != wanted else ""
                return decision.model, decision, note
        if wanted is None:
            return default, None, ""
        try:
            card = self.daemon.catalog.get(wanted)
        except CatalogError:
            return default, None, f"({wanted} is not in the catalog; answering with {default}.)"
        if not self.daemon.model_available(card):
            return default, None, f"({wanted} is not on this box; answering with {default}.)"
        return wanted, None, ""

    async def _add_user_turn(self, agent: str, platform: str, chat_id: str, text: str) -> None:
        """Skips the turn when it is already the last one: an answer replayed after a crash."""
        last = await self.sessions.history(platform, chat_id, agent, limit=1)
        if last and last[-1].role == "user" and last[-1].text == text:
            return
        await self.sessions.add_turn(platform, chat_id, agent, "user", text)

    def _summariser(self, spec: AgentSpec):  # noqa: ANN202 - returns agents.sessions.Summariser
        async def summarise(previous: str, turns: list[tuple[str, str]]) -> str:
            model = self.fast_model()
            lines = "\n".join(f"{role}: {text[:1500]}" for role, text in turns)
            prompt = (f"Earlier summary:\n{previous}\n\n" if previous else "") + f"Conversation:\n{lines}"
            messages: list[Message] = [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": prompt}]
            stream = await self.daemon.pool.stream(model, messages, SamplingParams(max_tokens=200, temperature=0.2))
            text = (await stream.text()).strip()
            if stream.stats is not None:
                self.daemon.record(model, stream.stats, source="agents", agent=spec.name)
            return text or previous

        return summarise

    def fast_model(self) -> str:
        for card in self.daemon.catalog.with_role("fast"):
            if self.daemon.model_available(card):
                return card.name
        return self.daemon.config.default_model

    # -- scheduled jobs ------------------------------------------------------------------

    async def ask(self, job: "JobInfo") -> str:
        """The answer a scheduled job delivers: one turn of its agent, in its chat."""
        spec = self.registry.enabled(job.agent) or self.registry.default(self.daemon.config.agents.default_agent)
        pieces = [p async for p in self.turn(spec, job.platform, job.chat_id, job.sender_id, job.task, source="jobs")]
        return "".join(pieces).strip() or "(no answer)"

    # -- chat commands -------------------------------------------------------------

    async def _model_command(self, arg: str, platform: str, chat_id: str) -> str:
        """`/model` shows the chat's choice, `/model NAME` picks one, `/model auto` hands back to the router."""
        catalog = self.daemon.catalog
        usable = [c.name for c in catalog if c.roles != ["draft"] and self.daemon.model_available(c)]
        if not arg:
            current = await self.sessions.chosen_model(platform, chat_id)
            who = f"this chat uses {current}" if current else "the box picks the model for each message"
            return f"Now {who}. Models here: {', '.join(usable) or 'none'}. Pick with /model NAME, or /model auto."
        if arg == "auto":
            await self.sessions.choose_model(platform, chat_id, None)
            return "The box picks the model for each message again."
        if arg not in usable:
            return f"{arg} is not a model this box can answer with; models here: {', '.join(usable) or 'none'}."
        await self.sessions.choose_model(platform, chat_id, arg)
        return f"This chat now uses {arg} for every message (/model auto to let the box choose)."

    async def command(self, name: str, msg: InboundMessage) -> str:
        arg = msg.text.strip().split(maxsplit=1)[1].strip() if len(msg.text.strip().split(maxsplit=1)) > 1 else ""
        spec = await self.agent_for(msg.platform, msg.chat_id)
        p, c = msg.platform, msg.chat_id
        if name == "help":
            return HELP
        if name == "agents":
            lines = [
                f"{'→' if a.spec.name == spec.name else ' '} {a.spec.name}{'' if a.enabled else ' (disabled)'}: {a.spec.description}"
                for a in self.registry.all()
            ]
            return "Agents:\n" + "\n".join(lines) + "\nSwitch with /use NAME."
        if name == "use":
            try:
                entry = self.registry.get(arg)
            except RegistryError as e:
                return str(e)
            if not entry.enabled:
                return f"{arg} is disabled; the owner can enable it with `aibox agents enable {arg}`."
            if not entry.spec.serves(p, c):
                return f"{arg} does not serve this chat."
            await self.sessions.choose_agent(p, c, arg)
            return f"Now talking to {arg}: {entry.spec.description}"
        if name == "model":
            return await self._model_command(arg, p, c)
        if name == "reset":
            await self.sessions.reset(p, c, spec.name)
            return f"Started a fresh conversation with {spec.name}. (The old one is kept; notes stay pinned.)"
        if name == "remember":
            if not arg:
                return "Usage: /remember TEXT"
            note_id = await self.sessions.remember(p, c, spec.name, arg)
            return f"Noted ({note_id}). I'll keep it in mind in this chat."
        if name == "forget":
            if not arg:
                notes = await self.sessions.notes(p, c, spec.name)
                listing = "\n".join(f"{n.id}: {n.text}" for n in notes) or "(no notes)"
                return f"Notes:\n{listing}\nForget one with /forget ID, or all with /forget all."
            if arg == "all":
                return f"Forgot {await self.sessions.forget(p, c, spec.name, None)} notes."
            if not arg.isdigit():
                return "Usage: /forget ID (see /forget for the ids) or /forget all"
            gone = await self.sessions.forget(p, c, spec.name, int(arg))
            return f"Forgot note {arg}." if gone else f"There is no note {arg} here."
        if name == "history":
            limit = int(arg) if arg.isdigit() else 10
            turns = await self.sessions.history(p, c, spec.name, limit=limit)
            if not turns:
                return "No turns yet in this conversation."
            return "\n".join(f"[{t.at:%m-%d %H:%M}] {t.role}: {_clip(t.text)}" for t in turns)
        router = getattr(self.daemon, "router", None)
        if name == "cancel" and not arg and router is not None and await router.jobs.cancel(f"{p}:{c}"):
            return "Stopped the long answer."
        if self.jobs is None:
            return "Scheduled jobs are not running on this box."
        if name in ("remind", "schedule"):
            try:
                created = await self.jobs.create_from_text(arg, p, c, msg.sender_id, spec.name, self.timezone)
            except ScheduleError as e:
                return f"I could not schedule that: {e}"
            return created.confirmation
        if name == "jobs":
            rows = self.jobs.list(p, c)
            if not rows:
                return "No scheduled jobs in this chat."
            return "Jobs:\n" + "\n".join(f"{r['id']}: {r['task']} ({r['schedule']}; next {_when(r['next_run'])})" for r in rows)
        if not arg:
            return "Usage: /cancel ID (see /jobs)"
        return f"Cancelled job {arg}." if self.jobs.cancel(arg, p, c) else f"There is no job {arg} in this chat."


def _when(iso: str | None) -> str:
    return datetime.fromisoformat(iso).strftime("%a %Y-%m-%d %H:%M") if iso else "-"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
