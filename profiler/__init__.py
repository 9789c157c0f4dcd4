"""The profiler: measure each model's requirements across batch sizes and concurrency."""
