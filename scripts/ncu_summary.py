"""Sums the kernel times of an Nsight Compute CSV log (`ncu --metrics gpu__time_duration.sum
--csv --log-file FILE ...`) by kernel name and prints the largest: where a GPU run's time goes.

Usage: python3 scripts/ncu_summary.py FILE [--top 25]
"""

import argparse
import csv
import collections


def main():
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    with open(a.file, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not CSV rows
    total = collections.Counter()
    count = collections.Counter()
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "nsecond": 1e-6, "ms": 1.0,
                 "msecond": 1.0}.get(row.get("Metric Unit", "ns"), 1e-6)
        name = row["Kernel Name"][:90]
        total[name] += float(row["Metric Value"].replace(",", "")) * scale
        count[name] += 1
    all_ms = sum(total.values())
    print(f"{sum(count.values())} kernels, {all_ms:.1f} ms in all")
    for name, ms in total.most_common(a.top):
        print(f"{ms:10.2f} ms {100 * ms / all_ms:5.1f}% {count[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
