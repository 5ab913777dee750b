"""The benchmark scripts (``python benchmarks/<script>.py --help``), importable as ``benchmarks.<script>``."""
