class KafkaUnavailable(RuntimeError):
    """The broker could not be reached or did not acknowledge in time."""


class DeliveryFailed(RuntimeError):
    """The broker answered with an error for a produced record."""
