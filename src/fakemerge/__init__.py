"""fakemerge: composable deepfake detection (specialists -> training-free merge -> detector)."""

__version__ = "0.1.0"
