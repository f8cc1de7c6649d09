"""The assistant process part: model client, consumer and sweeper, started and stopped together."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import structlog
from nats.aio.client import Client

from ..relay import ensure_stream
from ..runtime.tasks import cancel_and_wait
from ..settings import Settings
from ..store import Store
from .actor import AssistantActor
from .consumer import Consumer
from .model import ModelClient, build_model, warn_if_unconfigured
from .sweeper import Sweeper

log = structlog.get_logger("assistant")


class Assistant:
    """`async with Assistant(nc, store, settings)`: consume scheduled replies until exit."""

    def __init__(self, nc: Client, store: Store, settings: Settings, model: ModelClient | None = None) -> None:
        self.nc, self.store, self.settings = nc, store, settings
        self.model = model or build_model(settings)
        self.actor = AssistantActor(nc, store, self.model, settings)
        js = nc.jetstream()
        self.consumer = Consumer(js, self.actor, settings)
        self.sweeper = Sweeper(js, store, settings)
        self.stack = AsyncExitStack()

    async def __aenter__(self) -> "Assistant":
        warn_if_unconfigured(self.model)
        await ensure_stream(self.nc.jetstream(), self.settings.stream_replicas)
        self.stack.push_async_callback(self.model.aclose)
        tasks = [asyncio.create_task(self.consumer.run(), name="assistant-consumer"),
                 asyncio.create_task(self.sweeper.run(), name="assistant-sweeper")]
        for task in tasks:
            task.add_done_callback(self.report_exit)

        self.stack.push_async_callback(cancel_and_wait, tasks)
        log.info("assistant_started", provider=self.settings.model_provider, model=self.settings.model,
                 in_flight=self.settings.replies_in_flight)
        return self

    @staticmethod
    def report_exit(task: asyncio.Task[None]) -> None:
        """A consumer or sweeper that stops by itself leaves replies undone: say so loudly."""
        if not task.cancelled():
            log.error("assistant_task_stopped", task=task.get_name(), exc_info=task.exception())

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()
