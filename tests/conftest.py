"Shared pytest setup: with MINIMIND_REQUIRE_FIXTURES set (CI sets it), missing reference fixtures fail the run instead of skipping parity tests."
import os
import pytest
from minimind.config import fixtures_dir

def pytest_sessionstart(session):
    if os.environ.get('MINIMIND_REQUIRE_FIXTURES') and fixtures_dir(required=False) is None:
        raise pytest.UsageError("MINIMIND_REQUIRE_FIXTURES is set but the reference fixtures were not found "
                                "(expected ../shared/fixtures beside the repository, or set MINIMIND_FIXTURES)")
