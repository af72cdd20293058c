"""xdprx: AF_XDP fast-path receiver for UDP multicast with zero-copy fan-out."""
from .errors import ConfigError, PermissionProblem, XdprxError
from .groups import Group
from .batch import Batch, Packet
from .consumer import Consumer, Subscriber, run_many
from .receiver import Receiver
from .sender import Sender

__all__ = ["Receiver", "Sender", "Consumer", "Subscriber", "run_many", "Batch", "Packet", "Group", "XdprxError", "ConfigError",
           "PermissionProblem"]
__version__ = "0.1.0"
