"""The DogSchool of the eventsourcing library's tutorial (part 3,
shared/seeds/004_*), its test() function, and a process application that
follows it: Counters counts how many dogs learned each trick.  Imported by
test_pgext_dogschool.py and test_pgext_follow.py (and by the follower
processes the latter starts), so that event topics resolve in every process:
"pgext_dogschool:Dog.TrickAdded".  Needs pgext_support imported first (it
puts the library on sys.path)."""

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application

try:
    from eventsourcing.application import AggregateNotFoundError as AggregateNotFound
except ImportError:  # eventsourcing < 9.3
    from eventsourcing.application import AggregateNotFound
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.system import ProcessApplication


class DogSchool(Application):
    def register_dog(self, name):
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id, trick):
        dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)

    def get_dog(self, dog_id):
        dog = self.repository.get(dog_id)
        return {"name": dog.name, "tricks": tuple(dog.tricks)}


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name):
        self.name = name
        self.tricks = []

    @event("TrickAdded")
    def add_trick(self, trick):
        self.tricks.append(trick)


def test(app: DogSchool, expect_visible_in_db: bool) -> None:
    """The tutorial's test(), as printed in its part 3."""
    # Check app has zero event notifications.
    assert len(app.notification_log.select(start=1, limit=10)) == 0

    # Create a new aggregate.
    dog_id = app.register_dog("Fido")

    # Execute application commands.
    app.add_trick(dog_id, "roll over")
    app.add_trick(dog_id, "fetch ball")

    # Check recorded state of the aggregate.
    dog_details = app.get_dog(dog_id)
    assert dog_details["name"] == "Fido"
    assert dog_details["tricks"] == ("roll over", "fetch ball")

    # Execute another command.
    app.add_trick(dog_id, "play dead")

    # Check recorded state of the aggregate.
    dog_details = app.get_dog(dog_id)
    assert dog_details["name"] == "Fido"
    assert dog_details["tricks"] == ("roll over", "fetch ball", "play dead")

    # Check values are (or aren't visible) in the database.
    tricks = [b"roll over", b"fetch ball", b"play dead"]
    if expect_visible_in_db:
        expected_num_visible = len(tricks)
    else:
        expected_num_visible = 0

    actual_num_visible = 0
    notifications = app.notification_log.select(start=1, limit=10)
    for notification in notifications:
        for trick in tricks:
            if trick in notification.state:
                actual_num_visible += 1
    assert expected_num_visible == actual_num_visible

    # Get historical state (at version 3, before 'play dead' happened).
    old = app.repository.get(dog_id, version=3)
    assert len(old.tricks) == 2
    assert old.tricks[-1] == "fetch ball"  # last thing to have happened was 'fetch ball'

    # Check app has four event notifications.
    notifications = app.notification_log.select(start=1, limit=10)
    assert len(notifications) == 4

    # Optimistic concurrency control (no branches).
    old.add_trick("future")
    try:
        app.save(old)
    except IntegrityError:
        pass
    else:
        raise Exception("Shouldn't get here")

    # Check app still has only four event notifications.
    notifications = app.notification_log.select(start=1, limit=10)
    assert len(notifications) == 4

    # Create eight more aggregate events.
    dog_id = app.register_dog("Millie")
    app.add_trick(dog_id, "shake hands")
    app.add_trick(dog_id, "fetch ball")
    app.add_trick(dog_id, "sit pretty")

    dog_id = app.register_dog("Scrappy")
    app.add_trick(dog_id, "come")
    app.add_trick(dog_id, "spin")
    app.add_trick(dog_id, "stay")

    # Get the new event notifications from the reader.
    last_id = notifications[-1].id
    notifications = app.notification_log.select(start=last_id + 1, limit=10)
    assert len(notifications) == 8


class Counter(Aggregate):
    """How many dogs learned one trick: one aggregate per trick."""

    @staticmethod
    def create_id(trick: str) -> UUID:
        return uuid5(NAMESPACE_URL, "/tricks/%s" % trick)

    @event("Started")
    def __init__(self, trick: str):
        self.trick = trick
        self.count = 0
        self.seen = []          # the upstream notification ids counted

    @event("Incremented")
    def increment(self, upstream_id: int):
        self.count += 1
        self.seen.append(upstream_id)


class Counters(ProcessApplication):
    """Follows DogSchool: each Dog.TrickAdded increments its trick's
    counter, recorded atomically with the position in DogSchool's log."""

    def policy(self, domain_event, processing_event):
        if isinstance(domain_event, Dog.TrickAdded):
            counter_id = Counter.create_id(domain_event.trick)
            try:
                counter = self.repository.get(counter_id)
            except AggregateNotFound:
                counter = Counter(domain_event.trick)
            counter.increment(processing_event.tracking.notification_id)
            processing_event.collect_events(counter)

    def get_count(self, trick: str) -> int:
        try:
            return self.repository.get(Counter.create_id(trick)).count
        except AggregateNotFound:
            return 0

    def get_seen(self, trick: str) -> list:
        try:
            return list(self.repository.get(Counter.create_id(trick)).seen)
        except AggregateNotFound:
            return []
