"""
pytest fixtures for in-process netecho services (opt-in, on pytest-twisted):

    pytest -p netecho.pytest_plugin

Fixtures: C{netecho_tcp}, C{netecho_udp}, C{netecho_unix}, C{netecho_random},
each a L{netecho.testing.RunningService} (C{.host}, C{.port}, C{.path},
C{.address}, C{.stats}, C{.faults}), stopped after the test once its
connections closed; and C{netecho_faulty_tcp}, C{netecho_faulty_udp},
C{netecho_faulty_unix}: factories, C{netecho_faulty_udp("drop=0.2")} starts
one more such service with those faults.
Tests that talk to them must let the reactor run (C{pytest_twisted.ensureDeferred}
or C{inlineCallbacks}, or a blocking client through C{deferToThread}).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from netecho import testing


def _fixture(kind: str):
    @pytest.fixture
    def service():
        running = testing.start(kind)
        yield running
        pytest_twisted.blockon(running.stop())

    service.__name__ = f"netecho_{kind}"
    service.__doc__ = f"A netecho {kind} service on loopback for one test."
    return service


netecho_tcp = _fixture("tcp")
netecho_udp = _fixture("udp")
netecho_unix = _fixture("unix")
netecho_random = _fixture("random")


def _factory(kind: str):
    @pytest.fixture
    def factory():
        started = []

        def make(faults: str = "", stop_word: str = "STOP"):
            running = testing.start(kind, stop_word=stop_word, faults=faults)
            started.append(running)
            return running

        yield make
        for running in started:
            pytest_twisted.blockon(running.stop())

    factory.__name__ = f"netecho_faulty_{kind}"
    factory.__doc__ = f"Start netecho {kind} services with faults: netecho_faulty_{kind}('delay=50ms')."
    return factory


netecho_faulty_tcp = _factory("tcp")
netecho_faulty_udp = _factory("udp")
netecho_faulty_unix = _factory("unix")
