"""Pass molecule's output through and end it with the seconds each step took, for CI's time table.

    molecule test -s NAME 2>&1 | python3 tools/molecule_steps.py

Molecule marks each step with "[scenario > step] Executing" and "... Executed"; the last line printed is
"steps: create=21 prepare=9 converge=140 ..." (tools/test.sh reads it).
"""
import re
import sys
import time

STEP = re.compile(r"\[(?P<scenario>[\w-]+) > (?P<step>\w+)\] (?P<what>Executing|Executed)")


def main() -> None:
    started, seconds = {}, {}
    for line in sys.stdin:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = STEP.search(line)
        if not match or match["step"] in ("discovery", "scenario"):
            continue
        step = match["step"]
        if match["what"] == "Executing":
            started.setdefault(step, time.monotonic())
        elif step in started:
            seconds[step] = seconds.get(step, 0) + time.monotonic() - started.pop(step)
    # A step still open when the output ended is the one that failed: its time counts too.
    for step, since in started.items():
        seconds[step] = seconds.get(step, 0) + time.monotonic() - since
    print("steps: " + " ".join("%s=%d" % (step, round(value)) for step, value in seconds.items()))


if __name__ == "__main__":
    main()
