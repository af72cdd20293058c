"""xdprx: AF_XDP fast-path receiver for UDP multicast with zero-copy fan-out."""
from .errors import ConfigError, PermissionProblem, XdprxError
from .groups import Group
from .receiver import Batch, Packet, Receiver

__all__ = ["Receiver", "Batch", "Packet", "Group", "XdprxError", "ConfigError",
           "PermissionProblem"]
__version__ = "0.1.0"
