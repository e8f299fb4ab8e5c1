"""qrnn-deploy: Quasi-Recurrent Neural Networks from PyTorch training to streaming inference."""

__version__ = "0.1.0"
