"""Reading CPU time from /proc/<pid>/stat lines."""

from bench.procstat import CLOCK_TICKS, parse_stat


def test_fields_are_counted_after_a_command_name_with_spaces_and_parentheses():
    line = "4242 (py (thon) x) S 1 4200 4200 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0"
    pid, pgid, cpu = parse_stat(line)
    assert (pid, pgid) == (4242, 4200)
    assert cpu == (250 + 50) / CLOCK_TICKS
