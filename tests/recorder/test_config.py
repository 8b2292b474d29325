from __future__ import annotations

import pytest

from recorder import cli, config
from recorder.errors import ConfigError


def test_defaults_are_valid():
    cfg = config.loads("")
    assert cfg.audio.rate == 8000 and cfg.timing.hangup_s == 0.5 and cfg.pause.max_s == 180


def test_every_problem_at_once_with_did_you_mean():
    with pytest.raises(ConfigError) as ei:
        config.loads('[audio]\nrat = 8000\nlines = 7\n[timming]\nx = 1\n'
                     '[recording]\ncodec = "flak"\n[pins]\nhook = [1, "a"]\n')
    text = str(ei.value)
    assert "unknown key 'rat' (did you mean 'rate'?)" in text
    assert "audio.lines = 7 is out of range 1..4" in text
    assert "unknown section [timming] (did you mean 'timing'?)" in text
    assert "'flak' is not one of" in text and "did you mean 'flac'" in text
    assert "pins.hook[1]: expected integer" in text
    assert len(ei.value.problems) == 5


@pytest.mark.parametrize("text,expect", [
    ("[audio]\nrate = 44100", "not one of 8000, 16000"),
    ("[pins]\nhook = [17, 17]\nring = [24, 25]\n[audio]\nlines = 2", "already used"),
    ("[audio]\nlines = 4\n[pins]\nhook = [1, 2]", "pins.hook lists 2 pin(s)"),
    ("[[line]]\nindex = 3", "index 3 is not below audio.lines = 2"),
    ("[timing]\ndebounce_s = 0.1\nhangup_s = 0.1", "debounce_s must be shorter"),
    ("[pause]\nbutton_lines = [5]", "pause.button_lines has line 5"),
    ("[audio\nrate=1", "not valid TOML"),
    ("[device]\nhardware = true", "expected string"),
])
def test_cross_checks(text, expect):
    with pytest.raises(ConfigError, match=None) as ei:
        config.loads(text)
    assert expect in str(ei.value)


def test_secrets_are_masked_when_shown():
    cfg = config.loads('[sync]\npassword = "hunter2"')
    shown = config.dumps(cfg)
    assert "hunter2" not in shown and 'password = "********"' in shown
    assert config.dumps(cfg, mask_secrets=False).count("hunter2") == 1


def test_config_check_and_show_commands(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text("[audio]\nlines = 1\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nlinse = 1\n")
    assert cli.main(["config", "check", str(good)]) == 0
    assert cli.main(["config", "check", str(bad)]) == 1
    assert "did you mean 'lines'" in capsys.readouterr().err
    assert cli.main(["config", "show", "--config", str(good)]) == 0
    assert "lines = 1" in capsys.readouterr().out
    assert cli.main(["config", "check", str(tmp_path / "missing.toml")]) == 1


def test_round_trip_of_shown_config():
    cfg = config.loads('[[line]]\nindex = 1\nrecord = false\n[audio]\nlines = 2')
    again = config.loads(config.dumps(cfg, mask_secrets=False))
    assert again == cfg
    assert again.line_config(1).record is False and again.line_config(0).record is True


def test_version_and_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert "linetap" in capsys.readouterr().out


def test_configuration_doc_is_current():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert config.reference_markdown().strip() in doc
