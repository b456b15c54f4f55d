"""Envs in worker processes: contract, same streams as in-process, crash -> report and restart."""

import contextlib
import os
import signal

import numpy as np
import pytest

from decoupled.envs.base import EnvCrashedError
from decoupled.envs.classic import ClassicVecEnv
from decoupled.envs.subproc import ProcessVecEnv, resolve_factory

CARTPOLE = {"factory": "gymnasium:make", "kwargs": {"id": "CartPole-v1"}, "channels_first": False, "name": "CartPole"}


def test_factory_paths():
    assert resolve_factory("gymnasium:make").__name__ == "make"
    with pytest.raises(ValueError, match="package.module:callable"):
        resolve_factory("gymnasium.make")


def test_contract_and_same_stream_as_in_process():
    from env_contract import check_contract

    env = ProcessVecEnv(num_envs=3, seed=5, **CARTPOLE)
    try:
        stats = check_contract(env, steps=120)
        assert stats.episodes > 0  # autoresets really happened in the workers
        # the same seeds in-process give the same stream
        ref = ClassicVecEnv("CartPole-v1", 3, seed=5)
        a, b = env.reset(seed=11), ref.reset(seed=11)
        np.testing.assert_allclose(a, b)
        rng = np.random.default_rng(0)
        for _ in range(80):
            act = rng.integers(0, 2, 3)
            oa, ra, ta, ua, ia = env.step(act)
            ob, rb, tb, ub, ib = ref.step(act)
            np.testing.assert_allclose(oa, ob)
            np.testing.assert_array_equal(ta, tb)
            np.testing.assert_array_equal(ia["episode_done"], ib["episode_done"])
    finally:
        env.close()


def test_dict_observations_split_into_obs_and_extras():
    env = ProcessVecEnv("dict_env:DictCartPole", 2, seed=0, obs_key="state", channels_first=False)
    try:
        obs = env.reset()
        assert obs.shape == (2, 4) and env.spec.obs_shape == (4,)
        for _ in range(30):
            obs, _, te, tr, info = env.step(np.zeros(2, np.int64))
            np.testing.assert_allclose(info["extras"]["double"], 2 * obs, rtol=1e-6)
            done = te | tr
            np.testing.assert_allclose(info["final_extras"]["double"][done], 2 * info["final_obs"][done], rtol=1e-6)
    finally:
        env.close()


def test_killed_worker_is_reported_and_restarted():
    env = ProcessVecEnv(num_envs=2, seed=0, max_restarts=1, **CARTPOLE)
    try:
        env.reset()
        pid = env.worker_pid(1)
        os.kill(pid, signal.SIGKILL)
        with pytest.warns(UserWarning, match=r"env index 1 \(seed 1\) died"):
            obs, _, _, truncated, info = env.step(np.zeros(2, np.int64))
        assert truncated[1] and info["restarted"][1] and not info["restarted"][0]
        assert env.worker_pid(1) != pid and obs.shape == (2, 4)
        env.step(np.zeros(2, np.int64))  # the restarted worker steps normally
        os.kill(env.worker_pid(1), signal.SIGKILL)
        with pytest.raises(EnvCrashedError, match=r"env index 1 \(seed \d+\) failed 2 times"):
            env.step(np.zeros(2, np.int64))
    finally:
        env.close()


def test_a_worker_found_dead_when_sending_reads_the_same_as_one_found_dead_when_waiting():
    # which of send and receive notices a killed worker first is a race; here the worker is surely gone before send
    env = ProcessVecEnv(num_envs=2, seed=0, max_restarts=1, **CARTPOLE)
    try:
        env.reset()
        os.kill(env.worker_pid(1), signal.SIGKILL)
        env._procs[1].join(timeout=10)
        with pytest.warns(UserWarning, match=r"env index 1 \(seed 1\) died"):
            _, _, _, truncated, info = env.step(np.zeros(2, np.int64))
        assert truncated[1] and info["restarted"][1]
    finally:
        env.close()


def test_env_exception_names_index_and_seed_and_is_restarted_first():
    env = ProcessVecEnv(num_envs=2, seed=3, max_restarts=1, **CARTPOLE)
    try:
        env.reset()
        for _ in range(5):
            env.step(np.array([1, 0]))
        with pytest.warns(UserWarning, match=r"env index 0 \(seed 3\) raised in step"):
            obs, _, _, truncated, info = env.step(np.array([7, 0]))  # CartPole rejects action 7
        assert truncated[0] and info["restarted"][0] and not truncated[1]
        # the cut episode is not reported as a finished game
        assert not info["episode_done"][0]
        with pytest.raises(EnvCrashedError, match=r"failed 2 times \(max_restarts=1\); last: raised in step"):
            env.step(np.array([7, 0]))
    finally:
        env.close()


def test_env_that_cannot_be_built_is_a_clear_error_and_leaves_no_workers():
    import multiprocessing

    with pytest.raises(EnvCrashedError, match="NoSuchEnv"):
        ProcessVecEnv("gymnasium:make", 2, seed=0, kwargs={"id": "NoSuchEnv-v0"}, channels_first=False)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("env-worker")]


def test_shared_memory_and_pipes_give_the_same_streams_and_the_blocks_are_freed():
    """Observations through shared memory (the default) and through the pipes: identical obs, extras and final
    observations over episode ends and a killed worker's restart; the blocks are gone from /dev/shm after close."""
    envs = {
        shared: ProcessVecEnv(
            "dict_env:DictCartPole",
            3,
            seed=4,
            obs_key="state",
            channels_first=False,
            shared_memory=shared,
            max_restarts=2,
        )  # fmt: skip
        for shared in (True, False)
    }
    names = [block.name for block in envs[True]._blocks.values()]
    try:
        assert envs[True]._layout and not envs[False]._layout  # the shared one really shares
        assert all(os.path.exists(f"/dev/shm/{n}") for n in names)
        np.testing.assert_array_equal(envs[True].reset(), envs[False].reset())
        rng = np.random.default_rng(1)
        ends = 0
        for t in range(150):
            if t == 60:  # the same worker killed in both: the same cut episode and restart seed
                for env in envs.values():
                    os.kill(env.worker_pid(1), signal.SIGKILL)
            act = rng.integers(0, 2, 3)
            with pytest.warns(UserWarning, match="restarted") if t == 60 else contextlib.nullcontext():
                (oa, ra, ta, ua, ia), (ob, rb, tb, ub, ib) = (envs[s].step(act) for s in (True, False))
            for x, y in [(oa, ob), (ra, rb), (ta, tb), (ua, ub), (ia["final_obs"], ib["final_obs"])]:
                np.testing.assert_array_equal(x, y)
            for key in ("extras", "final_extras"):
                np.testing.assert_array_equal(ia[key]["double"], ib[key]["double"])
            np.testing.assert_array_equal(ia["restarted"], ib["restarted"])
            ends += int((ta | ua).sum())
        assert ends >= 5 and envs[True].restarts[1] == 1
    finally:
        for env in envs.values():
            env.close()
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)
