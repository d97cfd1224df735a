"""Test-only: SIGKILL this process inside a save, after the temporary file is written and before it
replaces the target, on the Nth save of a file called $SAMORA_KIT_TEST_KILL_SAVING (N =
$SAMORA_KIT_TEST_KILL_SAVE_COUNT, default 1). Put this folder on PYTHONPATH to arm it."""

import os
import signal

_target = os.environ.get("SAMORA_KIT_TEST_KILL_SAVING")
if _target:
    _remaining = [int(os.environ.get("SAMORA_KIT_TEST_KILL_SAVE_COUNT", "1"))]
    _replace = os.replace

    def _replace_or_die(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(src))
        if name.startswith(f".{_target}.") and name.endswith(".tmp"):
            _remaining[0] -= 1
            if _remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _replace_or_die
