"""Summing py-spy's collapsed stacks into where the broker's time goes."""

from bench.profile import (
    Frame,
    hot_spots,
    inclusive_project_functions,
    parse_collapsed,
    parse_frame,
    self_time_by_area,
)

RAW = (
    'process 17:"python -m jitmesh.cli broker";main (jitmesh/cli.py:90);token (pdp/app.py:40);'
    "sign (pdp/tokens.py:12);encode (jwt/api_jwt.py:80) 30\n"
    'process 17:"python -m jitmesh.cli broker";main (jitmesh/cli.py:90);token (pdp/app.py:40);'
    "query (pdp/opa.py:30);send (httpx/_client.py:900);setup (httpcore/_synchronization.py:20) 50\n"
    'process 17:"python -m jitmesh.cli broker";main (jitmesh/cli.py:90);token (pdp/app.py:41) 20\n'
    "garbage line\n"
)


def test_frames_are_read_without_line_numbers():
    assert parse_frame("encode (jwt/api_jwt.py:80)") == Frame("encode", "jwt/api_jwt.py")
    assert parse_frame("<module> (<frozen importlib._bootstrap>:1176)") == Frame(
        "<module>", "<frozen importlib._bootstrap>")


def test_process_root_and_garbage_lines_are_skipped():
    stacks = parse_collapsed(RAW)
    assert [count for _, count in stacks] == [30, 50, 20]
    assert stacks[0][0][0] == Frame("main", "jitmesh/cli.py")


def test_self_time_goes_to_the_library_or_project_module_of_the_leaf():
    assert self_time_by_area(parse_collapsed(RAW)) == {"jwt": 30, "httpcore": 50, "pdp/app.py": 20}


def test_inclusive_time_counts_each_project_function_once_per_stack():
    steps = inclusive_project_functions(parse_collapsed(RAW))
    assert steps["pdp.app:token"] == 100
    assert steps["pdp.opa:query"] == 50
    assert steps["pdp.tokens:sign"] == 30
    assert "httpx._client:send" not in steps


def test_entry_frames_are_not_reported_as_broker_steps():
    assert "jitmesh.cli:main" not in inclusive_project_functions(parse_collapsed(RAW))


def test_hot_spots_name_the_caller_into_the_leaf_library():
    spots = hot_spots(parse_collapsed(RAW))
    assert spots["pdp.tokens:sign -> jwt"] == 30
    assert spots["httpx._client:send -> httpcore"] == 50
    assert spots["jitmesh.cli:main -> pdp/app.py"] == 20


def test_thread_line_puts_the_event_loop_first_and_gives_ms_per_issuance():
    from bench.profile import thread_line
    line = thread_line({7028: 0.5, 7023: 2.0, 7030: 0.00001}, main_tid=7023, issued=1000)
    assert line == "event loop (main thread) 2.00 ms, thread 7028 0.50 ms"


def test_main_thread_leaves_out_stacks_of_threading_threads():
    from bench.profile import main_thread
    raw = RAW + ("_bootstrap (threading.py:995);_bootstrap_inner (threading.py:1038);"
                 "_writer_main (pdp/store/sqlite.py:252) 40\n")
    stacks = parse_collapsed(raw)
    assert sum(c for _, c in stacks) == 140
    assert sum(c for _, c in main_thread(stacks)) == 100
