"""Fault injection: SIGKILL a training run at random moments and check that what it leaves is usable.

    python -m tools.kill_test --trials 50 --seed 0

Each trial starts train_deep_globe.py (fpn_resnet18, mode 1, 64 px patches on a tiny synthetic data set,
one image per epoch, validation every epoch; with --resume when <task>.last.pth exists) and kills it,
process group and all, with SIGKILL. The moment is drawn from a seeded generator; about half of the
trials use a uniform delay after the start (start-up, loading, epochs and writes alike), the others a
delay of 0 to 1.5 s after the progress bar of a randomly chosen epoch of the run completes, i.e. while
that epoch's checkpoints (best, epoch<N>, epoch, last) are being written. The last trial kills just
after an epoch was saved, so that the final run below always has something to resume. After each kill:

  - every *.pth in the model folder must load with models.checkpoint.read_checkpoint;
  - <task>.last.pth must be a training state whose epoch count never went back;
  - the folder may hold nothing but *.pth files and temporaries of interrupted writes
    (``<name>.pth.<random>.tmp``, which nothing reads; the next run deletes them).

When a run has done all its epochs the chain starts again in a fresh folder. After the last trial a
final --resume must finish with exit status 0, leave no temporaries and a complete set of loadable
checkpoints. Prints one line per trial and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from models.checkpoint import read_checkpoint
from utils.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASK = "kill"
EPOCH_BAR = re.compile(r"epoch \d+/\d+: ")  # tqdm's bar of a training epoch has started
EPOCH_DONE = re.compile(r"epoch (\d+)/\d+: 100%")  # ... and completed: the epoch's checkpoints come next
EPOCH_SAVED = re.compile(r"epoch \d+/\d+ loss")  # the log line printed once <task>.last.pth is written


def make_data(folder: str) -> str:
    """Two training images and one validation image of 96 px (a few seconds per short run)."""
    from dataset.synthetic import generate

    generate(folder, n_train=2, n_val=1, n_test=0, size=96, seed=0)
    return folder


def train_command(data: str, models: str, logs: str, epochs: int, resume: bool) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "train_deep_globe.py"), "--data_path", data, "--model_path", models,
           "--log_path", logs, "--task_name", TASK, "--backbone", "fpn_resnet18", "--mode", "1", "--train",
           "--val", "--val_every", "1", "--epochs", str(epochs), "--size_p", "64", "--size_g", "64",
           "--batch_size", "1", "--sub_batch_size", "8", "--max_images", "1", "--device", "cpu",
           "--no_pretrained", "--num_workers", "0"]
    return cmd + (["--resume"] if resume else [])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class CliProcess:
    """A command in its own process group (so a signal reaches its DataLoader workers too, as a
    terminal's Ctrl-C does) whose stderr is collected in ``text`` as it comes."""

    def __init__(self, cmd: list[str]) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        # SIGINT back to its default in the child: a shell ignores it in jobs started in the background
        # (``cmd &``), the child would inherit that, and Python then never raises KeyboardInterrupt.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env,
                                     start_new_session=True, preexec_fn=_default_sigint)
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stderr.read1(4096):
            self.text += chunk.decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> bool:
        """SIGKILL the whole group; True when the process was still running."""
        alive = self.proc.poll() is None
        if alive:
            try:
                self.signal(signal.SIGKILL)
            except ProcessLookupError:
                alive = False
        self.proc.wait()
        self._reader.join(timeout=5)
        return alive

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=5)
        return code


def last_epoch(models: str) -> int | None:
    path = os.path.join(models, f"{TASK}.last.pth")
    if not os.path.exists(path):
        return None
    _, meta, extra = read_checkpoint(path, with_extra=True)
    if meta["kind"] != "training-state":
        raise CheckpointError(f"{path} is not a training state")
    return int(extra["epoch"])


def inspect(models: str) -> dict:
    """Load every checkpoint in ``models``; list temporaries and unexpected files."""
    names = sorted(os.listdir(models)) if os.path.isdir(models) else []
    checkpoints = [n for n in names if n.endswith(".pth")]
    temporaries = [n for n in names if re.fullmatch(r".+\.pth\.[^.]+\.tmp", n)]
    others = [n for n in names if n not in checkpoints and n not in temporaries]
    broken = []
    for name in checkpoints:
        try:
            read_checkpoint(os.path.join(models, name))
        except CheckpointError as exc:
            broken.append(f"{name}: {exc}")
    return {"checkpoints": checkpoints, "temporaries": temporaries, "others": others, "broken": broken}


def run_trials(trials: int, seed: int = 0, epochs: int = 4, max_delay: float = 12.0, workdir: str | None = None,
               report=print) -> dict:
    """Run the kill trials (see the module doc); returns a summary dict (``failures`` lists every
    failed check; empty means all passed)."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="kill_test_")
    data = make_data(os.path.join(workdir, "data"))
    cycle = 0
    models = os.path.join(workdir, f"models{cycle}")
    logs = os.path.join(workdir, "logs")
    failures: list[str] = []
    rows: list[dict] = []
    done_before = None
    started = time.time()
    for trial in range(1, trials + 1):
        last_trial = trial == trials
        # A finished chain starts again; so does one with a single epoch left before the last trial, whose
        # kill comes after an epoch is saved and must leave something for the final run to resume.
        if done_before is not None and done_before >= epochs - (1 if last_trial else 0):
            cycle += 1
            models = os.path.join(workdir, f"models{cycle}")
            done_before = None
        # The last trial kills right after an epoch was saved, so that the final run always resumes.
        strategy = "after-save" if last_trial else rng.choice(["uniform", "after-epoch"])
        row = kill_trial(trial, strategy, rng, data, models, logs, epochs, max_delay, done_before)
        rows.append(row)
        failures.extend(f"trial {trial}: {p}" for p in row["problems"])
        report(trial_line(row))
        done_before = row["epoch_after"]
    final_problems, final_resumes, final_line = final_run(data, models, logs, epochs, done_before)
    failures.extend(f"final: {p}" for p in final_problems)
    report(final_line)
    summary = summarise(trials, rows, final_problems, final_resumes, failures, time.time() - started)
    if own:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def kill_trial(trial: int, strategy: str, rng: random.Random, data: str, models: str, logs: str, epochs: int,
               max_delay: float, done_before: int | None) -> dict:
    """One trial: start the chain's next run in ``models`` (with --resume once ``done_before`` epochs are
    saved), SIGKILL it at the moment ``strategy`` draws from ``rng`` and check what it left. The row of
    the trial; its ``problems`` are empty when every check passed, ``epoch_after`` is the epoch of
    <task>.last.pth afterwards."""
    resume = done_before is not None
    before = set(inspect(models)["temporaries"])
    run = CliProcess(train_command(data, models, logs, epochs, resume))
    delay = wait_for_kill(run, strategy, rng, max_delay, epochs, done_before)
    seen = run.text
    killed = run.kill()
    state = inspect(models)
    new_temporaries = sorted(set(state["temporaries"]) - before)
    phase = kill_phase(killed, new_temporaries, seen)
    problems, done_after = after_kill_problems(state, models, done_before, resume, killed, run, seen)
    return {"trial": trial, "strategy": strategy, "delay": delay, "phase": phase, "resume": resume,
            "checkpoints": len(state["checkpoints"]), "loadable": len(state["checkpoints"]) - len(state["broken"]),
            "temporaries": len(new_temporaries), "epoch_before": done_before, "epoch_after": done_after,
            "problems": problems}


def wait_for_kill(run: CliProcess, strategy: str, rng: random.Random, max_delay: float, epochs: int,
                  done_before: int | None) -> float:
    """Wait until the kill moment of ``strategy`` ("uniform": a delay drawn up to ``max_delay``;
    "after-save": the first saved epoch; "after-epoch": 0 to 1.5 s after a drawn epoch of the run
    completed) or until ``run`` ends; the seconds since its start."""
    t0 = time.time()
    if strategy == "uniform":
        delay = rng.uniform(0.0, max_delay)
        while time.time() - t0 < delay and run.proc.poll() is None:
            time.sleep(0.01)
    elif strategy == "after-save":
        while run.proc.poll() is None and time.time() - t0 < 4 * max_delay and not EPOCH_SAVED.search(run.text):
            time.sleep(0.01)
        delay = time.time() - t0
    else:  # shortly after the k-th epoch of this run ended: during that epoch's checkpoint writes
        k = rng.randint(1, epochs - (done_before or 0))
        wait_after = rng.uniform(0.0, 1.5)
        while (run.proc.poll() is None and time.time() - t0 < 4 * max_delay
               and len(set(EPOCH_DONE.findall(run.text))) < k):
            time.sleep(0.01)
        t1 = time.time()
        while time.time() - t1 < wait_after and run.proc.poll() is None:
            time.sleep(0.01)
        delay = time.time() - t0
    return delay


def kill_phase(killed: bool, new_temporaries: list[str], seen: str) -> str:
    """What the run was doing when killed, judged by what it left and printed (``seen``)."""
    if not killed:
        return "finished first"
    if new_temporaries:
        return "checkpoint write"
    if EPOCH_BAR.search(seen):
        return "training"
    return "start-up"


def after_kill_problems(state: dict, models: str, done_before: int | None, resume: bool, killed: bool,
                        run: CliProcess, seen: str) -> tuple[list[str], int | None]:
    """(the failed checks of a killed run's folder ``models``, whose ``inspect`` is ``state``; the epoch
    of its <task>.last.pth, ``done_before`` when that file cannot be read)."""
    problems = [f"unloadable {b}" for b in state["broken"]] + [f"unexpected file {o}" for o in state["others"]]
    try:
        done_after = last_epoch(models)
    except CheckpointError as exc:
        problems.append(f"last.pth: {exc}")
        done_after = done_before
    if done_before is not None and (done_after is None or done_after < done_before):
        problems.append(f"last.pth went back from epoch {done_before} to {done_after}")
    if resume and killed is False and "resumed" not in seen:
        problems.append("a --resume run finished without resuming")
    if not killed and run.proc.returncode != 0:
        problems.append(f"run ended by itself with status {run.proc.returncode}: {seen.strip()[-300:]}")
    return problems, done_after


def trial_line(row: dict) -> str:
    """The report line of a trial's row."""
    resume = "yes" if row["resume"] else "no "
    left = f", {row['temporaries']} temporary left" if row["temporaries"] else ""
    failed = "  FAILED: " + "; ".join(row["problems"]) if row["problems"] else ""
    return (f"trial {row['trial']:3d} {row['strategy']:<11} kill at {row['delay']:5.2f}s ({row['phase']:<16}) "
            f"resume={resume:<3} last epoch {row['epoch_before']}->{row['epoch_after']} checkpoints "
            f"{row['loadable']}/{row['checkpoints']} loadable{left}{failed}")


def final_run(data: str, models: str, logs: str, epochs: int, done_before: int | None) -> tuple[list[str], bool, str]:
    """The chain must finish: --resume (or a fresh start) runs to the end and cleans up. (The failed
    checks, whether the run had to resume, its report line.)"""
    final_resumes = done_before is not None and done_before < epochs
    final = CliProcess(train_command(data, models, logs, epochs, resume=done_before is not None))
    code = final.wait(timeout=600)
    state = inspect(models)
    final_problems = []
    if code != 0:
        final_problems.append(f"final run exited {code}: {final.text.strip()[-500:]}")
    if state["broken"] or state["others"] or state["temporaries"]:
        final_problems.append(f"final folder not clean: {state}")
    if final_resumes and "resumed" not in final.text:
        final_problems.append("the final run did not resume")
    if last_epoch(models) != epochs:
        final_problems.append(f"final last.pth holds epoch {last_epoch(models)}, not {epochs}")
    if f"{TASK}.epoch.pth" not in state["checkpoints"]:
        final_problems.append("final run left no <task>.epoch.pth")
    line = (f"final {'--resume' if final_resumes else 'run'}: exit {code}, {len(state['checkpoints'])} checkpoints, "
            f"{'ok' if not final_problems else 'FAILED: ' + '; '.join(final_problems)}")
    return final_problems, final_resumes, line


def summarise(trials: int, rows: list[dict], final_problems: list[str], final_resumes: bool, failures: list[str],
              seconds: float) -> dict:
    """The summary dict of ``run_trials``."""
    killed_rows = [r for r in rows if r["phase"] != "finished first"]
    return {
        "trials": trials,
        "killed": len(killed_rows),
        "all_loadable": sum(1 for r in rows if r["loadable"] == r["checkpoints"] and not r["problems"]),
        "with_checkpoints": sum(1 for r in killed_rows if r["checkpoints"]),
        "phases": {p: sum(1 for r in rows if r["phase"] == p)
                   for p in ("start-up", "training", "checkpoint write", "finished first")},
        "resumed_runs": sum(1 for r in rows if r["resume"]),
        "final_ok": not final_problems,
        "final_resumed": final_resumes,
        "failures": failures,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50, help="number of SIGKILL trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of one chain of runs")
    parser.add_argument("--max_delay", type=float, default=12.0,
                        help="longest uniform kill delay in seconds (about start-up + all epochs on this machine)")
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder, deleted)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epochs < 1 or args.max_delay <= 0:
        parser.error("--trials and --epochs must be at least 1, --max_delay positive")
    summary = run_trials(args.trials, args.seed, args.epochs, args.max_delay, args.workdir)
    phases = ", ".join(f"{k}: {v}" for k, v in summary["phases"].items())
    print(f"\n{summary['trials']} trials ({summary['killed']} killed mid-run; {phases}); "
          f"{summary['all_loadable']}/{summary['trials']} left only loadable checkpoints; "
          f"{summary['resumed_runs']} runs started with --resume; final "
          f"{'--resume' if summary['final_resumed'] else 'run'} {'finished' if summary['final_ok'] else 'FAILED'}; "
          f"{summary['seconds']:.0f}s")
    for failure in summary["failures"]:
        print("FAILED:", failure)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
