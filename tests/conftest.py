from __future__ import annotations

import pytest
from tiny_models import TINY


@pytest.fixture(params=list(TINY))
def family(request) -> str:
    return request.param
