"""``GET /v1/experiments/{id}``: the experiment report as JSON, from the agent's changelog.

The same figures as ``skuvid experiment report EXP_ID --json``: the declaration comes from
``Settings.experiments_file``, the totals from the experiment agent's changelog topic (read to its end
offsets on each call, then cached for ``ttl_s``: the statistics move slowly and the read is linear in the
number of cells).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from api.errors import ApiProblem
from skuvid.settings import Settings


class ExperimentReports:
    def __init__(self, settings: Settings, *, ttl_s: float = 60.0) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    async def report(self, experiment_id: str) -> dict[str, Any]:
        """The report of ``experiment_id``; ``ApiProblem`` 404 for an undeclared experiment or one with no data
        yet, 503 when the brokers do not answer."""
        cached = self._cache.get(experiment_id)
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        async with self._lock:
            body = await self._compute(experiment_id)
        self._cache[experiment_id] = (time.monotonic(), body)
        return body

    async def _compute(self, experiment_id: str) -> dict[str, Any]:
        from aiokafka.errors import KafkaError
        from pydantic import ValidationError

        from experiments.changelog import changelog_topic, read_totals
        from experiments.report import analyse, as_dict
        from schemas.engagement import ExperimentCatalog
        from skuvid.kafka_clients import aiokafka_options

        try:
            catalog = ExperimentCatalog.model_validate_json(self.settings.experiments_file.read_bytes())
            experiment = catalog.get(experiment_id)
        except KeyError:
            raise ApiProblem(404, "unknown_experiment", f"no experiment {experiment_id} is declared") from None
        except (OSError, ValidationError) as exc:
            raise ApiProblem(503, "experiments_unavailable", f"cannot read the experiment declarations: {exc}") from None
        topic = changelog_topic(self.settings.experiments_group)
        try:
            totals = await read_totals(aiokafka_options(self.settings), topic, timeout_s=20.0)
        except LookupError:
            raise ApiProblem(404, "no_data", f"no totals yet: the experiment agent has not written {topic}") from None
        except (KafkaError, TimeoutError, OSError) as exc:
            raise ApiProblem(503, "broker_unavailable", f"cannot read {topic}: {exc}") from None
        return as_dict(analyse(experiment, totals, f"changelog {topic}"))
