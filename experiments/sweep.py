"""The model families of the Model Analysis Table, trained and measured as independent jobs.

    python -m experiments.sweep                 # the default sweep into runs/sweep
    python -m experiments.sweep --small         # small models, minutes: runs/sweep-small
    python -m experiments.sweep --scheduler tcp://HOST:8786   # the same jobs on a Dask cluster
    python -m experiments.sweep --seeds 3 --only attn-only-1l attn-only-2l   # seeds 0-2 of two models

A job trains one model (resuming a partial run, skipping a finished one) and then measures
every snapshot (experiments.measure, cached beside the run). Jobs run in a local process
pool, one BLAS thread each (two single-threaded jobs beat one two-threaded one on this
engine), or on a Dask distributed cluster whose workers see the same --root directory: there
each job's output (its progress, throttled, and its measurement steps) comes back to the client
as Dask events, printed prefixed with the job's name.
Ctrl-C stops the sweep and its local workers at once (exit status 130), and a local worker
dies with its sweep however the sweep ends (killed too). Starting an interrupted sweep again
skips everything already done. Seed k of a model
(TrainConfig.seed: its initialisation and its data order; the eval set is the same for all)
goes to root/NAME for k = 0 and to root/NAME-seed<k> otherwise.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
import os
import pathlib
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from minitransformer.backend import add_device_argument
from minitransformer.cpu import command_settings
from minitransformer.io import error, os_error
from minitransformer.presets import apply_overrides, preset
from minitransformer.runs import Run, run_file, run_lock
from minitransformer import train as train_module
from minitransformer.train import train


@dataclass(frozen=True)
class Job:
    """One model of a family: a preset plus key=value overrides, trained into root/name."""
    name: str
    preset: str
    overrides: tuple = ()
    family: str = ""
    control: str = ""           # the name of the identically trained control (smeared-key models)
    seed: int = 0               # TrainConfig.seed: the initialisation and the data order

    @property
    def folder(self):
        """The run's folder under the sweep's root: the model's name for seed 0 (so a one-seed
        sweep is laid out as before), name-seed<k> for seed k."""
        return self.name if self.seed == 0 else f"{self.name}-seed{self.seed}"

    def configs(self):
        """-> (model, train config) dicts: the preset, its overrides, then seed (k >= 1)."""
        model, train_config = preset(self.preset)
        seed = [f"seed={self.seed}"] if self.seed else []
        return apply_overrides(model, train_config, list(self.overrides) + seed)


def with_seeds(jobs, seeds):
    """Every job for seeds 0..seeds-1 (the fixed eval set is the same for all: its own seed)."""
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: must be at least 1")
    return [dataclasses.replace(job, seed=s) for s in range(seeds) for job in jobs]


# 50 snapshots, and a job's step on one thread: two jobs side by side use 2 cores best
SNAPSHOTS = ("snapshots=50", "threads=1")


RECIPES = {"bytes": "", "bpe": "-bpe"}    # --recipe: the presets' suffix (presets.py)
LN_LAYERS = (1, 2, 3)    # the LayerNorm family: 3L tests a previous-token head in layer 1 feeding layer 2


def default_jobs(recipe="bytes"):
    """Attention-only and MLP 1..6 layers, attention-only with LayerNorm 1..3, smeared-key 1L/2L (their controls are the
    attention-only 1L/2L models: the same preset without the smeared key), all on natural
    text, byte tokens (recipe 'bytes') or the -bpe presets, and a 2-layer model trained on
    the template corpus (Argument 4; bytes either way)."""
    suffix = RECIPES[recipe]
    jobs = [Job(f"attn-only-{n}l", f"attn-only-{n}l{suffix}", SNAPSHOTS, "attn-only") for n in range(1, 7)]
    jobs += [Job(f"mlp-{n}l", f"mlp-{n}l{suffix}", SNAPSHOTS, "mlp") for n in range(1, 7)]
    jobs += [Job(f"attn-only-ln-{n}l", f"attn-only-ln-{n}l{suffix}", SNAPSHOTS, "layernorm")
             for n in LN_LAYERS]
    jobs += [Job(f"smeared-{n}l", f"smeared-{n}l{suffix}", SNAPSHOTS, "smeared", control=f"attn-only-{n}l")
             for n in (1, 2)]
    jobs.append(Job("template-2l", "attn-only-2l",
                    SNAPSHOTS + ("corpus=synthetic:template", "total_tokens=3e6"), "template"))
    return jobs


# the synthetic task wants the strong-position, 2-head recipe (docs/phase-change-search.md)
SMALL = ("threads=1", "n_ctx=64", "batch_size=16", "corpus=synthetic:repeated", "synthetic_fraction=0",
         "total_tokens=6e5", "n_eval=64", "snapshots=20", "n_heads=2", "d_head=64",
         "pos_scale=1.0", "lr=5e-3")


def small_jobs():
    """Minutes on a laptop: 64-token contexts of repeated random segments."""
    jobs = [Job(f"attn-only-{n}l", f"attn-only-{n}l", SMALL, "attn-only") for n in (1, 2, 3)]
    jobs += [Job(f"mlp-{n}l", f"mlp-{n}l", SMALL, "mlp") for n in (1, 2)]
    jobs += [Job(f"smeared-{n}l", f"smeared-{n}l", SMALL, "smeared", control=f"attn-only-{n}l")
             for n in (1, 2)]
    jobs.append(Job("template-2l", "attn-only-2l", SMALL + ("corpus=synthetic:template",
                                                           "synthetic_fraction=0.5"), "template"))
    return jobs


def finished(out, model, train_config):
    """True if out holds a finished run of exactly these settings (every setting that defines
    a run, defaults included); a one-line error if it holds a run of other settings (a sweep
    never overwrites one)."""
    if not run_file(out).exists():
        return False
    run = Run(out)
    differ = run.differing_settings(model, train_config)
    if differ:
        raise ValueError(f"{out}: holds a run with other settings ({'; '.join(differ)}); "
                         f"move it away or choose another --root")
    return run.tokens >= train_config["total_tokens"]


def run_job(job, root, measure=True, progress=True, device="cpu"):
    """Train (or resume, or skip) one job's model, then measure it, on `device` (cpu, gpu,
    auto; not a setting of the run: a run trained on one may be measured on another) -> a
    short status line."""
    start = time.time()
    out = pathlib.Path(root) / job.folder
    try:
        return _run_job(job, out, measure, progress, device, start)
    except OSError as e:            # a full disk names no file: the run's folder then
        raise ValueError(f"{e.filename or out}: {e.strerror or e}") from None


def _run_job(job, out, measure, progress, device, start):
    with run_lock(out, log=lambda line: print(line, flush=True)), command_settings():
        model, train_config = job.configs()
        train_config["device"] = device
        trained = "finished run kept"
        if not finished(out, model, train_config):
            train(out, model, train_config, resume=run_file(out).exists(), progress=progress)
            trained = "trained"
        measured = ""
        if measure:
            from experiments.measure import measure_run   # imported in the worker process
            measure_run(Run(out, device), log=lambda line: print(line, flush=True))
            measured = ", measured"
    return f"{out}: {trained}{measured} in {time.time() - start:.0f} s"


def order(jobs):
    """Longest jobs first, so that a pool of two does not end on one long job."""
    def cost(job):
        model, train_config = job.configs()
        per_token = model["n_layers"] * (1 if model.get("attn_only", True) else 2.2) + 1
        return per_token * train_config["total_tokens"] * model["n_ctx"] / 256
    return sorted(jobs, key=cost, reverse=True)


def run_sweep(jobs, root, workers=2, scheduler=None, measure=True, log=print, device="cpu"):
    """Every job, in a local process pool (one BLAS thread each) or on the Dask cluster at
    `scheduler` ('tcp://host:port', or a distributed.Client / LocalCluster), on `device`.
    Returns the status lines; a failed job is reported and the others go on (raised at
    the end). On a cluster, `log` also gets each job's output lines from its worker."""
    pathlib.Path(root).mkdir(parents=True, exist_ok=True)
    jobs, failures, lines = order(jobs), [], []
    if scheduler is None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # for the spawned workers
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start, initargs=(os.getpid(),))
        try:
            futures = {pool.submit(run_job, job, str(root), measure, True, device): job
                       for job in jobs}
            for future in concurrent.futures.as_completed(futures):
                _collect(future, futures[future], lines, failures, log)
        except BaseException:          # Ctrl-C, or anything else: the workers stop now
            _stop_pool(pool)
            raise
        pool.shutdown()
    else:
        from distributed import Client, as_completed
        client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        held = threading.Lock()        # the client's event thread and this one both log

        def say(line):
            with held:
                log(line)

        # this sweep's own topic: another client of the same scheduler does not see its lines
        topic = f"experiments.sweep-{uuid.uuid4().hex}"
        client.subscribe_topic(topic, lambda event: say(f"{event[1]['job']}: {event[1]['line']}"))
        try:
            futures = {client.submit(_run_on_worker, job, str(pathlib.Path(root).resolve()), measure,
                                     device, topic, key=f"sweep-{job.folder}-{time.time_ns()}", pure=False): job
                       for job in jobs}
            # a job's events reach the client before its result (one ordered stream each way)
            for future in as_completed(list(futures)):
                _collect(future, futures[future], lines, failures, say)
        except BaseException:          # Ctrl-C: the cluster drops this sweep's jobs
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
            raise
        finally:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic)
            if client is not scheduler:
                client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} jobs failed: " + "; ".join(failures))
    return lines


# ---- local workers that stop with the sweep --------------------------------------------------

PARENT_POLL = 1.0        # seconds between a worker's checks that the sweep is still there
_PR_SET_PDEATHSIG = 1


def _worker_start(parent):
    """A local worker's initializer: it ignores Ctrl-C (the sweep stops it) and dies with the
    sweep: on Linux the kernel kills it when the sweep's process goes (prctl PR_SET_PDEATHSIG),
    and everywhere a thread ends it within PARENT_POLL seconds of os.getppid() changing, so
    that a killed sweep leaves no worker finishing its job alone."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:      # the sweep died before the line above
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop_pool(pool):
    """Stop a local pool at once: queued jobs cancelled, running workers terminated (a run
    is written atomically and resumes from its last snapshot; the OS drops its lock)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(5)


def _collect(future, job, lines, failures, log):
    try:
        lines.append(future.result())
    except Exception as e:   # noqa: BLE001 (reported with the job's name, the others go on)
        failures.append(f"{job.folder}: {_one_line(e)}")
        log(f"{job.folder}: failed: {_one_line(e)}")
    else:
        log(lines[-1])


def _one_line(error):
    """An exception as one line: its message, named by its type unless a ValueError (the
    one-line errors of this project)."""
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    return text if type(error) is ValueError else f"{type(error).__name__}: {text}"


# ---- a job's output on a Dask worker, sent to the client ------------------------------------

PROGRESS_EVERY = 5.0     # seconds between a job's live progress lines at the client; whole lines all go
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _run_on_worker(job, root, measure, device, topic):
    """run_job on a Dask worker; what it prints goes as lines to the client subscribed to
    `topic` (Worker.log_event: through the scheduler, in order, before the job's result) and to
    the worker's own stderr."""
    from distributed import get_worker
    worker = get_worker()
    out = pathlib.Path(root) / job.folder

    def send(line):
        _STREAMS.saved[1].write(f"{job.folder}: {line}\n")
        worker.log_event(topic, {"job": job.folder, "line": line})

    with _output_as_lines(_JobLines(send, (f"{out}: ", f"{job.folder}: "))):
        return run_job(job, root, measure, True, device)


class _JobLines:
    """What one job writes to stdout and stderr, as lines without the job's name: each whole
    line (the run's header, the measurement steps, the last progress line of the training),
    and the live progress line (rewritten after a carriage return, as on a terminal) at most
    once per PROGRESS_EVERY seconds."""

    def __init__(self, send, prefixes):
        self.send, self.prefixes = send, prefixes
        self.partial, self.live, self.sent, self.live_sent_at = "", False, None, -math.inf

    def write(self, text):
        for piece in re.split(r"([\r\n])", text):
            if piece == "\n":
                self._send(self.partial)
                self.partial, self.live = "", False
            elif piece == "\r":
                self.partial, self.live = "", True
            else:
                self.partial += piece
        if self.live and time.monotonic() - self.live_sent_at >= PROGRESS_EVERY:
            if self._send(self.partial):
                self.live_sent_at = time.monotonic()
        return len(text)

    def _send(self, line):
        line = _ESCAPES.sub("", line).rstrip()
        for prefix in self.prefixes:
            if line.startswith(prefix):
                line = line[len(prefix):]
                break
        if line and line != self.sent:
            self.sent = line
            self.send(line)
            return True
        return False


class _ThreadStream:
    """sys.stdout or sys.stderr of a worker process while jobs run in it: what a job's thread
    writes goes to its _JobLines (a terminal to train's Progress, which then writes live
    lines), what any other thread writes to the stream this one stands in for."""

    def __init__(self, stream):
        self.stream = stream

    def _job(self):
        return _STREAMS.jobs.get(threading.get_ident())

    def write(self, text):
        job = self._job()
        return job.write(text) if job else self.stream.write(text)

    def flush(self):
        if not self._job():
            self.stream.flush()

    def isatty(self):
        return True if self._job() else self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _Progress(train_module.Progress):
    """train's Progress for a job on a worker: a live bar also redraws its line at every
    snapshot, so its first line is step 0 (its rate counted from there) and its last one the
    end of the training."""

    def snapshot(self, step, loss, lr):
        super().snapshot(step, loss, lr)
        if self.live:
            self.stream.write("\r" + self.line(step, loss, lr) + "\033[K")


class _STREAMS:
    """The worker process's state: the jobs running in it by thread, and what was replaced."""
    lock = threading.Lock()
    jobs = {}         # thread id -> _JobLines
    saved = None      # (sys.stdout, sys.stderr, train.Progress) while any job runs


@contextlib.contextmanager
def _output_as_lines(job_lines):
    """Within the block, this thread's stdout and stderr go to job_lines; the worker's streams
    are replaced while any job runs in the process and put back after the last one."""
    with _STREAMS.lock:
        if not _STREAMS.jobs:
            _STREAMS.saved = sys.stdout, sys.stderr, train_module.Progress
            sys.stdout, sys.stderr = _ThreadStream(sys.stdout), _ThreadStream(sys.stderr)
            train_module.Progress = _Progress
        _STREAMS.jobs[threading.get_ident()] = job_lines
    try:
        yield
    finally:
        with _STREAMS.lock:
            del _STREAMS.jobs[threading.get_ident()]
            if not _STREAMS.jobs:
                sys.stdout, sys.stderr, train_module.Progress = _STREAMS.saved


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the small sweep (minutes)")
    add_recipe_argument(parser)
    parser.add_argument("--root", help="where the runs go (default runs/sweep, runs/sweep-bpe or runs/sweep-small)")
    parser.add_argument("--workers", type=int, default=2, help="local processes (default 2)")
    parser.add_argument("--scheduler", help="a Dask scheduler address, tcp://HOST:PORT")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these models")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train and measure seeds 0..N-1 of every model (default 1)")
    parser.add_argument("--train-only", action="store_true", help="train, do not measure")
    add_device_argument(parser)
    return parser


def add_recipe_argument(parser):
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="bytes",
                        help="the natural-text models on byte tokens (default) or on the -bpe "
                             "presets (a 2,048-token BPE, positions trainable)")


def jobs_for(args):
    jobs = small_jobs() if args.small else default_jobs(args.recipe)
    if args.only:
        unknown = sorted(set(args.only) - {j.name for j in jobs})
        if unknown:
            raise ValueError(f"--only {' '.join(unknown)}: not in this sweep; choose from "
                             f"{', '.join(j.name for j in jobs)}")
        jobs = [j for j in jobs if j.name in args.only]
    return with_seeds(jobs, args.seeds)


def default_root(small, recipe="bytes"):
    return pathlib.Path("runs") / ("sweep-small" if small else "sweep" + RECIPES[recipe])


def main(argv=None):
    args = build_parser().parse_args(argv)
    root = None
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        jobs = jobs_for(args)
        root = pathlib.Path(args.root) if args.root else default_root(args.small, args.recipe)
        print(f"{len(jobs)} jobs into {root} ({'Dask ' + args.scheduler if args.scheduler else f'{args.workers} local processes'})")
        run_sweep(jobs, root, args.workers, args.scheduler, measure=not args.train_only,
                  device=args.device)
    except KeyboardInterrupt:
        print("interrupted: the sweep's workers are stopped; run it again to resume",
              file=sys.stderr)
        return 130
    except (ValueError, RuntimeError) as e:
        return error(e)
    except OSError as e:            # the root folder: named when the error does not
        return os_error(e, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
