"""
What a script run by the tests sees: what a fresh `python script.py` would, its environment and every
constant a library derives from it at import (huggingface_hub's HF_HOME and HF_HUB_OFFLINE, tqdm's
TQDM_DISABLE), whether the suite runs scripts in children of its fork server (the default) or as plain
subprocesses (NANOGPT_FORK_SERVER=0). Run: python -m pytest tests/test_environment.py
"""
import json
import subprocess
import sys

import pytest

from conftest import run, script_env

SHOW = '''
import json, os, sys
import huggingface_hub.constants as hub
import tqdm
print(json.dumps(dict(hf_home=hub.HF_HOME, offline=hub.HF_HUB_OFFLINE, tqdm_disable=tqdm.tqdm(range(1)).disable,
                      cwd=os.getcwd(), argv=sys.argv, path0=sys.path[0], mine=os.environ.get('MY_SETTING'))))
'''


@pytest.mark.parametrize('asked', ['nothing', 'variables read at import'])
def test_a_script_sees_what_a_fresh_interpreter_would(tmp_path, asked):
    (tmp_path / 'show.py').write_text(SHOW)
    env = {}  # the session's environment: the fork server's own, so the script runs in a fork of it
    if asked != 'nothing':
        env = dict(HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), TQDM_DISABLE='1', MY_SETTING='x')
    got = json.loads(run(tmp_path, 'show.py', 'a b', env=env).stdout)
    fresh = subprocess.run([sys.executable, 'show.py', 'a b'], cwd=tmp_path, env=script_env(env), capture_output=True,
                           text=True, check=True)
    assert got == json.loads(fresh.stdout)
    assert got['argv'] == ['show.py', 'a b']
    if asked != 'nothing':
        assert got['mine'] == 'x' and got['hf_home'] == str(tmp_path / 'hf')
        assert got['offline'] is True and got['tqdm_disable'] is True
