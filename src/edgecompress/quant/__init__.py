"""Quantization helpers: fake-quant simulation of ORT's QDQ numerics and range calibration.

:mod:`.simulate` wraps Conv/Linear layers so a torch model computes what an INT8 QDQ graph
computes (per-channel symmetric int8 weights, per-tensor asymmetric 8-bit activations);
:mod:`.calibrate` finds activation ranges with the same algorithms ONNX Runtime uses.
"""
