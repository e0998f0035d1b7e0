"""The agent runner, the responder the gateway streams answers from: message -> agent
turn -> router -> model -> streamed reply, plus the chat commands and the answers
scheduled jobs ask for.

The gateway has already decided the sender may talk to the box (and refused admin
commands to everyone but the owner and admins), and the inbox has stored the message.
Here the chat's agent is chosen (its own pick with /use, else the default), the prompt
is built from its session memory, the model is picked (the chat's /model, the agent's
pin, else the router's decision) and the answer streams back; every model is reached
through the router (aibox/router), never the pool. When the agent has tools, the sampling grammar lets the model answer in
prose or with one JSON tool call; calls run (at most a few per turn) and their results
go back to the model before it answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from agents import tool_calls, tools
from agents.registry import Registry, RegistryError
from agents.schedule import ScheduleError, is_job_request
from agents.sessions import Sessions
from agents.definition import AgentDefinition
from connectors.base import InboundMessage
from connectors.policy import command_name
from agents.long_answers import LongAnswers
from aibox.router import Decision, Router
from aibox.usage import UsageTags
from models.chat_template import Message
from models.pool import BusyError
from models.sampling import SamplingParams

if TYPE_CHECKING:
    from agents.scheduled_jobs import ScheduledJobs
    from agents.tables import JobInfo
    from connectors.inbox import Inbox

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


@dataclass(frozen=True)
class RunnerSettings:
    """The config the runner reads; the daemon hands in a new one on reload."""

    default_model: str
    default_agent: str | None = None
    timezone: str = "UTC"
    max_tokens: int = 1024


class AgentRunner:
    """`long_answers` and `inbox` are absent where answers cannot go to a chat in the
    background (no connectors); `jobs` is set by the daemon once the scheduled jobs,
    which ask this runner for their answers, exist."""

    def __init__(
        self, registry: Registry, sessions: Sessions, router: Router, settings: RunnerSettings, *,
        long_answers: LongAnswers | None = None, inbox: "Inbox | None" = None,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.router = router
        self.settings = settings
        self.long_answers = long_answers
        self.inbox = inbox
        self.jobs: "ScheduledJobs | None" = None

    @property
    def timezone(self) -> str:
        return self.settings.timezone

    def __call__(self, msg: InboundMessage) -> AsyncIterator[str]:
        return self.respond(msg)

    async def respond(self, msg: InboundMessage) -> AsyncIterator[str]:
        command = command_name(msg.text)
        if command in COMMANDS:
            yield await self.command(command, msg)
            return
        definition = await self.agent_for(msg.platform, msg.chat_id)
        if self.jobs is not None and is_job_request(msg.text):
            try:
                created = await self.jobs.create_from_text(msg.text, msg.platform, msg.chat_id, msg.sender_id, definition.name, self.timezone)
            except ScheduleError as e:
                if e.found:  # a schedule that cannot be kept ("at 25 o'clock"): say so, never let the model agree
                    yield f"I could not schedule that: {e}"
                    return
                # no schedule in it after all ("remind me what my cat is called"): an ordinary message
            else:
                yield created.confirmation
                return
        async for piece in self.turn(definition, msg.platform, msg.chat_id, msg.sender_id, msg.text, source=msg.platform, inbound=msg):
            yield piece

    async def agent_for(self, platform: str, chat_id: str) -> AgentDefinition:
        chosen = await self.sessions.chosen_agent(platform, chat_id)
        definition = self.registry.enabled(chosen) if chosen else None
        if definition is not None and definition.serves(platform, chat_id):
            return definition
        return self.registry.default(self.settings.default_agent)

    # -- one turn ------------------------------------------------------------------

    async def turn(
        self, definition: AgentDefinition, platform: str, chat_id: str, sender_id: str | None, text: str, source: str,
        inbound: InboundMessage | None = None,
    ) -> AsyncIterator[str]:
        await self._add_user_turn(definition.name, platform, chat_id, text)
        override = await self.sessions.chosen_model(platform, chat_id)
        model, decision, note = self.pick_model(definition, text, f"{platform}:{sender_id}" if sender_id else None, override)
        if note:
            yield note + "\n\n"
        try:
            window, count = await self.router.measure([model, *(decision.fallbacks if decision is not None else [])])
        except BusyError as e:
            yield f"The box is busy right now; please try again in {e.retry_after:.0f} s."
            return

        now = datetime.now(ZoneInfo(self.timezone))
        extra = f"It is {now:%A %Y-%m-%d %H:%M} ({self.timezone})."
        if definition.tools:
            extra += "\n" + tools.describe(definition.tools)
        messages = await self.sessions.build_context(definition, platform, chat_id, extra, count, window, self._summariser(definition))
        tags = UsageTags(source, f"{platform}:{sender_id}" if sender_id else None, definition.name)
        ctx = tools.ToolContext(platform, chat_id, sender_id, definition.name, self.timezone, notes=self.sessions, jobs=self.jobs)
        # A long answer is sampled without the call grammar (as before the one tool loop):
        # llama.cpp aborts the whole process when a lazy grammar meets some long outputs
        # ("empty grammar stack"), and a call written as text is still caught and run.
        pieces = self.answer(definition, model, decision, messages, tags, ctx, text,
                             grammar=not self._in_background(decision, platform, tags))
        ack = await self._start_long_answer(decision, definition, pieces, platform, chat_id, tags, inbound)
        if ack is not None:
            yield ack
            return
        answer: list[str] = []
        try:
            async for piece in pieces:
                answer.append(piece)
                yield piece
        except BusyError as e:
            yield f"The box is busy right now; please try again in {e.retry_after:.0f} s."
        finally:
            if answer:
                await self.sessions.add_turn(platform, chat_id, definition.name, "assistant", "".join(answer))

    async def answer(
        self, definition: AgentDefinition, model: str, decision: Decision | None, messages: list[Message],
        tags: UsageTags, ctx: tools.ToolContext, text: str, grammar: bool = True,
    ) -> AsyncIterator[str]:
        """The one tool loop every answer path goes through (streamed chat turns, long
        background answers, scheduled jobs): the text shown, never a tool call. A call
        the message plainly asks for runs first; the model may then call tools (the
        grammar offered lazily) up to the per-turn limit; a call it writes in any shape,
        anywhere in its answer, is run or, past the limit, dropped."""
        calls, result = 0, ""
        obvious = tool_calls.obvious_call(text, definition.tools)
        if obvious is not None:
            call_text = json.dumps({"tool": obvious.tool, "arguments": obvious.arguments})
            messages, result = await self._with_result(messages, call_text, definition, ctx)
            calls = tools.MAX_CALLS_PER_TURN  # the result is all it asked for: now words, not more calls
        while True:
            may_call = bool(definition.tools) and calls < tools.MAX_CALLS_PER_TURN
            params = SamplingParams(
                max_tokens=min(definition.model.max_tokens, self.settings.max_tokens),
                temperature=definition.model.temperature,
                grammar=tools.call_grammar(definition.tools) if may_call and grammar else None,
                grammar_trigger=tools.CALL_TRIGGER if may_call and grammar else None,
            )
            splitter = tool_calls.CallSplitter()
            shown = False
            async for piece in self._generate(model, decision, messages, params, tags, splitter):
                shown = True
                yield piece
            if splitter.call is None:
                return
            if not may_call:
                log.warning("a tool call was written where none may run; dropped", extra={"agent": definition.name})
                if not shown:  # the tool's own answer beats none; an error is not an answer
                    ok = result and not result.startswith("error:")
                    yield result if ok else "I could not finish that with the tools I have; please ask again in other words."
                return
            calls += 1
            messages, result = await self._with_result(messages, splitter.call, definition, ctx)

    async def _with_result(
        self, messages: list[Message], call_text: str, definition: AgentDefinition, ctx: tools.ToolContext,
    ) -> tuple[list[Message], str]:
        result = await self.run_tool(call_text, definition, ctx)
        return [*messages, {"role": "assistant", "content": call_text},
                {"role": "user", "content": f"Tool result: {result}\nNow answer the user."}], result

    async def _start_long_answer(
        self, decision: Decision | None, definition: AgentDefinition, pieces: AsyncIterator[str], platform: str,
        chat_id: str, tags: UsageTags, inbound: InboundMessage | None = None,
    ) -> str | None:
        """A long answer to a chat message runs in the background (agents/long_answers.py):
        the reply is a short acknowledgement, a status message is edited as it grows, the
        answer is posted when done, and /cancel stops it. Returns the acknowledgement, or
        None when the turn should stream as usual (short answers, scheduled jobs, no chat
        to post in). The answer comes out of the same tool loop (`pieces`) as a streamed
        one, so a tool call is run there too and never posted as text."""
        long_answers = self.long_answers
        if long_answers is None or not self._in_background(decision, platform, tags):
            return None
        stream: AsyncIterator[str] = pieces

        tracked = inbound is not None and self.inbox is not None
        if tracked:
            self.inbox.hold(inbound)
            stream = self._settle_when_stopped(stream, inbound)

        async def keep(answer: str) -> None:
            await self.sessions.add_turn(platform, chat_id, definition.name, "assistant", answer)
            if tracked:
                await self.inbox.settle(inbound)

        expected = next((c.expected_s for c in decision.candidates if c.model == decision.model), 0.0)
        try:
            await long_answers.start(platform, chat_id, decision.model, stream, expected, on_done=keep)
        except BaseException:
            if tracked:
                self.inbox.unhold(inbound)
            raise
        return "On it: that is a long answer, so I'm writing it in the background and will post it here."

    def _in_background(self, decision: Decision | None, platform: str, tags: UsageTags) -> bool:
        """Whether this turn is a long answer to a chat message, written in the background."""
        return (decision is not None and decision.length_class == "long" and self.long_answers is not None
                and tags.source == platform and self.long_answers.serves(platform))

    async def _settle_when_stopped(self, stream: AsyncIterator[str], inbound: InboundMessage) -> AsyncIterator[str]:
        """A background answer that fails or that the user cancels still answered the
        message (the chat was told); one cut by the daemon stopping stays pending and is
        written again after the restart."""
        try:
            async for piece in stream:
                yield piece
        except BaseException as e:
            assert self.long_answers is not None
            if not self.long_answers.closing or not isinstance(e, asyncio.CancelledError):
                assert self.inbox is not None
                await self.inbox.settle(inbound)
            raise

    async def _generate(
        self, model: str, decision: Decision | None, messages: list[Message], params: SamplingParams, tags: UsageTags,
        splitter: tool_calls.CallSplitter,
    ) -> AsyncIterator[str]:
        """The text to show as it comes; a tool call, wherever it starts, ends the
        stream and is left in `splitter.call`. A routed turn is served with its fallback chain."""
        if decision is not None:
            stream = self.router.serve(decision, messages, params, tags)
        else:
            stream = await self.router.open(model, messages, params, tags)
        try:
            async for piece in stream:
                shown = splitter.feed(piece)
                if shown:
                    yield shown
                if splitter.call is not None:
                    return
        finally:
            stream.cancel()
        rest = splitter.finish()
        if rest:
            yield rest

    async def run_tool(self, call_text: str, definition: AgentDefinition, ctx: tools.ToolContext) -> str:
        parsed = tools.parse_call(call_text)
        if isinstance(parsed, str) or parsed is None:
            return parsed or "error: empty tool call"
        result = await tools.run_call(parsed, definition.tools, ctx)
        log.info("tool call", extra={"agent": definition.name, "tool": parsed.tool, "ok": not result.startswith("error:")})
        return result

    def pick_model(
        self, definition: AgentDefinition, text: str, sender: str | None, override: str | None = None
    ) -> tuple[str, Decision | None, str]:
        """The model for this turn, the router's decision, and a note for the chat when the
        model the chat (`/model`) or the agent asked for cannot serve. The chat's choice
        wins over the agent's pin."""
        default = self.settings.default_model
        pinned = definition.model.name if definition.model.policy == "pinned" else None
        wanted = override or pinned
        try:
            decision = self.router.decide(text, agent=definition.name, sender=sender, pinned=pinned, override=override)
        except LookupError as e:
            log.warning("router could not decide, using the default model: %s", e)
            note = f"({wanted} is not on this box; answering with {default}.)" if wanted and wanted != default else ""
            return default, None, note
        note = f"({wanted} is not on this box; answering with {decision.model}.)" if wanted and decision.model != wanted else ""
        return decision.model, decision, note

    async def _add_user_turn(self, agent: str, platform: str, chat_id: str, text: str) -> None:
        """Skips the turn when it is already the last one: an answer replayed after a crash."""
        last = await self.sessions.history(platform, chat_id, agent, limit=1)
        if last and last[-1].role == "user" and last[-1].text == text:
            return
        await self.sessions.add_turn(platform, chat_id, agent, "user", text)

    def _summariser(self, definition: AgentDefinition):  # noqa: ANN202 - returns agents.sessions.Summariser
        async def summarise(previous: str, turns: list[tuple[str, str]]) -> str:
            model = self.router.fast_model()
            lines = "\n".join(f"{role}: {text[:1500]}" for role, text in turns)
            prompt = (f"Earlier summary:\n{previous}\n\n" if previous else "") + f"Conversation:\n{lines}"
            messages: list[Message] = [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": prompt}]
            stream = await self.router.open(model, messages, SamplingParams(max_tokens=200, temperature=0.2),
                                            UsageTags("agents", agent=definition.name))
            text = (await stream.text()).strip()
            return text or previous

        return summarise

    # -- scheduled jobs ------------------------------------------------------------------

    async def ask(self, job: "JobInfo") -> str:
        """The answer a scheduled job delivers: one turn of its agent, in its chat."""
        definition = self.registry.enabled(job.agent) or self.registry.default(self.settings.default_agent)
        pieces = [p async for p in self.turn(definition, job.platform, job.chat_id, job.sender_id, job.task, source="jobs")]
        return "".join(pieces).strip() or "(no answer)"

    # -- chat commands -------------------------------------------------------------

    async def _model_command(self, arg: str, platform: str, chat_id: str) -> str:
        """`/model` shows the chat's choice, `/model NAME` picks one, `/model auto` hands back to the router."""
        usable = self.router.answering_models()
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
        definition = await self.agent_for(msg.platform, msg.chat_id)
        p, c = msg.platform, msg.chat_id
        if name == "help":
            return HELP
        if name == "agents":
            lines = [
                f"{'→' if a.definition.name == definition.name else ' '} {a.definition.name}{'' if a.enabled else ' (disabled)'}: {a.definition.description}"
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
            if not entry.definition.serves(p, c):
                return f"{arg} does not serve this chat."
            await self.sessions.choose_agent(p, c, arg)
            return f"Now talking to {arg}: {entry.definition.description}"
        if name == "model":
            return await self._model_command(arg, p, c)
        if name == "reset":
            await self.sessions.reset(p, c, definition.name)
            return f"Started a fresh conversation with {definition.name}. (The old one is kept; notes stay pinned.)"
        if name == "remember":
            if not arg:
                return "Usage: /remember TEXT"
            note_id = await self.sessions.remember(p, c, definition.name, arg)
            return f"Noted ({note_id}). I'll keep it in mind in this chat."
        if name == "forget":
            if not arg:
                notes = await self.sessions.notes(p, c, definition.name)
                listing = "\n".join(f"{n.id}: {n.text}" for n in notes) or "(no notes)"
                return f"Notes:\n{listing}\nForget one with /forget ID, or all with /forget all."
            if arg == "all":
                return f"Forgot {await self.sessions.forget(p, c, definition.name, None)} notes."
            if not arg.isdigit():
                return "Usage: /forget ID (see /forget for the ids) or /forget all"
            gone = await self.sessions.forget(p, c, definition.name, int(arg))
            return f"Forgot note {arg}." if gone else f"There is no note {arg} here."
        if name == "history":
            limit = int(arg) if arg.isdigit() else 10
            turns = await self.sessions.history(p, c, definition.name, limit=limit)
            if not turns:
                return "No turns yet in this conversation."
            return "\n".join(f"[{t.at:%m-%d %H:%M}] {t.role}: {_clip(t.text)}" for t in turns)
        if name == "cancel" and not arg and self.long_answers is not None and await self.long_answers.cancel(f"{p}:{c}"):
            return "Stopped the long answer."
        if self.jobs is None:
            return "Scheduled jobs are not running on this box."
        if name in ("remind", "schedule"):
            try:
                created = await self.jobs.create_from_text(arg, p, c, msg.sender_id, definition.name, self.timezone)
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
