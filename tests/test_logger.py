"""Run folders and the progress line."""

from training.logger import Progress, make_run_dir, run_name


def test_run_name_follows_cleanrl_and_is_file_safe():
    name = run_name("ALE/Breakout-v5", "ppo", 3)
    env, exp, seed, stamp = name.split("__")
    assert (env, exp, seed) == ("ALE-Breakout-v5", "ppo", "3") and stamp.isdigit()


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path):
    a = make_run_dir(tmp_path, "CartPole-v1__ppo__1__100")
    b = make_run_dir(tmp_path, "CartPole-v1__ppo__1__100")
    assert a != b and a.is_dir() and b.name == "CartPole-v1__ppo__1__100-2"


def test_progress_prints_plain_lines_without_a_terminal(capsys):
    progress = Progress(total=1000, interval=0.0)
    progress.update(500, sps=250.0, recent_return=12.5)
    progress.close()
    err = capsys.readouterr().err
    assert "step 500/1000" in err and "SPS 250" in err and "return(100) 12.5" in err and "ETA 2s" in err


def test_the_eta_is_the_time_limit_when_it_comes_before_the_last_step(capsys):
    # 999,500 steps to go at 250 SPS would take ~4,000 s; --train-for-minutes leaves 90 s.
    progress = Progress(total=1_000_000, interval=0.0)
    progress.update(500, sps=250.0, recent_return=None, seconds_left=90.0)
    progress.update(1000, sps=250.0, recent_return=None, seconds_left=5000.0)
    progress.close()
    first, second = capsys.readouterr().err.splitlines()[:2]
    assert first.endswith("ETA 90s") and second.endswith("ETA 3996s")
