"""Quantized stories260K against its F32 original: greedy text, KL and top-1 agreement,
through xllm-quant and xllm-perplexity."""
import json
from pathlib import Path

import pytest

from conftest import KNOWN_PROMPT, KNOWN_TEXT
from quant.cli import main as quant_main
from xllm import LLM, SamplingParams
from xllm.engine import DEFAULT_MODEL
from xllm.perplexity import main as perplexity_main

STORY = Path(__file__).parent / "data" / "story.txt"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    out = {}
    for bits in (8, 4):
        path = d / f"stories-q{bits}.gguf"
        # stories260K's FFN width (172) is not a multiple of 32: ffn_down stays F32
        assert quant_main(["--weight", DEFAULT_MODEL, "-o", str(path), "-b", str(bits), "--fallback", "f32"]) == 0
        out[bits] = path
    return out


def score(capsys, model):
    capsys.readouterr()
    assert perplexity_main(["--weight", str(model), "--reference", DEFAULT_MODEL, "--file", str(STORY), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_q8_0_greedy_output_is_the_known_text(quantized):
    llm = LLM(quantized[8], threads=2)
    out = llm.generate(KNOWN_PROMPT, SamplingParams(max_tokens=60, temperature=0))[0]
    assert KNOWN_PROMPT + out.text == KNOWN_TEXT


def test_q8_0_agrees_with_f32(quantized, capsys):
    r = score(capsys, quantized[8])
    print(f"Q8_0 vs F32 over {r['tokens']} tokens: top-1 {r['top1_agreement']:.2%}, KL {r['mean_kl']:.6f}")
    assert r["tokens"] > 300
    assert r["top1_agreement"] >= 0.98
    assert r["mean_kl"] < 0.005


def test_q4_0_stays_close(quantized, capsys):
    r = score(capsys, quantized[4])
    print(f"Q4_0 vs F32 over {r['tokens']} tokens: top-1 {r['top1_agreement']:.2%}, KL {r['mean_kl']:.6f}")
    assert r["top1_agreement"] >= 0.8 and r["mean_kl"] < 0.2


def test_reference_against_itself(capsys):
    r = score(capsys, DEFAULT_MODEL)
    assert r["top1_agreement"] == 1.0 and r["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    assert 1.0 < r["perplexity"] < 10.0


@pytest.mark.parametrize("args,needle", [
    (["--file", "/nonexistent.txt"], "/nonexistent.txt"),
    (["--window", "0"], "--window"),
])
def test_perplexity_bad_input(capsys, args, needle):
    base = ["--weight", DEFAULT_MODEL, "--file", str(STORY)]
    assert perplexity_main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_perplexity_rejects_binary_text(tmp_path, capsys):
    f = tmp_path / "bin.txt"
    f.write_bytes(b"ok\xff\xfe")
    assert perplexity_main(["--weight", DEFAULT_MODEL, "--file", str(f)]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err
