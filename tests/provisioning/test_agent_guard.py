"""`--presence granted` is for the bench: unreachable on a production image."""

from __future__ import annotations

from provisioning import agent


def test_bench_presence_refused_on_a_production_image(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "production-image"
    marker.write_text("")
    monkeypatch.setattr(agent, "PRODUCTION_MARKER", marker)
    for mode in ("granted", "denied"):
        assert agent.cli_main(["--port", "/nonexistent", "--presence", mode]) == 2
        assert "bench only" in capsys.readouterr().err
    assert agent.cli_main(["--port", "/nonexistent", "--recorder-unit", ""]) == 2
    assert "--recorder-unit ''" in capsys.readouterr().err


def test_the_image_installs_the_marker():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    rel = agent.PRODUCTION_MARKER.relative_to("/")
    assert (root / "firmware" / "rootfs" / rel).is_file()
