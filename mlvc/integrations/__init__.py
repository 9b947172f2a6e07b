"""Framework callbacks (Hugging Face transformers, PyTorch Lightning) built on mlvc.tracker."""
