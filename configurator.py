"""
Poor Man's Configurator, as in nanoGPT. It is exec'd by the scripts, not imported:

$ python train.py config/override_file.py --batch_size=32

runs config/override_file.py (plain assignments), then sets batch_size to 32. Each name
must already be a setting of the script (one of its globals of type bool, int, float, str
or None) and keep its type: an int is fine for a float, True/False for a bool, and a
setting whose default is None takes any value the script then checks. Anything else is
one line on stderr and exit status 2, before the script does any work. The names that were
set are left in the script's global set_keys, for checks that only apply to what was asked.
"""
import sys as _sys


def _configure(argv, g):
    import builtins  # the scripts' own 'compile' setting shadows the builtin
    import difflib
    import os
    from ast import literal_eval

    settings = {k: v for k, v in g.items()
                if not k.startswith('_') and isinstance(v, (bool, int, float, str, type(None)))}

    def fail(msg):
        print(f"error: {msg}", file=_sys.stderr)
        _sys.exit(2)

    def check(key, value, raw=None):
        """The value to store for key, or fail saying what was wrong."""
        if key not in settings:
            close = difflib.get_close_matches(key, list(settings), n=3, cutoff=0.75)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            fail(f"unknown config key '{key}'{hint}")
        default = settings[key]
        if default is None:
            return value
        if isinstance(default, bool):
            if raw in ('true', 'false'):
                return raw == 'true'
            if isinstance(value, bool):
                return value
            want = "True or False"
        elif isinstance(default, int):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            want = "an int"
        elif isinstance(default, float):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if raw is not None and raw.strip().lower().lstrip('+-') in ('nan', 'inf', 'infinity'):
                return float(raw)  # a float all the same: the script says what range it needs
            want = "a float"
        else:
            if isinstance(value, str):
                return value
            if raw is not None:  # --out_dir=2024 means the string '2024'
                return raw
            want = "a string"
        got = raw if raw is not None else repr(value)
        fail(f"{key} expects {want}, got {got}")

    g['set_keys'] = set_keys = set()
    for arg in argv:
        if arg.startswith('--'):
            key, eq, raw = arg[2:].partition('=')
            if not eq:
                fail(f"'{arg}' is not of the form --key=value")
            try:
                value = literal_eval(raw)
            except (SyntaxError, ValueError):
                value = raw
            g[key] = check(key, value, raw)
            set_keys.add(key)
        elif arg.endswith('.py') or os.sep in arg:
            if not os.path.isfile(arg):
                fail(f"config file '{arg}' does not exist")
            print(f"Overriding config with {arg}:")
            with open(arg) as f:
                source = f.read()
            print(source)
            scope = {}
            try:
                exec(builtins.compile(source, arg, 'exec'), scope)
            except Exception as e:
                fail(f"config file '{arg}' failed: {type(e).__name__}: {e}")
            for key, value in scope.items():
                if key.startswith('_') or callable(value) or type(value).__name__ == 'module':
                    continue  # builtins, imports and helpers of the config file
                g[key] = check(key, value)
                set_keys.add(key)
        else:
            fail(f"'{arg}' is neither a config file (.py) nor --key=value")


_configure(_sys.argv[1:], globals())
del _configure
