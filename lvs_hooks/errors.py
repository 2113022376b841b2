"""One error type per failure an operator can act on.

The core layers raise these without knowing how they are shown; the CLI prints the one-line
`format_message()` on stderr and exits with `exit_code` (`--debug` adds the traceback). Bugs are
not wrapped and still crash loudly.
"""


class LvsHooksError(Exception):
    """Base of every error an operator can act on."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        return self.message


class ConfigError(LvsHooksError):
    """The configuration file is missing, unreadable or has a bad key or value."""

    exit_code = 2


class SnapshotError(LvsHooksError):
    """No usable snapshot: missing, truncated, corrupt or of an unknown format."""

    exit_code = 3


class KernelError(LvsHooksError):
    """IPVS is not available or refused a request (netlink, /proc, sysctl)."""

    exit_code = 4


class ReadAbandoned(KernelError):
    """A read of the connection table stopped past the lines its caller could afford: the table
    grew during the read (the kernel serves it in quadratic time, design.md 2.4)."""


class SyncDaemonError(KernelError):
    """A sync daemon could not be found, started or stopped as needed."""


class ReseedIncomplete(LvsHooksError):
    """Templates were planned but could not be verified in the kernel table."""

    exit_code = 5


class UsageError(LvsHooksError):
    """A command was called with arguments it cannot act on (e.g. a wrong keepalived argument)."""

    exit_code = 2


class TransitionIncomplete(LvsHooksError):
    """A keepalived transition ran but one or more of its steps failed (the log and
    `lvs-hooks history` name them)."""

    exit_code = 6


class LockTimeout(LvsHooksError):
    """Another transition held the transition lock longer than this event could wait."""

    exit_code = 7


class FirewallError(LvsHooksError):
    """The firewall tool (iptables-restore, nft) is missing or refused a batch of loop-protection
    rules; the batch is atomic, so the rules in the kernel are the ones from before."""

    exit_code = 8


class PeerMacUnknown(FirewallError):
    """A rule needs a peer director's MAC address and it is neither configured nor learned."""


class RulesDrift(LvsHooksError):
    """The loop-protection rules in the kernel differ from what the director's role needs."""

    exit_code = 9


class KeepalivedConfError(LvsHooksError):
    """keepalived.conf (or a file it includes) is missing, unreadable or malformed: unmatched
    braces or quotes, an include loop. The message names the file and the line."""

    exit_code = 2


class ControlError(LvsHooksError):
    """The control channel between directors cannot be used: its key file is missing, unreadable,
    too short or readable by others, or a setting it needs (control.key_file, sync.interface,
    the group, the port) is absent or unusable. The message names the file or the setting."""

    exit_code = 2


class HandoverFailed(LvsHooksError):
    """A planned handover did not happen: no peer confirmed the push, or keepalived kept this
    director master. Nothing was given up unless the message says so."""

    exit_code = 10


class UntrustedPath(LvsHooksError):
    """The config file, the key file, the state or run directory, or a directory above one of
    them, may be changed by someone other than root (its owner or its mode): nothing was done.
    The message names the path and what is wrong (design.md section 6.3)."""

    exit_code = 11


class AgentError(LvsHooksError):
    """The agent answered a command run by hand with something that is not an answer (an
    agent of another version: restart it, or ask the kernel, e.g. `explain --from-kernel`)."""

    exit_code = 12
