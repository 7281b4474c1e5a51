"""Fixtures for the stream: throwaway TLS certificates (a CA and a server cert for 127.0.0.1)."""

from __future__ import annotations

import pytest

from heronsfl.engines.stream.certs import local_certificates
from heronsfl.engines.stream.link import Certificates


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return local_certificates(tmp_path_factory.mktemp("certs"))
