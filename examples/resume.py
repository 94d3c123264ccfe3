"""Resume a paused cold-email run by its interaction id.

    python examples/resume.py INTERACTION_ID --feedback "CTOs at mid-size hospitals"
    python examples/resume.py INTERACTION_ID          # shows the draft, asks on the terminal

Uses the blocking API (SyncColdMailAgent), as a plain script or a web view would.
Settings come from the environment like the `coldmail` command: COLDMAIL_DB, OPENAI_*.
"""

from __future__ import annotations

import argparse
import sys

from bridgic_coldmail import ColdmailError, RunStatus, SyncColdMailAgent
from bridgic_coldmail.render import format_run, format_sequence


def ask(question: str) -> str:
    """Ask on the terminal; refuse to wait on a stdin that is not a terminal."""
    if not sys.stdin.isatty():
        raise SystemExit(
            "resume.py: no --feedback given and stdin is not a terminal; pass --feedback"
        )
    print(question)
    return input("Your feedback: ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("interaction_id")
    parser.add_argument("--feedback", help="who the emails should really target")
    parser.add_argument(
        "--db", help="SQLite file or postgresql:// URL (default: $COLDMAIL_DB, else coldmail's)"
    )
    args = parser.parse_args()
    try:
        with SyncColdMailAgent.open(args.db) as agent:
            feedback = args.feedback
            if feedback is None:
                run = agent.get(args.interaction_id)
                if run.status is not RunStatus.AWAITING_FEEDBACK:
                    print(format_run(run))
                    return 0
                print(format_sequence(run.draft), end="\n\n")
                feedback = ask(run.question)
            done = agent.resume(args.interaction_id, feedback)
    except ColdmailError as exc:
        print(f"resume.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, EOFError):
        print("\nresume.py: stopped; the run is still waiting for feedback", file=sys.stderr)
        return 130
    print(format_run(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
