"""The Flower fixtures, for tests that extend heronsfl from outside the package."""

from tests.engines.flower.conftest import serve  # noqa: F401  (a fixture)
