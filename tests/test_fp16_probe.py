"""bench.gpu.fp16_probe, at --smoke sizes on the CPU: every configuration and the GradScaler loop
run through the trainer's own pieces and record finite gradients; a configuration that fails is
recorded with its error, not the end of the probe."""
from __future__ import annotations

import json

from bench.gpu import fp16_probe


def test_the_probe_records_each_configuration_and_the_scaler_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(fp16_probe, "CONFIGS", fp16_probe.CONFIGS[:3])  # the compiled one: its cold compile
    assert fp16_probe.main(["--out", str(tmp_path), "--smoke"]) == 0
    record = json.loads((tmp_path / "fp16_probe.json").read_text())
    assert set(record["results"]) == {name for name, *_ in fp16_probe.CONFIGS}
    for result in record["results"].values():
        assert "error" not in result and result["nonfinite_params"] == 0 and result["params"] > 0
        assert result["grad_norm_finite_part"] > 0 and result["largest_module_outputs"]
    loop = record["scaler_loop"]
    assert len(loop["updates"]) == 5 and loop["skipped"] == 0


def test_a_failing_configuration_is_its_result(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")
    monkeypatch.setattr(fp16_probe, "CONFIGS", fp16_probe.CONFIGS[:1])
    monkeypatch.setattr(fp16_probe, "probe", broken)
    assert fp16_probe.main(["--out", str(tmp_path), "--smoke"]) == 0
    record = json.loads((tmp_path / "fp16_probe.json").read_text())
    assert record["results"]["eager-fp16-cl"] == {"error": "RuntimeError: no such kernel"}
