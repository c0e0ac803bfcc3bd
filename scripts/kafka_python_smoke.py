"""Real-client smoke test with kafka-python (pure Python, its own protocol implementation).

Usage: python3 scripts/kafka_python_smoke.py HOST:PORT

Creates, lists and deletes topics with the admin client; round-trips keyed messages with
headers through a producer (acks=all, gzip) and a consumer assigned to the partitions; checks
offsets for times; consumes the topic again as a consumer group (subscribe, commit) and checks
the committed offsets, the group's description and that a new member resumes after them. Prints 'N passed, M failed' and exits non-zero
on any failure.
"""

import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

passed = 0
failed = 0


def check(name, expected, actual):
    global passed, failed
    if expected == actual:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: expected {expected!r}, got {actual!r}")


def main(bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="corelog-smoke", request_timeout_ms=20000)
    admin.create_topics([NewTopic("py-events", num_partitions=3, replication_factor=1),
                         NewTopic("py-scratch", num_partitions=1, replication_factor=1)])
    check("topics listed", True, {"py-events", "py-scratch"} <= set(admin.list_topics()))
    try:
        admin.create_topics([NewTopic("py-events", num_partitions=3, replication_factor=1)])
        check("duplicate create refused", "error", "no error")
    except TopicAlreadyExistsError:
        check("duplicate create refused", "error", "error")

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip", linger_ms=5)
    start_ms = int(time.time() * 1000)
    futures = [producer.send("py-events", key=f"k{i}".encode(), value=f"v{i}".encode(),
                             headers=[("n", str(i).encode())], partition=i % 3) for i in range(300)]
    producer.flush(30)
    metadata = [f.get(timeout=30) for f in futures]
    check("acknowledged", 300, len(metadata))
    check("offsets per partition", [100, 100, 100],
          [1 + max(m.offset for m in metadata if m.partition == p) for p in range(3)])
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000, enable_auto_commit=False)
    partitions = [TopicPartition("py-events", p) for p in range(3)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    received = {}
    deadline = time.time() + 30
    while len(received) < 300 and time.time() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                received[record.key.decode()] = (record.value.decode(), dict(record.headers).get("n"))
    check("all received", 300, len(received))
    check("key, value and header", ("v42", b"42"), received.get("k42"))
    end = consumer.end_offsets(partitions)
    check("end offsets", [100, 100, 100], [end[tp] for tp in partitions])
    found = consumer.offsets_for_times({partitions[0]: start_ms - 60_000})
    check("offsets for times", 0, found[partitions[0]].offset if found[partitions[0]] else None)
    consumer.close()

    group = KafkaConsumer("py-events", bootstrap_servers=bootstrap, group_id="py-group",
                          auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=5000)
    seen = 0
    deadline = time.time() + 60
    while seen < 300 and time.time() < deadline:
        for records in group.poll(timeout_ms=1000).values():
            seen += len(records)
    group.commit()
    check("group consumed", 300, seen)
    check("group assignment", {0, 1, 2}, {tp.partition for tp in group.assignment()})
    check("committed offsets", [100, 100, 100], [group.committed(tp) for tp in partitions])
    group.close()
    described = admin.describe_groups(["py-group"])["py-group"]
    check("group described", ("Empty", "consumer", None), (described["group_state"], described["protocol_type"],
                                                           described["error"]))
    listed = {g["group_id"]: g["protocol_type"] for g in admin.list_groups()}
    check("group listed", "consumer", listed.get("py-group"))
    resumed = KafkaConsumer("py-events", bootstrap_servers=bootstrap, group_id="py-group",
                            auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    again = sum(len(r) for _ in range(3) for r in resumed.poll(timeout_ms=1000).values())
    check("a new member resumes after the commits", 0, again)
    resumed.close()

    admin.delete_topics(["py-scratch"])
    time.sleep(0.5)
    check("deleted topic gone", False, "py-scratch" in set(admin.list_topics()))
    admin.close()


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as error:  # any client exception is a failure of the smoke test
        failed += 1
        print(f"FAIL: {type(error).__name__}: {error}")
    print(f"kafka-python: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
