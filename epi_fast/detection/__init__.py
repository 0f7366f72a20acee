"""Object detection: the embedded digit-canvas set, a COCO-format folder loader and writer,
mAP, and prunable torchvision detectors with a ResNet backbone (docs/DETECTION.md)."""

from .coco import CocoDetectionDataset, CocoFormatError, coco_splits, load_coco_folder, save_coco_folder
from .data import (CANVAS_DEFAULTS, DIGIT_CLASS_NAMES, DetectionDataset, DetectionSubset, DigitCanvasDataset, detection_collate,
                   digit_detection_splits, make_digit_canvases)
from .metrics import MAP_KEYS, evaluate_map, map_from_predictions
from .models import DETECTOR_NAMES, SSDResNetBackbone, build_detector, head_output_layers, head_outputs, is_detector

__all__ = [
    "DetectionDataset", "DetectionSubset", "DigitCanvasDataset", "make_digit_canvases", "digit_detection_splits",
    "detection_collate", "CANVAS_DEFAULTS", "DIGIT_CLASS_NAMES",
    "CocoDetectionDataset", "CocoFormatError", "load_coco_folder", "save_coco_folder", "coco_splits",
    "evaluate_map", "map_from_predictions", "MAP_KEYS",
    "DETECTOR_NAMES", "SSDResNetBackbone", "build_detector", "head_output_layers", "head_outputs", "is_detector",
]
