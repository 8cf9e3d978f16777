class RuntimeStartError(RuntimeError):
    """A service or embedded dependency could not start; the message says which and how to fix."""


class PortBusyError(RuntimeStartError):
    pass
