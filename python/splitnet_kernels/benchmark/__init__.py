"""The benchmarks of workloads W1-W10 (docs/design.md), shipped with the package: workloads.py
defines them (sizes, data, metrics) for both `splitnet-kernels bench` (driver.py) and the
pytest-benchmark suites in the repository's bench/ folder; timing.py holds the clock and the
floors, report.py the tables. Importing this package is light: `from splitnet_kernels.benchmark
import driver` when a run is wanted."""
