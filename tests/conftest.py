import os
import shutil

import pytest

from xdprx.testing import VethPair

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, XDP, AF_XDP)")


@pytest.fixture
def pair():
    """A fresh veth pair between two xrx-* namespaces, deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not shutil.which("nsenter"):
        pytest.skip("needs nsenter (util-linux)")
    with VethPair() as p:
        yield p


@pytest.fixture(params=["native", "skb"])
def mode(request):
    return request.param
