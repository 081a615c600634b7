"""Service logs: capture (raw app output -> stamped, rotated files), tail and follow.

See ``capture`` for the no-loss scheme, ``files`` for rotation and seeking, ``follow`` for
readers that survive rotations and app restarts.
"""

from agent.logs.files import LogFiles, tail
from agent.logs.follow import LogReader
from agent.logs.format import LogLine, parse_since
from agent.logs.manager import LogManager

__all__ = ["LogFiles", "LogLine", "LogManager", "LogReader", "parse_since", "tail"]
