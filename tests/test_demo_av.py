"""`mmpgm demo av --smoke` runs the small audio-visual experiment end to end."""

import json

import pytest

from mmpgm.features import missing_av_requirements


@pytest.mark.skipif(
    bool(missing_av_requirements()), reason="needs " + "; ".join(missing_av_requirements())
)
def test_demo_av_smoke(tmp_path, capsys):
    from mmpgm.cli import main

    assert main(["demo", "av", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| mixture |" in out and "gate weight on the video experts" in out
    result = json.loads((tmp_path / "av_demo.json").read_text())
    assert set(result["accuracy"]) == {
        "expert_audio",
        "expert_image",
        "expert_flow",
        "equal_weights",
        "mixture",
    }
    assert result["gate_shrinkage"] >= 0
    assert result["gate_inputs"] == ["novelty", "disagreement"]  # the reliability gate
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    # chance is the majority rate (~0.7 speech frames); the trained image expert must beat it
    assert result["accuracy"]["expert_image"] > 0.75
