"""Object detection: prunable torchvision detectors with a ResNet backbone (`models`)."""

from .models import DETECTOR_NAMES, SSDResNetBackbone, build_detector, head_output_layers, head_outputs, is_detector

__all__ = ["DETECTOR_NAMES", "SSDResNetBackbone", "build_detector", "head_output_layers", "head_outputs", "is_detector"]
