"""What the tests and the benchmarks both use, in one place: neither imports the other.

- :mod:`testbed.pg`: throwaway PostgreSQL clusters (initdb and pg_ctl on a private socket)
  and the servers made of them;
- :mod:`testbed.export_workload`: the export workload (two sequences, a footer, N leads);
- :mod:`testbed.local_quality`: the embedded model's fixed quality cases and their checks;
- :mod:`testbed.extras`: whether an optional extra the benchmarks compare with is installed.

Plain helpers only: no pytest fixtures (those stay in ``tests/``), no measuring (that stays in
``benchmarks/``). Not part of the installed package.
"""
