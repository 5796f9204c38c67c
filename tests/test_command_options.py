"""sample.py, export.py and report.py: a bad option of their own stops with one line, no usage text."""

import importlib

import pytest

BAD_OPTIONS = [
    ("sample", ["--ckpt_path", "x.ckpt", "--n_samples", "0"], "--n_samples must be at least 1"),
    ("sample", [], "required: --ckpt_path"),
    ("export", ["--ckpt_path"], "--ckpt_path: expected one argument"),
    ("report", ["--ckpt_path", "x.ckpt", "--iw_samples", "abc"], "--iw_samples: invalid int value"),
    ("report", ["--ckpt_path", "x.ckpt", "--ood_option", "a=b"], "--ood_option needs --ood"),
]


@pytest.mark.parametrize(("command", "args", "said"), BAD_OPTIONS)
def test_a_bad_option_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys, command, args, said):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(command).main(args)
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message and said in message, message
    assert f"python {command}.py --help" in message
    assert capsys.readouterr().err == ""  # no usage text beside it
    assert list(tmp_path.iterdir()) == []
