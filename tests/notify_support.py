"""Moved to tests/support/receiver.py (issue 21 item 6); the names stay importable for older tests."""

from tests.support.receiver import Received, Receiver, verify_signature
from tests.support.waiting import wait_for as wait_until

__all__ = ["Received", "Receiver", "verify_signature", "wait_until"]
