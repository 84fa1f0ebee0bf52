"""Grouped weight quantization: numpy reference quantizers (Q8_0, Q4_0) and the xllm-quant tool.

    from quant.reference import quantize, dequantize, quantize_q8_0, BLOCK_Q8_0
"""
