"""
pytest fixtures for in-process netecho services (opt-in, on pytest-twisted):

    pytest -p netecho.pytest_plugin

Fixtures: C{netecho_tcp}, C{netecho_udp}, C{netecho_unix}, C{netecho_random},
each a L{netecho.testing.RunningService} (C{.host}, C{.port}, C{.path},
C{.address}, C{.stats}), stopped after the test once its connections closed.
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
