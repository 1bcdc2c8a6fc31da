"""Files, devices and seeds: atomic writes, checkpoints, provenance.

Every file a job produces is written to a temporary name and renamed, so a job
killed mid-write never leaves a file that looks finished.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class AdvssError(RuntimeError):
    """An error a user can fix (bad path, config or checkpoint); printed without a traceback."""


class CheckpointError(AdvssError):
    pass


# ----------------------------------------------------------------- atomic I/O
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path):
    path = Path(path)
    if not path.exists():
        raise AdvssError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdvssError(f"corrupted JSON file {path}: {e}") from None


def save_npz(path, **arrays):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_npz(path):
    path = Path(path)
    if not path.exists():
        raise AdvssError(f"missing file: {path}")
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/pickle errors all mean "not a valid npz"
        raise AdvssError(f"corrupted result file {path}: {e}") from None


def torch_save(path, obj):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path, what="checkpoint"):
    """Load with weights_only=True; any failure names the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{what} {path} is corrupted or truncated and cannot be loaded ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------- spec & seeds
from advss.protocol import spec_hash  # noqa: E402,F401  (defined there: the workflow hashes the config at parse time)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """One seed per (run, epoch, batch): a resumed run draws exactly the same randomness."""
    h = hashlib.sha256(f"{seed}/{epoch}/{batch}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def set_deterministic(on: bool):
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# -------------------------------------------------------------------- devices
def pick_device(pref: str = "auto") -> torch.device:
    """'auto' -> a CUDA device if present (a free one on multi-GPU hosts), else CPU."""
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise AdvssError(f"device {pref!r} requested but CUDA is not available")
    if pref == "auto":
        return torch.device("cuda", _claim_gpu())
    return torch.device(pref)


_GPU_LOCK = None


def gpu_slots() -> int:
    """Jobs one GPU takes at once ($ADVSS_JOBS_PER_GPU, default 1). At batch 128 one
    ResNet-50 job leaves an H100 mostly idle; with K slots, run Snakemake with
    `--resources gpu=K·N` on N GPUs."""
    raw = os.environ.get("ADVSS_JOBS_PER_GPU", "1")
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if k < 1:
        raise AdvssError(f"ADVSS_JOBS_PER_GPU must be a positive integer, not {raw!r}")
    return k


def _claim_gpu(n: int | None = None) -> int:
    """Pick a GPU slot no other advss job on this host holds (Snakemake's local
    `--resources gpu=K` only counts jobs; it does not assign devices). Slots are
    filled GPU by GPU in round-robin order, so K jobs on N GPUs spread out first."""
    global _GPU_LOCK
    n = torch.cuda.device_count() if n is None else n
    k = gpu_slots()
    if (n <= 1 and k == 1) or os.environ.get("SLURM_JOB_ID"):
        return 0  # the scheduler already restricted CUDA_VISIBLE_DEVICES
    lock_dir = Path(os.environ.get("ADVSS_GPU_LOCK_DIR", tempfile.gettempdir())) / "advss-gpu-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(k):
        for i in range(n):
            f = open(lock_dir / (f"gpu{i}.lock" if slot == 0 else f"gpu{i}.slot{slot}.lock"), "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            _GPU_LOCK = f  # held until the process exits
            return i
    raise AdvssError(f"all {k} slot(s) of each of the {n} GPUs are held by other advss jobs; "
                     f"run with --resources gpu={k * n}")


@contextlib.contextmanager
def exclusive_lock(directory):
    """Refuse to run two copies of one job (a requeued and a resubmitted SLURM job)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    f = open(directory / "lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise AdvssError(f"another process is already running this job (lock held on {directory}/lock)") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


# ----------------------------------------------------------------- provenance
def git_commit(root=None) -> str | None:
    """HEAD of the checkout the code runs from ('-dirty' when tracked files differ), or
    None when that directory is not the top of a git work tree: an installed copy that
    sits inside some other repository must not record that repository's commit."""
    root = Path(root or Path(__file__).resolve().parent.parent).resolve()

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        top, head = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
        if top.returncode or head.returncode or Path(top.stdout.strip()).resolve() != root:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU model ('model name' in /proc/cpuinfo); platform.processor() is often empty on Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _dist_version(name: str) -> str | None:
    """An installed package's version without importing it (torchvision's import is slow)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(spec: dict, device, started: float, **extra) -> dict:
    """What a result directory records about how it was made. `spec` is the job's
    effective config (every value that affects its result, defaults filled in) and
    `spec_hash` its hash, the same hash that guards resume files."""
    import advss

    dev_name = torch.cuda.get_device_name(device) if getattr(device, "type", "cpu") == "cuda" else cpu_name()
    return {
        "spec": spec,
        "spec_hash": spec_hash(spec),
        "git_commit": git_commit(),
        "advss": advss.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torchvision": _dist_version("torchvision"),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": dev_name,
        "host": platform.node(),
        "wall_seconds": round(time.time() - started, 2),
        **extra,
    }
