"""Test-only kill switches, armed by putting this folder on PYTHONPATH (`armed()` in tests/synthetic.py):

* SAMORA_KIT_TEST_KILL_AT_STEP=N: SIGKILL the process after optimizer step N (and its checkpoint), through
  the step callbacks that samora_kit.runner.run passes to every training loop (the CLI calls runner.run);
* SAMORA_KIT_TEST_KILL_SAVING=NAME (with SAMORA_KIT_TEST_KILL_SAVE_COUNT=N, default 1): SIGKILL it inside the
  Nth save of a file called NAME, after its temporary copy is written and before it replaces the file."""

import os
import signal


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_at_step = int(os.environ.get("SAMORA_KIT_TEST_KILL_AT_STEP", "0"))
if _at_step:
    import functools

    from samora_kit import runner

    runner.run = functools.partial(runner.run, step_callbacks=[lambda step: _die() if step == _at_step else None])

_saving = os.environ.get("SAMORA_KIT_TEST_KILL_SAVING")
if _saving:
    _remaining = [int(os.environ.get("SAMORA_KIT_TEST_KILL_SAVE_COUNT", "1"))]
    _replace = os.replace

    def _replace_or_die(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(src))
        if name.startswith(f".{_saving}.") and name.endswith(".tmp"):
            _remaining[0] -= 1
            if _remaining[0] == 0:
                _die()
        return _replace(src, dst, *args, **kwargs)

    os.replace = _replace_or_die
