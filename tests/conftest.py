"""Shared pytest fixtures. Each block belongs to one concern; add new blocks below the last one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# ======================================================================================================
# brokers: one real Apache Kafka and one tansu per test session, every skuvid topic created.
# Tests that use `kafka_broker` carry the `kafka` marker (select or skip them with -m kafka / -m "not kafka").
# ======================================================================================================
from schemas.topics import ALL_TOPICS
from skuvid.brokers import KafkaBroker, TansuBroker, create_topics

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: needs the real Apache Kafka broker (JDK 17 + Maven, ~5 s to start)")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka 4.x (KRaft, one node) on a free port, with ALL_TOPICS; stopped after the session."""
    with KafkaBroker.start(tmp_path_factory.mktemp("kafka"), repo_root=REPO_ROOT) as broker:
        create_topics(broker.bootstrap, ALL_TOPICS)
        yield broker


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """tansu (memory storage) on a free port, with ALL_TOPICS; no idempotent producer; stopped after the session."""
    with TansuBroker.start(tmp_path_factory.mktemp("tansu")) as broker:
        create_topics(broker.bootstrap, ALL_TOPICS)
        yield broker


# ======================================================================================================
# end of block "brokers"
# ======================================================================================================


# ======================================================================================================
# tiny model: the random-weight Wan2.2 pipeline, built once per session from the real classes.
# ======================================================================================================


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's ops are microseconds long: on this shared 2-core machine OpenMP thread hand-offs
    cost more than the math (measured 2-3 s vs 0.1 s per clip under load), so such modules run on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inference.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "wan")
