"""The ``elo`` command: a routing table from command name to the function beside the code it drives.

``fit``/``validate``/``test`` go to Lightning's CLI (``lightning_cli.py``); every other command is a typed function
that jsonargparse turns into a subcommand. Bad input raises ``ELOError`` anywhere below; here it becomes one line
on stderr and exit code 2, also when it was wrapped on its way up (jsonargparse, DataLoader workers), and so does a
full disk (``errors.user_message``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from jsonargparse import auto_cli

from elo_lightning.bench import bench, figure_cmd, from_runs, linear_ce_memory
from elo_lightning.chat_vector import chat_vector_cmd
from elo_lightning.checkpoint import consolidate_cmd
from elo_lightning.convert import convert_gguf
from elo_lightning.data.check import check_data
from elo_lightning.errors import user_message
from elo_lightning.evaluation import judge
from elo_lightning.evaluation.evaluate import eval_cmd
from elo_lightning.lightning_cli import LIGHTNING_COMMANDS, lightning_help, run_lightning
from elo_lightning.models import init_cmd
from elo_lightning.pipeline import pipeline
from elo_lightning.quiet import silence_known_noise
from elo_lightning.reproduce import reproduce
from elo_lightning.surgery import attach_cmd, detach_cmd

COMMANDS = {
    **{name: lightning_help(name) for name in LIGHTNING_COMMANDS},  # listed in `elo --help`; run by run_lightning
    "detach": detach_cmd,
    "attach": attach_cmd,
    "init": init_cmd,
    "pipeline": pipeline,
    "chat-vector": chat_vector_cmd,
    "eval": eval_cmd,
    "consolidate": consolidate_cmd,
    "judge": {"generate": judge.generate_answers, "score": judge.judge_answers},
    "bench": bench,
    "bench-from-runs": from_runs,
    "figure": figure_cmd,
    "bench-memory": linear_ce_memory,
    "check-data": check_data,
    "convert-gguf": convert_gguf,
    "reproduce": reproduce,
}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    silence_known_noise()
    try:
        if args[:1] and args[0] in LIGHTNING_COMMANDS:
            run_lightning(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
        else:
            auto_cli(COMMANDS, args=args, as_positional=False)
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
