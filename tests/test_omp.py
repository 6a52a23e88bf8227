"""OpenMP worker teams (llm/omp.py): a thread that builds the engine or hands it work, and the engine
thread when idle, keep no team alive. With two alive, libgomp stops its idle workers spinning and
every parallel op of both waits for a wake-up (bench/omp_teams.py measures what that costs).
Threads are counted in /proc/self/task; a libgomp team of N threads is its caller plus N-1 workers."""
import os
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from baize.llm.base import GenParams  # noqa: E402
from baize.llm.engine import BatchEngine  # noqa: E402
from baize.llm.omp import _runtimes, release_threads  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
                                reason="counts a team's worker threads: Linux, 2+ torch threads")


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def settle(want: int, timeout: float = 10.0) -> int:
    """The thread count once it is `want` (a released worker exits a moment later), or after timeout."""
    deadline = time.monotonic() + timeout
    while threads() != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads()


def parallel_op():
    torch.ones(4_000_000).add_(1)  # far above ATen's grain size: runs as an OpenMP parallel region


def in_fresh_thread(fn):
    """Run fn in a new thread: the main thread's own team (from earlier tests) stays out of the count."""
    err = []

    def run():
        try:
            fn()
        except BaseException as e:
            err.append(e)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]


def test_torch_runs_on_an_openmp_runtime_we_can_release():
    assert _runtimes(), "no OpenMP runtime with omp_pause_resource_all found among the loaded libraries"


def test_release_threads_frees_the_calling_threads_team():
    def scenario():
        start = threads()
        parallel_op()
        workers = torch.get_num_threads() - 1
        assert settle(start + workers) == start + workers  # the team stays after the op...
        release_threads()
        assert settle(start) == start  # ...until released
        parallel_op()  # and torch still works: the next parallel op starts a new team
        assert settle(start + workers) == start + workers
        release_threads()
    in_fresh_thread(scenario)


def test_the_engine_and_its_callers_keep_no_team_while_the_engine_waits(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def scenario():
        start = threads()
        parallel_op()  # as loading a model leaves the loading thread a team
        assert settle(start + 1) > start
        eng = BatchEngine(model, tok, max_batch=4, eos_ids=())
        try:
            assert settle(start) == start, "building the engine left the loading thread's team alive"
            eng.call(parallel_op)  # the engine thread gets a team of its own
            parallel_op()  # and so does this thread again, before handing the engine more work
            req = eng.submit(tok("Hello")["input_ids"], GenParams(0.0, 1.0, 4, [], 1))
            assert req.result().completion_tokens == 4
            # idle now: only the engine thread itself is left, neither team
            assert settle(start + 1) == start + 1, "a team outlived the work (the engine's or its caller's)"
        finally:
            eng.close()
    in_fresh_thread(scenario)
