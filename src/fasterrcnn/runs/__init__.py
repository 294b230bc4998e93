"""Whole runs from Python, the same as the ``fasterrcnn`` commands (which call these and print).

    from fasterrcnn.runs import train, evaluate, predict, compress, export, benchmark
    run = train("VOCdevkit/VOC2007", "runs/voc07", preset="vgg16", epochs=16, backbone_weights="vgg16.pth")
    result = evaluate("VOCdevkit/VOC2007", weights=run.best or run.last, output="runs/voc07/eval")
    print(result.metrics["mAP"])
    found = predict(run.last, ["photos/"], output="predictions")

A run folder is locked while it trains and never mixes two runs (``runs.folder``); outputs are
claimed before the work starts and never written over an input or an existing file unless told to.
"""

from fasterrcnn.runs.benchmark import BenchmarkRow, benchmark, benchmark_table
from fasterrcnn.runs.calibration import CalibrationResult, calibrate
from fasterrcnn.runs.demo_run import DemoResult, demo
from fasterrcnn.runs.exporting import ExportResult, export
from fasterrcnn.runs.folder import OutputFolder, RunFolder
from fasterrcnn.runs.inference import EvalResult, compress, evaluate
from fasterrcnn.runs.prediction import PredictResult, VideoResult, predict
from fasterrcnn.runs.training import RESUMABLE_CHANGES, TrainingData, TrainResult, ValidationData, train

__all__ = [
    "RESUMABLE_CHANGES",
    "BenchmarkRow",
    "CalibrationResult",
    "DemoResult",
    "EvalResult",
    "ExportResult",
    "OutputFolder",
    "PredictResult",
    "RunFolder",
    "TrainResult",
    "TrainingData",
    "ValidationData",
    "VideoResult",
    "benchmark",
    "benchmark_table",
    "calibrate",
    "compress",
    "demo",
    "evaluate",
    "export",
    "predict",
    "train",
]
