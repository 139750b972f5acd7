"""Shared test setup: offline, tiny models built into temporary folders, generated videos.

Build once, check many times. The session fixtures below build each expensive thing once per pytest run;
a test that only reads an output uses the fixture, and a test that changes an output copies it first
(``tests.helpers.copy_output(fixture_path, tmp_path / ...)``):

- ``tiny_models``: every tiny random model of ``dataengine demo-data`` (Qwen3-VL, open_clip, SAM2, the
  RT-DETRv2 detector, the Wan VAE and the Wan DiT), each built on first use with demo-data's builders and seeds.
- ``openve_set``: one small generated OpenVE-style set (every category, a near-copy each, every broken kind).
- ``ray_session``: one local Ray for the tests where the CLI is not what is under test (its GCS address).
- ``demo_run``: one finished ``filter``, ``harvest-portraits``, ``synth-portraits`` and ``shards`` run of the
  demo recipe, through ``dataengine reproduce`` (the real run's one command), joined to ``ray_session``'s Ray.
- ``trained_debug_run``: one ``trainer fit`` of the debug recipe with checkpoints, on a small shard set whose
  ``index.json`` names the tiny VAE and Qwen3-VL (so ``trainer sample`` can encode new inputs for it).
- ``demo_continued``: the rest of that demo run (verify .. report) in its folder, killed twice and rerun; and
  ``cluster_chain``: the demo recipe's data jobs on a two-node Ray cluster, each killed and resumed once. Both run
  in a background thread from the moment ``demo_run`` is finished (``Background``), and their tests run last, so
  that they run beside the other tests instead of after them.

Markers (pyproject.toml): ``process`` (starts a subprocess), ``ray`` (starts or joins a Ray), ``fit`` (runs
``trainer fit``), ``slow`` (more than ~20 s on 2 cores). A test that uses ``ray_session``, ``demo_run`` or
``trained_debug_run`` is marked by the hook below, so ``-m "not ray"`` never builds a Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MIVE_RAY_OBJECT_STORE_BYTES", str(512 * 1024 * 1024))

from tests.helpers import REPO, cli_env, dataengine, kill_group, trainer  # noqa: E402

if TYPE_CHECKING:
    from dataengine.synthetic.openve import SyntheticOpenVE

# fixture -> the markers a test that uses it gets (the fixture starts these things on first use)
FIXTURE_MARKERS = {
    "ray_session": ("ray",),
    "demo_run": ("ray", "process", "slow"),
    "trained_debug_run": ("process", "fit"),
    "demo_continued": ("ray", "process", "fit", "slow"),
    "cluster_chain": ("ray", "process", "slow"),
}


# Tests of files whose markers are kept here rather than in the file: file -> {test name prefix or module
# fixture name: markers} (a test that starts a process in its body, or uses a module fixture that does).
FILE_MARKERS = {
    "test_plan.py": {  # each runs a `trainer fit` subprocess to measure or check a plan
        "test_predicted_peak_matches_measured_fit_step": ("process", "fit", "slow"),
        "test_plan_of_a_shard_set_with_two_frame_count_buckets": ("process", "fit", "slow"),
    },
    "test_eval.py": {"test_eval_command_errors_name_the_input": ("process",)},
    "test_sequence_parallel.py": {
        "test_four_ranks_match_one_process": ("process",),
        "test_world_size_changes_nothing": ("process", "fit"),  # its ranks run the trainer's train()
    },
    "test_shards_url.py": {"test_trainer_fit_from_a_plain_http_server": ("process", "fit")},
}


# The session fixtures whose work starts ahead, at the first test, when a test that runs uses them (a subprocess,
# ``Ahead``, or a thread, ``Background``): it then runs while the tests before its first user run (most use one
# core of the two), and its fixture only waits.
AHEAD = ("demo_run", "trained_debug_run", "demo_continued", "cluster_chain")
# Those of them whose work runs in a background thread once ``demo_run`` is finished (``Background``): their tests
# run last, in this order, so that the work runs beside every other test (one core of the two is idle in most).
LAST = ("demo_continued", "cluster_chain")


def pytest_collection_modifyitems(config, items):
    items.sort(  # stable: the other tests keep their order
        key=lambda item: next(
            (1 + i for i, name in enumerate(LAST) if name in getattr(item, "fixturenames", ())), 0
        )
    )
    for item in items:
        wanted = [m for name in getattr(item, "fixturenames", ()) for m in FIXTURE_MARKERS.get(name, ())]
        for key, markers in FILE_MARKERS.get(item.path.name, {}).items():
            if item.name.startswith(key) or key in getattr(item, "fixturenames", ()):
                wanted += markers
        for marker in dict.fromkeys(wanted):
            if marker not in item.keywords:
                item.add_marker(getattr(pytest.mark, marker))


# Every test that starts a process should say so (marker ``process``, or ``ray``): the runs that do are
# listed at the end of the session, so a missing marker is seen.
_unmarked_processes: dict[str, str] = {}
_current: list = [None]
_starting_ahead: list = []  # non-empty while a session fixture starts its subprocess ahead (not the test's)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item
    yield
    _current[0] = None


def pytest_configure(config):
    import subprocess

    original = subprocess.Popen.__init__

    def watched(self, *args, **kwargs):
        item = _current[0]
        command = args[0] if args else kwargs.get("args")
        # ctypes.util.find_library runs `ldconfig -p` to find a shared library: a lookup, not a process of the test
        lookup = "ldconfig" in str(command)
        if (
            item is not None
            and not lookup
            and not _starting_ahead
            # a process of a ``Background`` thread is not the running test's
            and threading.current_thread() is threading.main_thread()
            and not ({"process", "ray"} & set(item.keywords))
        ):
            _unmarked_processes.setdefault(item.nodeid, str(command)[:120])
        original(self, *args, **kwargs)
        children = getattr(threading.current_thread(), "children", None)
        if children is not None:  # started by a ``Background`` thread: killed by its ``stop()``
            children.append(self)

    subprocess.Popen.__init__ = watched


def pytest_terminal_summary(terminalreporter):
    if _unmarked_processes:
        terminalreporter.section("tests that started a process without the process marker")
        for nodeid, command in _unmarked_processes.items():
            terminalreporter.write_line(f"{nodeid}: {command}")


class TinyModels:
    """The folder of every tiny random model; each is built on first use (``tiny_models.qwen3vl``) and kept
    for the session. ``tiny_models / "qwen3vl"`` gives the same folder (built too), as in demo-data's
    ``models/`` layout: qwen3vl, open_clip, sam2, detector, wan_vae, wan."""

    NAMES = ("qwen3vl", "open_clip", "sam2", "detector", "wan_vae", "wan")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # a ``Background`` thread builds its models too

    def _build(self, name: str) -> Path:
        with self._lock:
            return self._build_once(name)

    def _build_once(self, name: str) -> Path:
        folder = self.root / name
        marker = folder / ".built"
        if marker.exists():
            return folder
        if name == "qwen3vl":
            from dataengine.synthetic.qwen3vl import build_tiny_qwen3vl

            build_tiny_qwen3vl(folder, seed=0)
        elif name == "open_clip":
            from dataengine.synthetic.clip import build_tiny_open_clip

            build_tiny_open_clip(folder)
        elif name == "sam2":
            from dataengine.synthetic.portraits import build_tiny_sam2

            build_tiny_sam2(folder)
        elif name == "detector":
            from dataengine.synthetic.detector import build_tiny_detector

            build_tiny_detector(folder)
        elif name == "wan_vae":
            from dataengine.synthetic.wan_vae import build_tiny_wan_vae

            build_tiny_wan_vae(folder)
        elif name == "wan":
            from dataengine.synthetic.wan_dit import build_tiny_wan_dit

            build_tiny_wan_dit(folder)
        else:
            raise KeyError(f"no tiny model {name!r}: one of {', '.join(self.NAMES)}")
        marker.touch()
        return folder

    def __truediv__(self, name: str) -> Path:
        return self._build(name) if name in self.NAMES else self.root / name

    def all(self) -> Path:
        """Build every model; returns the root (laid out as demo-data's ``models/``)."""
        for name in self.NAMES:
            self._build(name)
        return self.root

    @property
    def qwen3vl(self) -> Path:
        return self._build("qwen3vl")

    @property
    def open_clip(self) -> Path:
        return self._build("open_clip")

    @property
    def open_clip_files(self) -> tuple[Path, Path]:
        """(model config JSON, safetensors weights), as ``build_tiny_open_clip`` returns them."""
        folder = self._build("open_clip")
        from dataengine.synthetic.clip import TINY_CLIP_NAME

        return folder / f"{TINY_CLIP_NAME}.json", folder / "tiny_clip.safetensors"

    @property
    def sam2(self) -> Path:
        return self._build("sam2")

    @property
    def detector(self) -> Path:
        return self._build("detector")

    @property
    def wan_vae(self) -> Path:
        return self._build("wan_vae")

    @property
    def wan(self) -> Path:
        return self._build("wan")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Every tiny random model of ``dataengine demo-data``, built once per session on first use."""
    return TinyModels(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture(scope="session")
def tiny_qwen3vl(tiny_models) -> Path:
    """The tiny random Qwen3-VL (seed 0): ``tiny_models.qwen3vl``."""
    return tiny_models.qwen3vl


@pytest.fixture(scope="session")
def openve_set(tmp_path_factory):
    """One small generated OpenVE-style set (read-only): 3 pairs and a near-copy per category and one broken
    row of every kind (``dataengine.synthetic.openve.SyntheticOpenVE``: csv_dir, video_root, the expected
    rejections and near-copies)."""
    from dataengine.synthetic.openve import BROKEN_KINDS, SyntheticOpenVEConfig, generate_openve

    config = SyntheticOpenVEConfig(
        pairs_per_category=3, near_duplicates_per_category=1, broken=tuple(BROKEN_KINDS)
    )
    return generate_openve(tmp_path_factory.getbasetemp() / "openve_set", config)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the session (4 logical CPUs, the tests' object store cap); yields its GCS address,
    which a CLI subprocess joins with ``RAY_ADDRESS`` / ``--ray-address``. In-process jobs (``run_stages``)
    find it initialised and use it."""
    import ray

    from pipelines.runtime import init_ray

    started = not ray.is_initialized()
    for attempt in range(3):
        try:
            init_ray(num_cpus=4)  # logical CPUs: a job started ahead and a test's job can run at once
            break
        except Exception as err:  # Ray gives its raylet 30 s to register; a loaded machine can take longer
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(err):
                raise
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


class Ahead:
    """A CLI subprocess of a session fixture, started before the tests that read its output; ``wait()`` returns
    once it has ended and asserts it succeeded (its log's tail in the message)."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.command, self.log = command, log
        with log.open("w") as out:
            # its own process group: the step subprocesses of a `dataengine reproduce` are stopped with it
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self, timeout: float = 1800) -> None:
        code = self.process.wait(timeout=timeout)
        assert code == 0, f"{' '.join(self.command)} exited {code}\n{self.log.read_text()[-4000:]}"

    def stop(self) -> None:
        """End the subprocess and its process group (a step's subprocess) if no test waited for it (a run stopped
        early, ``-x``): nothing outlives the tests."""
        if self.process.poll() is None:
            kill_group(self.process)
            self.process.wait()


class Background:
    """The work of a session fixture, run in a thread beside the tests from the first test on (it waits for what it
    needs itself); ``result()`` waits for it and raises what it raised. The processes its thread starts are
    recorded (``pytest_configure``'s watcher): ``stop()`` kills them if no test waited for the work."""

    def __init__(self, name: str, work: Callable[[], object]) -> None:
        self.name, self.children = name, []
        self._value: object = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self.thread.children = self.children  # type: ignore[attr-defined]
        self.thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            self._value = work()
        except BaseException as err:  # raised in the test that waits for it
            self._error = err

    def result(self, timeout: float = 2400) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not end in {timeout} s"
        if self._error is not None:
            raise self._error
        return self._value

    def stop(self) -> None:
        """Kill the work's processes (their process groups) until its thread ends: nothing outlives the tests."""
        for _ in range(60):
            if not self.thread.is_alive():
                return
            for process in list(self.children):
                if process.poll() is None:
                    kill_group(process)
            self.thread.join(1)


@pytest.fixture(scope="session", autouse=True)
def _start_ahead(request):
    """Start the work of each session fixture in ``AHEAD`` that a test that runs uses, at the first test."""
    started = []
    _starting_ahead.append(True)  # the processes started here (a Ray, the subprocesses) are not the test's
    try:
        # the tests that run: selected and not deselected (``-m "not slow"`` deselects after the hook above)
        wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
        for name in AHEAD:
            if name in wanted:
                value = request.getfixturevalue(f"{name}_started")
                started.append(value[1] if isinstance(value, tuple) else value)
    finally:
        _starting_ahead.pop()
    yield
    for ahead in started:
        ahead.stop()


@dataclass(frozen=True)
class DemoRun:
    """A finished demo-recipe run in its own working folder ``root`` (read-only for the tests)."""

    root: Path  # the working folder: demo_data/, manifests/demo/, shards/demo/
    recipe: Path  # manifests/demo.toml with its paths made absolute (under root)
    stdout: dict[str, str] = field(default_factory=dict)  # each job's printed output (its step's log)
    overrides: tuple[str, ...] = ()  # the data recipe's overrides the run was made with
    ray_address: str = ""  # the session's Ray it joined
    openve: SyntheticOpenVE | None = None  # what the generator wrote to demo_data/openve: rows, broken rows

    @property
    def data(self) -> Path:
        return self.root / "demo_data"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests" / "demo"

    @property
    def shards(self) -> Path:
        return self.root / "shards" / "demo"

    @property
    def portrait_pairs(self) -> Path:
        return self.data / "portrait_pairs"


@pytest.fixture(scope="session")
def demo_run_started(tmp_path_factory, tiny_models, ray_session) -> tuple[DemoRun, Ahead]:
    """The demo run's inputs and recipe, and its ``dataengine reproduce`` subprocess started (see ``demo_run``)."""
    from dataengine.synthetic.openve import build_filter_demo
    from dataengine.synthetic.portraits import generate_portraits

    root = tmp_path_factory.getbasetemp() / "demo_run"
    data = root / "demo_data"
    (data / "models").mkdir(parents=True)
    for name in ("qwen3vl", "open_clip", "sam2", "detector", "wan_vae"):
        (data / "models" / name).symlink_to(tiny_models / name, target_is_directory=True)
    openve = build_filter_demo(data)
    generate_portraits(data / "portraits")
    # The workers of a joined Ray run in that Ray's folder, not the job's: the recipe's paths are made
    # absolute (inputs, models, outputs), as a recipe for a cluster has them.
    text = (REPO / "manifests" / "demo.toml").read_text()
    for old in ('"demo_data/', '"manifests/', '"manifests"'):
        assert old in text, old
        text = text.replace(old, f'"{root}/{old[1:]}')
    recipe = root / "demo.toml"
    recipe.write_text(text)
    env = cli_env(RAY_ADDRESS=ray_session)
    # the four jobs through the one command a real run uses (`dataengine reproduce`, its data steps only):
    # each step a subprocess of the real CLI, its output kept in manifests/demo/reproduce/<step>.log
    overrides = (f'shards.output="{root}/shards/demo"',)
    command = dataengine("reproduce", str(recipe), *overrides, "--steps", ",".join(DEMO_JOBS))
    run = DemoRun(root=root, recipe=recipe, overrides=overrides, ray_address=ray_session, openve=openve)
    return run, Ahead(command, root, env, root / "reproduce.log")


DEMO_JOBS = ("filter", "harvest-portraits", "synth-portraits", "shards")


_demo_run_lock = threading.Lock()


def _finished(demo_run_started: tuple[DemoRun, Ahead]) -> DemoRun:
    """The demo run once its subprocess has ended (the test thread and ``Background`` threads wait for it)."""
    run, process = demo_run_started
    with _demo_run_lock:
        process.wait()
        for job in DEMO_JOBS:
            run.stdout.setdefault(job, (run.manifests / "reproduce" / f"{job}.log").read_text())
    return run


@pytest.fixture(scope="session")
def demo_run(demo_run_started) -> DemoRun:
    """``filter``, ``harvest-portraits``, ``synth-portraits`` and ``shards`` of manifests/demo.toml, each through
    the CLI (joined to the session's Ray), on demo-data's inputs with the session's tiny models."""
    return _finished(demo_run_started)


@pytest.fixture(scope="session")
def demo_continued_started(demo_run_started, tiny_models) -> Background:
    """The rest of the demo run (verify .. report) in ``demo_run``'s folder, killed twice and rerun, in a background
    thread that starts it once ``demo_run`` is finished (tests/helpers/demo_continued.py)."""
    from tests.helpers.demo_continued import continue_demo

    return Background("demo_continued", lambda: continue_demo(_finished(demo_run_started), tiny_models.wan))


@pytest.fixture(scope="session")
def demo_continued(demo_continued_started, demo_run):
    """What the rest of the demo run recorded (``tests.helpers.demo_continued.DemoContinued``)."""
    return demo_continued_started.result()


@pytest.fixture(scope="session")
def cluster_chain_started(demo_run_started, tmp_path_factory) -> Background:
    """The demo recipe's data jobs on a two-node Ray cluster, killed and resumed, in a background thread that
    starts them once ``demo_run`` is finished (tests/helpers/cluster.py)."""
    from tests.helpers.cluster import run_cluster_chain

    root = tmp_path_factory.getbasetemp() / "ray_cluster"
    return Background("cluster_chain", lambda: run_cluster_chain(_finished(demo_run_started), root))


@pytest.fixture(scope="session")
def cluster_chain(cluster_chain_started, demo_run):
    """What the cluster's jobs wrote and printed (``tests.helpers.cluster.ClusterChain``)."""
    return cluster_chain_started.result()


@dataclass(frozen=True)
class TrainedRun:
    """A finished ``trainer fit`` of the debug recipe (read-only for the tests)."""

    run: Path  # runs/<name>: metrics.jsonl, recipe.resolved.json, checkpoints/step-*
    shards: Path  # its shard set (index.json names the tiny VAE and Qwen3-VL)
    vae: Path
    vlm: Path
    steps: int
    every: int
    num_frames: int
    height: int
    width: int


@pytest.fixture(scope="session")
def trained_debug_run_started(tmp_path_factory, tiny_models) -> tuple[TrainedRun, Ahead]:
    """The shard set of ``trained_debug_run`` and its ``trainer fit`` subprocess started."""
    from tests.shard_builder import build_shards

    num_frames, height, width, steps, every = 9, 32, 64, 4, 2
    root = tmp_path_factory.getbasetemp() / "trained_debug_run"
    vae, vlm = tiny_models.wan_vae, tiny_models.qwen3vl
    shards = build_shards(root / "shards", {(3, height // 8, width // 8): 2}, vlm_dim=64)
    index = json.loads((shards / "index.json").read_text())
    index["models"] = {"vae": str(vae), "vlm": str(vlm)}
    index["recipe"] = {
        "clip": {"num_frames": num_frames, "fps": 0.0, "buckets": [[height, width]], "max_upscale": 1.0},
        "vae": {"model_id": str(vae), "subfolder": "vae", "dtype": "float32", "device": "cpu"},
        "vlm": {
            "model_id": str(vlm),
            "image_min_pixels": 1024,
            "image_max_pixels": 4096,
            "video_min_pixels": 2048,
            "video_max_pixels": 16384,
            "video_fps": 4.0,
            "dtype": "float32",
            "device": "cpu",
        },
    }
    (shards / "index.json").write_text(json.dumps(index))
    command = trainer(
        "fit", str(REPO / "manifests" / "train_debug.toml"),
        f"train.data.shards='{shards}'", f"train.runs_dir='{root / 'runs'}'", "train.name=tiny",
        f"train.steps={steps}", f"train.checkpoint.every_steps={every}", "train.checkpoint.keep_last=2",
        "train.data.verify_checksums=false",
    )  # fmt: skip
    run = TrainedRun(root / "runs" / "tiny", shards, vae, vlm, steps, every, num_frames, height, width)
    return run, Ahead(command, REPO, cli_env(OMP_NUM_THREADS="1"), root / "fit.log")


@pytest.fixture(scope="session")
def trained_debug_run(trained_debug_run_started) -> TrainedRun:
    """``trainer fit manifests/train_debug.toml``, 4 steps with a checkpoint every 2 (both kept), on 2
    samples of 9 frames at 32 x 64 (latents 3 x 4 x 8) whose index.json records the tiny VAE and Qwen3-VL
    and the demo's [shards] encoders, as the shards job writes them."""
    run, process = trained_debug_run_started
    process.wait()
    return run
