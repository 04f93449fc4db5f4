"""Markdown table of a ``before_after.sh`` run: the median over rounds of each median_s."""

import json
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    times = defaultdict(list)
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            tree = "after" if row["tree"] in ("after", "main") else "before"
            for impl, seconds in row["median_s"].items():
                times[(row["benchmark"], row["config"]["name"], impl, tree)].append(seconds)
    print("| benchmark | config | impl | before (s) | after (s) | after/before |")
    print("|---|---|---|---|---|---|")
    for bench, config, impl in sorted({k[:3] for k in times}):
        a, b = times.get((bench, config, impl, "before")), times.get((bench, config, impl, "after"))
        if a and b:
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {bench} | {config} | {impl} | {ma:.4g} | {mb:.4g} | {mb / ma:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
