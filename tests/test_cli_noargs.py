"""`fbp` with no arguments prints the top-level help (what `fbp --help` prints) on stdout and
exits with status 0; a bad top-level option is still one error line and status 2."""

import os
import subprocess
import sys

import pytest

from fbp.cli import main

COMMANDS = ("check", "train", "explain", "bench")


def help_text(capsys) -> str:
    """What `fbp --help` prints (argparse exits with status 0 after it)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_no_arguments_print_the_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # one width for both texts
    expected = help_text(capsys)
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out == expected and err == ""
    assert out.startswith("usage: fbp")
    for command in COMMANDS:
        assert command in out


def test_the_console_script_without_arguments(capsys, monkeypatch):
    """The `fbp` script calls main() with no argv: it reads sys.argv."""
    monkeypatch.setenv("COLUMNS", "100")
    expected = help_text(capsys)
    monkeypatch.setattr(sys, "argv", ["fbp"])
    assert main() == 0
    assert capsys.readouterr().out == expected


def test_no_arguments_exit_status_0_in_a_process():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "fbp.cli"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fbp") and done.stderr == ""
    for command in COMMANDS:
        assert command in done.stdout


def test_a_bad_top_level_option_is_still_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--bogus"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == "fbp: error: the following arguments are required: command"
