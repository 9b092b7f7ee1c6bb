"""Parses a Prometheus text file with the real client library's parser and prints one
sample a line: `name{k=v,...} value`, then `type name gauge|counter|...` per family."""
import sys

from prometheus_client.parser import text_string_to_metric_families

with open(sys.argv[1]) as f:
    text = f.read()
for family in text_string_to_metric_families(text):
    print(f"type {family.name} {family.type}")
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value:g}")
