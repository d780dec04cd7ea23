"""Quantization helpers: fake-quant simulation of ORT's QDQ numerics and range calibration.

:mod:`.fakequant` holds the primitives (per-channel symmetric int8 weights, per-tensor
asymmetric 8-bit activations, as ORT computes them); :mod:`.sharing` makes each tensor
quantized once, where ORT's graph quantizes it; :mod:`.simulate` wraps a model's Conv/Linear
layers with them and rebuilds saved ones; :mod:`.calibrate` finds activation ranges with the
same algorithms ONNX Runtime uses.
"""
