"""
docs/protocol.md is the wire contract: its tables name exactly the message
types and error codes the code knows.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from chatroulette import messages

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def table_keys(heading: str) -> set[str]:
    """The backquoted names in the first column of the table under C{heading}."""
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


class ProtocolDocTests(SynchronousTestCase):
    def test_client_messages(self) -> None:
        """The client-to-server table lists exactly the types the parser accepts."""
        parser = inspect.getsource(messages.parse_client_frame)
        accepted = set(re.findall(r'kind == "([a-z_]+)"', parser))
        self.assertEqual(table_keys("Client to server"), accepted)

    def test_server_events(self) -> None:
        """The server-to-client table lists exactly the events the encoders write."""
        source = inspect.getsource(messages)
        encoded = set(re.findall(r'[{"]"type"[:,] ?"([a-z_]+)"', source))
        encoded |= set(re.findall(r"b'\{\"type\":\"([a-z_]+)\"", source))
        self.assertEqual(table_keys("Server to client"), encoded)

    def test_error_codes(self) -> None:
        """The errors table lists exactly the error codes the server sends."""
        self.assertEqual(table_keys("Errors"), set(messages.ERROR_CODES))
