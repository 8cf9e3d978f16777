class KafkaUnavailable(RuntimeError):
    """The broker could not be reached or did not acknowledge in time."""


class DeliveryFailed(RuntimeError):
    """The broker answered with an error for a produced record."""


class Fenced(RuntimeError):
    """A later owner of these partitions has claimed them: this consumer must not write them."""

    def __init__(self, partitions: set[tuple[str, int]]) -> None:
        super().__init__(f"fenced off partitions {sorted(partitions)}")
        self.partitions = partitions
