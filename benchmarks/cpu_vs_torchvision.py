"""Full CPU benchmark vs torchvision; writes benchmarks/results/cpu.json and prints the table.

Same as `roiops bench --json benchmarks/results/cpu.json`; kept here so that the
benchmark definitions (roiops/bench.py) and recorded results sit side by side.
"""

import pathlib
import sys

from roiops import cli

if __name__ == "__main__":
    results = pathlib.Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    sys.exit(cli.main(["bench", "--json", str(results / "cpu.json"), *sys.argv[1:]]))
