"""
configurator.py: config files and --key=value overrides, and a one-line error (exit 2, no
traceback) for each kind of bad input. Run: python -m pytest tests/test_configurator.py
"""
import os
import sys

import pytest

from conftest import REPO, run

with open(os.path.join(REPO, 'configurator.py')) as _f:
    SOURCE = _f.read()


def configure(argv, **defaults):
    """exec configurator.py over a script's globals (defaults) with sys.argv[1:] = argv."""
    g = {'batch_size': 12, 'learning_rate': 6e-4, 'compile': None, 'out_dir': 'out', 'decay_lr': True,
         'dropout': 0.0, **defaults}
    old = sys.argv
    sys.argv = ['train.py', *argv]
    try:
        exec(SOURCE, g)
    finally:
        sys.argv = old
    return g


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as e:
        configure(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('error: '), err
    return err


def test_overrides_and_types():
    g = configure(['--batch_size=32', '--learning_rate=1e-3', '--decay_lr=False', '--out_dir=2024',
                   '--dropout=1', '--compile=True'])
    assert g['batch_size'] == 32 and g['learning_rate'] == 1e-3 and g['decay_lr'] is False
    assert g['out_dir'] == '2024'  # a string setting keeps the text as given
    assert g['dropout'] == 1.0 and isinstance(g['dropout'], float)  # an int is fine for a float
    assert g['compile'] is True  # a None default takes any value
    assert configure(['--decay_lr=false'])['decay_lr'] is False


def test_config_file_then_override(tmp_path):
    cfg = tmp_path / 'my_config.py'
    cfg.write_text("import time\nbatch_size = 7\nout_dir = 'run-' + str(1)\n")
    g = configure([str(cfg), '--batch_size=9'])
    assert g['batch_size'] == 9 and g['out_dir'] == 'run-1'
    assert 'time' not in g  # the config file's imports are not settings


def test_unknown_key_suggests(capsys):
    err = error_of(capsys, ['--batch_sise=3'])
    assert "unknown config key 'batch_sise'" in err and 'batch_size' in err


def test_unknown_key_in_config_file(capsys, tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("lerning_rate = 1.0\n")
    assert 'learning_rate' in error_of(capsys, [str(cfg)])


@pytest.mark.parametrize('arg,expected', [
    ('--batch_size=3.5', 'batch_size expects an int, got 3.5'),
    ('--batch_size=True', 'batch_size expects an int, got True'),
    ('--learning_rate=fast', 'learning_rate expects a float, got fast'),
    ('--decay_lr=yes', 'decay_lr expects True or False, got yes'),
])
def test_wrong_type_is_one_line(capsys, arg, expected):
    assert expected in error_of(capsys, [arg])


def test_missing_config_file(capsys):
    assert "config file 'config/nope.py' does not exist" in error_of(capsys, ['config/nope.py'])


def test_neither_file_nor_override(capsys):
    assert "neither a config file" in error_of(capsys, ['batch_size=3'])
    assert "not of the form --key=value" in error_of(capsys, ['--batch_size'])


def test_broken_config_file(capsys, tmp_path):
    cfg = tmp_path / 'bad.py'
    cfg.write_text("batch_size = (\n")
    assert 'SyntaxError' in error_of(capsys, [str(cfg)])


def test_script_reports_without_traceback(repo):
    p = run(repo, 'train.py', '--n_layr=2', check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: unknown config key 'n_layr' (did you mean n_layer?)"
    assert 'Traceback' not in p.stdout + p.stderr


@pytest.mark.parametrize('name', sorted(f for f in os.listdir(os.path.join(REPO, 'config')) if f.endswith('.py')))
def test_every_config_file_sets_only_settings_of_its_script(name):
    """Each recipe in config/ goes through configurator.py over its script's defaults (a misspelt key would exit)."""
    script = 'train.py'  # every config file is train.py's, as in nanoGPT
    with open(os.path.join(REPO, script)) as f:
        defaults_section = f.read().split('# ' + '-' * 77)[1]  # the settings between the first two rulers
    defaults = {}
    exec(defaults_section, defaults)
    g = configure([os.path.join(REPO, 'config', name)], **{k: v for k, v in defaults.items() if not k.startswith('__')})
    assert g['out_dir']
